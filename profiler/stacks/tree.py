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
  in a ``Sequential`` beside another one is real).

Replayed over captured windows (20 s of 100 Hz reads each of a Llama training loop, GPT-2 and
BERT inference, drawn as 12 windows of 250 non-blocking and 25 blocking reads, 100 draws), the
last two rules cut the torn samples kept from 353 to 12 (Llama), 202 to 21 (GPT-2) and 2954 to
1143 (BERT); real samples dropped stayed 7 and 2 of 300,000 (Llama, GPT-2) and rose from 1 to
29 on BERT (its prediction head, before a blocking read saw its child). What BERT keeps is a
leaf glued under its parent's sibling (``BertOutput/GELUActivation``; the GELU belongs to ``BertIntermediate``) and a module
under the wrong grandparent: no test here catches those.

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

from wattlens.profiler.stacks.parse import Attribution

MIN_EDGE_SHARE = 0.05
MIN_CLASS_SHARE = 0.05
MIN_ROOT_SHARE = 0.005
MIN_ROOT_SAMPLES = 3
MIN_PARENT_SHARE = 0.2
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
        self.torn = 0  # samples dropped, session total
        self.torn_paths: Counter[str] = Counter()  # which paths, for the log and the tests

    def learn_exact(self, counts: Mapping[Attribution, int]) -> None:
        """Stacks read with the target paused (blocking): every prefix is a real path."""
        for att, n in counts.items():
            for depth in range(1, len(att.path) + 1):
                self.trusted.add(att.path[:depth])
            _count_classes(att.path, n, self.exact_seen, self.exact_inner)

    def plausible(self, path: tuple[str, ...]) -> bool:
        """Does ``path`` fit the tree as known now (every sample so far)? An empty path does."""
        return not path or self._plausible(path)

    def _plausible(self, path: tuple[str, ...]) -> bool:
        roots = sum(n for p, n in self.seen.items() if len(p) == 1)
        if path[:1] not in self.trusted and self.seen[path[:1]] < max(MIN_ROOT_SHARE * roots, MIN_ROOT_SAMPLES):
            return False  # a stack torn below the model's root: "Block/MLP/Linear" alone
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

    def filter(self, counts: Mapping[Attribution, int]) -> tuple[Counter[Attribution], int]:
        """(the counts whose path fits the tree, the number of samples dropped as torn).

        The window's own non-blocking samples join the session's evidence first, so a path is
        judged on everything seen so far. Buckets have no path and always pass.
        """
        for att, n in counts.items():
            for depth in range(1, len(att.path) + 1):
                self.seen[att.path[:depth]] += n
            _count_classes(att.path, n, self.class_seen, self.class_inner)
        kept: Counter[Attribution] = Counter()
        dropped = 0
        for att, n in counts.items():
            if att.bucket is None and not self._plausible(att.path):
                dropped += n
                self.torn_paths[att.key] += n
                continue
            kept[att] += n
        self.torn += dropped
        return kept, dropped


def _count_classes(path: tuple[str, ...], n: int, seen: Counter[str], inner: Counter[str]) -> None:
    """Add ``n`` samples of ``path`` to each class on it (``seen``) and to each class with a
    module below it there (``inner``)."""
    for cls in set(path):
        seen[cls] += n
    for cls in set(path[:-1]):
        inner[cls] += n
