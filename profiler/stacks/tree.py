"""Reject torn stacks: class paths that the model's module tree does not have.

A non-blocking read that races the target's calls can succeed with a stack stitched from two
moments: ``…/LlamaDecoderLayer/LlamaRMSNorm/LlamaAttention/Linear`` (an RMSNorm contains no
attention). Stored as a row, that is a layer that does not exist. In attach mode nobody tells us
the tree, so :class:`TreeGuard` learns it:

- **trusted edges** come from the blocking calibration reads (:mod:`.lost`): the target is paused
  while they are read, so their stacks are exact, and every parent -> child step in them exists;
- **a root** (the outermost class) must be common among all samples (:data:`MIN_ROOT_SHARE`, and
  :data:`MIN_ROOT_SAMPLES` at least: in a training job's first short window one sample can be
  over the share) or trusted: a stack torn under the root reads as a sub-path alone
  (``LlamaDecoderLayer/…``, ``BertLMPredictionHead/Linear``). A real second root (a loss
  module called outside the model) is dropped only until it is seen 3 times or a calibration
  read vouches for it, in the first windows;
- **an edge only non-blocking reads saw** is torn when its child class is seen almost only
  elsewhere (under :data:`MIN_CLASS_SHARE` of all the samples in which that class appears) *and*
  the parent gives no reason to hold it: the edge is a small minority under the parent (under
  :data:`MIN_EDGE_SHARE` of the parent's samples), or the parent's class is a leaf everywhere
  else (it has a module below it in under :data:`MIN_PARENT_SHARE` of its samples: a norm, an
  activation). Counts are pooled over the session. A torn read is an accident of timing: the
  lower part of the stack is a real path (``LlamaDecoderLayer/LlamaAttention/Linear``) glued
  under a module that was on the stack a moment before, so its child class is seen almost only
  elsewhere and its parent is usually a short leaf module. A real but rare child (BERT's
  prediction-head ``Linear``: few samples, ``Linear`` is everywhere) is kept: it is most of what
  its parent does, and that parent has children.
- **a parent the exact reads saw only as a leaf** (in one blocking read or more, never with a
  module below it) holds no edge whose child class is seen almost only elsewhere: the share
  tests alone let such a path through under a small class (a norm), where the torn reads
  themselves make the leaf look like a parent (``LlamaRMSNorm`` with a "child" in 1 of its 6
  samples);
- **a module glued under its sibling**: an edge whose child class is seen almost only
  elsewhere, is a module with modules of its own (the exact reads saw it as a parent), and sits,
  in the exact reads, beside the parent it is found under (``LlamaDecoderLayer/LlamaAttention``
  exists, so ``LlamaDecoderLayer/LlamaRMSNorm/LlamaAttention`` is torn; likewise
  ``BertAttention/BertSelfOutput/BertSelfAttention``). Leaf classes are left out of this test
  (a ``Linear`` beside a block and another inside its MLP are both real), and so are a class
  inside itself and torch's generic containers (:data:`GENERIC_CONTAINERS`: a ``Sequential``
  in a ``Sequential`` beside another one is real);
- **a line that calls another module**: a forward's line calls one module (or none: the
  innermost module's own code), so the exact reads map each (class, ``file:line``) to what they
  found below it (:attr:`TreeGuard.sites`). A read of a path no exact read has seen, with a
  module at a line the exact reads saw :data:`MIN_SITE_READS` times or more and never with
  that child below, is torn. This catches what every test on classes lets through: a leaf
  glued under its parent's sibling (``BertOutput/GELUActivation``: the output block was at its
  ``dense`` call, where the exact reads only ever saw a ``Linear``), and a child under a
  ``Linear``'s own line. A path an exact read has seen is never judged by its lines (a read can
  catch a parent's line a moment after its child returned).

Replayed over captured windows (20 to 40 s of 100 Hz non-blocking and blocking reads each: a
Llama training loop, GPT-2 and BERT inference, BERT training; drawn as 12 windows of 250
non-blocking and 25 blocking reads, 100 draws: 300,000 samples per capture), the torn samples
kept fall from 15 / 0 / 1093 / 328 (the tests on classes) to 15 / 0 / 39 / 88 with the line
test; real samples dropped rise from 11 / 5 / 69 / 20 to 735 / 446 / 796 / 312, at most 0.27 %
of the samples, more of them in the first windows (a real path not yet read exactly, caught at
a line an instant after its module returned) and all of them spread back as lost reads.

What still passes came while the exact reads were few (a session's first windows).
:meth:`TreeGuard.final_torn` judges every kept read again when the session stops, on all its
exact reads; the class paths none of whose reads fit any more are folded into the nearest
module above them (``StackSampler.final_tree``). Replayed as 100 sessions of 12 windows per
capture, the sessions storing a torn path fall from 4 / 1 / 9 / 44 to none; real paths folded:
26 / 0 / 81 / 46 samples over the 100 sessions.

A path with an edge judged torn is dropped and counted (:attr:`TreeGuard.torn`); its samples
become lost reads, which :class:`~wattlens.profiler.stacks.lost.LossAccount` spreads like the
failed ones. The price: a real child too rare to pass the share test and not yet seen by a
calibration read is dropped too (its time goes where the calibration says lost reads go). The
judgement is kept up to date: a path let through early and rejected later stops feeding the
backward's split (``StackSampler``'s pooled forward time).

Run mode needs none of this: the agent walks the real ``named_modules()`` tree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from wattlens.profiler.stacks.parse import Attribution, Read

MIN_EDGE_SHARE = 0.05
MIN_CLASS_SHARE = 0.05
MIN_ROOT_SHARE = 0.005
MIN_ROOT_SAMPLES = 3
MIN_PARENT_SHARE = 0.2
#: exact reads at a forward's line before a child never seen there marks a read torn
MIN_SITE_READS = 3
#: torch's own containers nest anywhere, themselves included: the sibling test leaves them out
GENERIC_CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})


class TreeGuard:
    """Learns the module-class tree of one target; drops the paths that violate it."""

    def __init__(self) -> None:
        self.trusted: set[tuple[str, ...]] = set()  # every prefix of a calibration path
        self.seen: Counter[tuple[str, ...]] = Counter()  # inclusive non-blocking samples per prefix
        self.class_seen: Counter[str] = Counter()  # samples in which each class is on the path
        self.class_inner: Counter[str] = Counter()  # ... with a module below it
        self.exact_seen: Counter[str] = Counter()  # blocking reads in which each class is on the path
        self.exact_inner: Counter[str] = Counter()  # ... with a module below it
        # (class, "file:line") -> what the exact reads found below it there: a child class, or
        # None where it was the innermost module
        self.sites: dict[tuple[str, str], Counter[str | None]] = {}
        self.kept_reads: Counter[Read] = Counter()  # the non-blocking reads let through, with sites
        self.torn = 0  # samples dropped, session total
        self.torn_paths: Counter[str] = Counter()  # which paths, for the log and the tests

    def learn_exact(self, counts: Mapping[Attribution, int] | Mapping[Read, int]) -> None:
        """Stacks read with the target paused (blocking): every prefix is a real path, and each
        module's line called the module below it (or ran its own code, for the innermost)."""
        for read, n in counts.items():
            att, sites = _split(read)
            for depth in range(1, len(att.path) + 1):
                self.trusted.add(att.path[:depth])
            _count_classes(att.path, n, self.exact_seen, self.exact_inner)
            if len(sites) == len(att.path):
                for i, (cls, site) in enumerate(zip(att.path, sites, strict=True)):
                    below = att.path[i + 1] if i + 1 < len(att.path) else None
                    self.sites.setdefault((cls, site), Counter())[below] += n

    def plausible(self, path: tuple[str, ...]) -> bool:
        """Does ``path`` fit the tree as known now (every sample so far)? An empty path does."""
        return not path or self._plausible(path)

    def _plausible(self, path: tuple[str, ...], sites: tuple[str, ...] = ()) -> bool:
        roots = sum(n for p, n in self.seen.items() if len(p) == 1)
        if path[:1] not in self.trusted and self.seen[path[:1]] < max(MIN_ROOT_SHARE * roots, MIN_ROOT_SAMPLES):
            return False  # a stack torn below the model's root: "Block/MLP/Linear" alone
        if sites and path not in self.trusted and any(
                _other_child_at_site(self.sites.get((cls, site)), child)
                for cls, site, child in zip(path[:-1], sites[:-1], path[1:], strict=True)):
            return False  # a module's line that, in the exact reads, calls another module or none
        for depth in range(2, len(path) + 1):
            prefix = path[:depth]
            if prefix in self.trusted:
                continue
            n_child = self.seen[prefix]
            n_parent = self.seen[prefix[:-1]]
            parent_cls = prefix[-2]
            if n_child >= MIN_CLASS_SHARE * self.class_seen[prefix[-1]]:
                continue
            if self.exact_seen[parent_cls] and not self.exact_inner[parent_cls]:
                return False  # mostly elsewhere, under a class the exact reads saw only as a leaf
            child = prefix[-1]
            if (child != parent_cls and child not in GENERIC_CONTAINERS and self.exact_inner[child]
                    and prefix[:-2] + (child,) in self.trusted):
                return False  # mostly elsewhere, and the exact reads have it beside its parent
            leaf_parent = self.class_inner[parent_cls] < MIN_PARENT_SHARE * self.class_seen[parent_cls]
            if leaf_parent or n_child < MIN_EDGE_SHARE * n_parent:
                return False
        return True

    def filter(self, counts: Mapping[Attribution, int] | Mapping[Read, int]
               ) -> tuple[Counter[Attribution], int]:
        """(the counts whose path fits the tree, the number of samples dropped as torn).

        The window's own non-blocking samples join the session's evidence first, so a path is
        judged on everything seen so far. Buckets have no path and always pass. Reads with their
        sites (:class:`~wattlens.profiler.stacks.parse.Read`) are judged each on its own lines too.
        """
        for read, n in counts.items():
            path = _split(read)[0].path
            for depth in range(1, len(path) + 1):
                self.seen[path[:depth]] += n
            _count_classes(path, n, self.class_seen, self.class_inner)
        kept: Counter[Attribution] = Counter()
        dropped = 0
        for read, n in counts.items():
            att, sites = _split(read)
            if att.bucket is None and not self._plausible(att.path, sites if len(sites) == len(att.path) else ()):
                dropped += n
                self.torn_paths[att.key] += n
                continue
            kept[att] += n
            if att.bucket is None:
                self.kept_reads[Read(att, sites)] += n
        self.torn += dropped
        return kept, dropped

    def final_torn(self) -> set[tuple[str, ...]]:
        """The class-path nodes every kept read through which is torn, judged again on the
        whole session's evidence (a window let them through when the exact reads were few).
        Closed downward: a node's descendants are in it too."""
        ok: set[tuple[str, ...]] = set()
        torn: set[tuple[str, ...]] = set()
        for read in self.kept_reads:
            path, sites = read.att.path, read.sites
            fits = self._plausible(path, sites if len(sites) == len(path) else ())
            (ok if fits else torn).update(path[:depth] for depth in range(1, len(path) + 1))
        return torn - ok


def _split(read: Attribution | Read) -> tuple[Attribution, tuple[str, ...]]:
    return (read.att, read.sites) if isinstance(read, Read) else (read, ())


def _other_child_at_site(below: Counter[str | None] | None, child: str) -> bool:
    """The exact reads saw this line at least :data:`MIN_SITE_READS` times, never calling
    ``child`` from it."""
    return below is not None and below.total() >= MIN_SITE_READS and child not in below


def _count_classes(path: tuple[str, ...], n: int, seen: Counter[str], inner: Counter[str]) -> None:
    """Add ``n`` samples of ``path`` to each class on it (``seen``) and to each class with a
    module below it there (``inner``)."""
    for cls in set(path):
        seen[cls] += n
    for cls in set(path[:-1]):
        inner[cls] += n
