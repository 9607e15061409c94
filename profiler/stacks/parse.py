"""Turn py-spy's collapsed stacks into per-module-class time and energy rows.

What this measures, and what it does not: each py-spy sample is one look at a Python thread's
stack. Counting samples per stack gives **CPU-side time by module class** (the class whose
``forward`` is on the stack), not GPU kernel time: on a GPU target the Python thread usually runs
ahead of the device, so a class's share here is the share of host time spent launching its work.
Time spent blocked in a synchronising call (``.item()``, ``torch.cuda.synchronize()`` ...) is split
out as the ``gpu-wait`` bucket instead of being charged to the line's module.

Input format (py-spy 0.4.3, ``record --format raw --threads --idle --full-filenames``), one line
per distinct stack, outermost frame first::

    thread (4114): MainThread;<module> (/x/train.py:9);Module._wrapped_call_impl (/.../torch/nn/modules/module.py:1778);GPT2Block.forward (/.../modeling_gpt2.py:277) 12

A frame is ``NAME (FILE:LINE)``. On Python >= 3.11 py-spy prints the code object's qualified name
(``GPT2Block.forward``), which already names the class that *defines* the method; on older Pythons
it prints the bare ``forward`` and we find the class by reading the source file with :mod:`ast`
(the ``ClassDef`` that directly encloses the ``def`` at that line). Either way the class is the one
that defines ``forward``: a subclass that inherits ``forward`` is reported under its base class.

Everything here is a pure function of its inputs, apart from the per-file source cache held by a
:class:`SourceIndex`. Files are found through a ``source_resolver`` so that recorded fixtures stay
portable: it maps the file name as py-spy printed it to a readable local path (or ``None``).
"""

from __future__ import annotations

import ast
import linecache
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from wattlens.profiler import figures
from wattlens.profiler.records import LayerCost

METHOD = "stack-sampling"

# Bucket names: samples that are not inside any module's forward.
BUCKET_DATA = "data loading"
BUCKET_OPTIMIZER = "optimizer"
BUCKET_BACKWARD = "backward"
BUCKET_IDLE = "idle"
BUCKET_GPU_WAIT = "gpu-wait"
BUCKET_OTHER = "python (other)"
BUCKETS = (
    BUCKET_DATA,
    BUCKET_OPTIMIZER,
    BUCKET_BACKWARD,
    BUCKET_IDLE,
    BUCKET_GPU_WAIT,
    BUCKET_OTHER,
)

# The optimizer bucket's parts (see optimizer_part).
OPTIMIZER_ZERO_GRAD = "zero_grad"
OPTIMIZER_STEP_OTHER = "step (other)"
# torch.optim's update implementations: _single_tensor_adamw, _multi_tensor_sgd, _fused_adam ...
_OPT_IMPL_RE = re.compile(r"^_(?:single_tensor|multi_tensor|fused)_[a-z0-9_]+$")

SourceResolver = Callable[[str], "str | None"]

_FRAME_RE = re.compile(r"^(?P<name>.+?) \((?P<file>.*):(?P<line>-?\d+)\)$")
_THREAD_RE = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)(?:: (?P<tname>.*))?$")
# forward, _forward, _forward_impl, forward_impl, _conv_forward, _slow_forward ... but not
# forward_with_checkpointing (a wrapper that calls the real forward).
_FORWARD_NAME_RE = re.compile(r"^_?(?:[A-Za-z0-9]+_)?forward(?:_impl)?$")
# The nn.Module call machinery between two forwards: skipped, but it marks "a new module call".
_CALL_GLUE = frozenset({"_call_impl", "_wrapped_call_impl"})
# A synchronising call on the leaf line: the host waits for the device there.
_SYNC_RE = re.compile(r"\.(?:item|cpu|tolist|numpy)\(\s*\)|synchronize\(")
# Leaf frames that mean "this thread is blocked, not working".
_IDLE_FILES = (
    "threading.py",
    "queue.py",
    "selectors.py",
    "socket.py",
    "subprocess.py",
    "multiprocessing/connection.py",
    "multiprocessing/synchronize.py",
    "asyncio/base_events.py",
)
# A blocking call on the leaf line (the call itself is C code, so the line is all we see).
_IDLE_LINE_RE = re.compile(
    r"(?:^|[^A-Za-z0-9_])(?:sleep|select|poll|epoll_wait|wait|join|acquire|input|accept"
    r"|recv|recvfrom|recv_into|read|readline|readlines)\("
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame as py-spy printed it."""

    name: str  # "GPT2Block.forward", "forward", "<module>"
    filename: str  # as printed; absolute with --full-filenames
    line: int

    @property
    def function(self) -> str:
        """The bare function name: the last component of the qualified name."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True, slots=True)
class StackSample:
    """One distinct stack of one thread and how many samples saw it (outermost frame first)."""

    frames: tuple[Frame, ...]
    count: int
    thread_id: int | None = None
    thread_name: str | None = None


@dataclass(frozen=True, slots=True)
class Attribution:
    """Where one stack's time goes: a module-class path, or a named bucket."""

    path: tuple[str, ...]  # ("GPT2LMHeadModel", "GPT2Model", ...) ; empty for a bucket
    bucket: str | None = None
    detail: str | None = None  # a named part of the bucket ("optimizer" -> "_single_tensor_adam")

    @property
    def key(self) -> str:
        if self.bucket is None:
            return "/".join(self.path)
        return self.bucket if self.detail is None else f"{self.bucket}/{self.detail}"


class Read(NamedTuple):
    """One stack's attribution with where each module on its path was when the stack was read.

    ``sites[i]`` is ``"file:line"`` of the innermost frame of ``path[i]``'s own code: for a module
    with a module below it, the line that called that child; for the innermost module, the line it
    was running. Empty for a bucket. :class:`~wattlens.profiler.stacks.tree.TreeGuard` uses them:
    a line of a forward calls one module (or none), so a child found at a line where the exact
    reads always saw another is a stack read while it changed.
    """

    att: Attribution
    sites: tuple[str, ...] = ()


def collapse(reads: Mapping[Read, float]) -> Counter[Attribution]:
    """Samples per attribution, the read sites dropped."""
    out: Counter[Attribution] = Counter()
    for read, n in reads.items():
        out[read.att] += n
    return out


# --------------------------------------------------------------------------- parsing


def parse_frame(text: str) -> Frame | None:
    """``"GPT2Block.forward (/p/modeling_gpt2.py:277)"`` -> Frame; None for a thread/process tag."""
    m = _FRAME_RE.match(text)
    if m is None:
        return None
    return Frame(name=m.group("name"), filename=m.group("file"), line=int(m.group("line")))


def parse_raw(text: str) -> list[StackSample]:
    """Parse ``py-spy record --format raw`` output into samples.

    Lines that do not end in a positive count are skipped (py-spy writes nothing else to the file,
    but a truncated file from a killed py-spy may end mid-line). An empty stack (py-spy saw the
    thread but no Python frame) is kept with no frames.
    """
    samples: list[StackSample] = []
    for raw_line in text.splitlines():
        line = raw_line.rstrip("\n")
        if not line.strip():
            continue
        stack, sep, count_text = line.rpartition(" ")
        if not sep or not count_text.isdigit():
            continue
        count = int(count_text)
        if count <= 0:
            continue
        frames: list[Frame] = []
        thread_id: int | None = None
        thread_name: str | None = None
        parts = stack.split(";") if stack else []
        for i, part in enumerate(parts):
            if i == 0:
                tm = _THREAD_RE.match(part)
                if tm is not None:
                    tid = tm.group("tid")
                    thread_id = int(tid, 16) if tid.startswith("0x") else int(tid)
                    thread_name = tm.group("tname")
                    continue
            frame = parse_frame(part)
            if frame is not None:
                frames.append(frame)
        samples.append(StackSample(tuple(frames), count, thread_id, thread_name))
    return samples


# --------------------------------------------------------------------------- source lookups


def default_source_resolver(filename: str) -> str | None:
    """The file itself when it exists and is a real path (not ``<frozen ...>``/``<string>``)."""
    if not filename or filename.startswith("<"):
        return None
    return filename if os.path.isfile(filename) else None


@dataclass
class SourceIndex:
    """Reads source files (once each) to answer "which class owns line N" and "what is line N".

    Why a class and not a bare ``lru_cache``: the resolver is part of the index, so a test can use
    its own resolver without touching a global cache.
    """

    resolver: SourceResolver = default_source_resolver
    _methods: dict[str, list[tuple[int, int, str | None]]] = field(default_factory=dict)
    _lines: dict[str, list[str] | None] = field(default_factory=dict)

    def _resolve(self, filename: str) -> str | None:
        try:
            return self.resolver(filename)
        except OSError:
            return None

    def _source_lines(self, filename: str) -> list[str] | None:
        if filename in self._lines:
            return self._lines[filename]
        path = self._resolve(filename)
        lines: list[str] | None = None
        if path is not None:
            got = linecache.getlines(path)
            lines = list(got) if got else None
        self._lines[filename] = lines
        return lines

    def can_read(self, filename: str) -> bool:
        """True when the file's source is available (so "no class" is an answer, not a gap)."""
        return self._source_lines(filename) is not None

    def line_text(self, filename: str, line: int) -> str | None:
        """The source text of ``filename:line`` (stripped), or None when it cannot be read."""
        lines = self._source_lines(filename)
        if lines is None or not 1 <= line <= len(lines):
            return None
        return lines[line - 1].strip()

    def _function_spans(self, filename: str) -> list[tuple[int, int, str | None]]:
        """Every ``def`` in the file as (first line, last line, owning class or None)."""
        if filename in self._methods:
            return self._methods[filename]
        spans: list[tuple[int, int, str | None]] = []
        lines = self._source_lines(filename)
        if lines is not None:
            try:
                tree = ast.parse("".join(lines))
            except (SyntaxError, ValueError):
                tree = None
            if tree is not None:
                _collect_spans(tree, None, spans)
        self._methods[filename] = spans
        return spans

    def class_at(self, filename: str, line: int) -> str | None:
        """The class that directly owns the innermost ``def`` containing ``line``; None when that
        ``def`` is a plain or nested function, or the source cannot be read."""
        best: tuple[int, int, str | None] | None = None
        for start, end, owner in self._function_spans(filename):
            if start <= line <= end and (best is None or start >= best[0]):
                best = (start, end, owner)
        return best[2] if best is not None else None


def _collect_spans(
    node: ast.AST, owner: str | None, out: list[tuple[int, int, str | None]]
) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            _collect_spans(child, child.name, out)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append((child.lineno, child.end_lineno or child.lineno, owner))
            _collect_spans(child, None, out)  # a def inside a def is not a method
        else:
            _collect_spans(child, owner if isinstance(node, ast.ClassDef) else None, out)


# --------------------------------------------------------------------------- classification


def _norm(filename: str) -> str:
    return "/" + filename.replace("\\", "/").lstrip("/")


def _in_package(frame: Frame, package_dir: str) -> bool:
    """True when the frame's file is under ``package_dir`` (e.g. "torch/optim/")."""
    return f"/{package_dir}" in _norm(frame.filename)


def forward_class(frame: Frame, index: SourceIndex) -> str | None:
    """The module class whose forward this frame runs, or None when it is not a forward frame."""
    parts = frame.name.split(".")
    if not _FORWARD_NAME_RE.match(parts[-1]):
        return None
    if len(parts) >= 2:
        owner = parts[-2]
        # "f.<locals>.forward" is a nested function, not a method.
        return None if owner.startswith("<") else owner
    # Bare name (Python < 3.11): ask the source. A method whose source we cannot read keeps a
    # place in the path under a name that says so, rather than vanishing into its parent.
    owner = index.class_at(frame.filename, frame.line)
    if owner is not None:
        return owner
    if index.can_read(frame.filename):
        return None  # a plain function called forward
    return f"{parts[-1]}@{_norm(frame.filename).rsplit('/', 1)[-1]}"


def _is_agent_call(frame: Frame) -> bool:
    """The run-mode agent's ``nn.Module.__call__`` wrapper, which calls ``forward`` itself (no
    ``_call_impl`` frame) when the module has no hooks: it, too, marks a new module call."""
    # installed: .../wattlens/profiler/agent/tracker.py; editable: <checkout>/profiler/agent/...
    return frame.function == "__call__" and _norm(frame.filename).endswith(
        "/profiler/agent/tracker.py")


def forward_path(frames: Sequence[Frame], index: SourceIndex) -> tuple[str, ...]:
    """The chain of module classes on the stack, outermost first.

    Two forward frames of the same class with no ``_call_impl`` between them are one module call
    (``forward`` calling ``_forward_impl``) and give one path element; a ``_call_impl`` between
    them means a new module call, so nested modules of one class stay separate.
    """
    return forward_chain(frames, index)[0]


def forward_chain(frames: Sequence[Frame], index: SourceIndex) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(:func:`forward_path`, each element's site: ``"file:line"`` of its innermost frame)."""
    path: list[str] = []
    sites: list[str] = []
    new_call = True
    for frame in frames:
        if frame.function in _CALL_GLUE or _is_agent_call(frame):
            new_call = True
            continue
        cls = forward_class(frame, index)
        if cls is None:
            continue
        site = f"{frame.filename}:{frame.line}"
        if new_call or not path or path[-1] != cls:
            path.append(cls)
            sites.append(site)
        else:
            sites[-1] = site
        new_call = False
    return tuple(path), tuple(sites)


def is_sync_wait(frames: Sequence[Frame], index: SourceIndex) -> bool:
    """The innermost Python frame is blocked in a device synchronisation.

    The call itself is C code (invisible to py-spy), so we read the leaf frame's source line:
    ``loss.item()``, ``x.cpu()``, ``.tolist()``, ``.numpy()``, ``torch.cuda.synchronize()``; or the
    leaf is torch's own ``synchronize`` wrapper.
    """
    if not frames:
        return False
    leaf = frames[-1]
    if leaf.function == "synchronize" and _in_package(leaf, "torch/cuda/"):
        return True
    text = index.line_text(leaf.filename, leaf.line)
    return bool(text and _SYNC_RE.search(text))


def is_idle(frames: Sequence[Frame], index: SourceIndex) -> bool:
    """The thread is blocked (sleep, lock, queue, socket ...), judged from its innermost frame."""
    if not frames:
        return False
    leaf = frames[-1]
    norm = _norm(leaf.filename)
    if any(norm.endswith("/" + f) for f in _IDLE_FILES):
        return True
    text = index.line_text(leaf.filename, leaf.line)
    return bool(text and _IDLE_LINE_RE.search(text))


def _outermost_bucket(frames: Sequence[Frame]) -> str | None:
    for frame in frames:
        if _in_package(frame, "torch/utils/data/"):
            return BUCKET_DATA
        if _in_package(frame, "torch/optim/") or _is_clip_grad(frame):
            return BUCKET_OPTIMIZER
        if _in_package(frame, "torch/autograd/") or (
            frame.function == "backward" and _norm(frame.filename).endswith("/torch/_tensor.py")
        ):
            return BUCKET_BACKWARD
    return None


def _is_clip_grad(frame: Frame) -> bool:
    return _norm(frame.filename).endswith("/torch/nn/utils/clip_grad.py")


def optimizer_part(frames: Sequence[Frame]) -> str:
    """Which part of the optimizer step a stack in the ``optimizer`` bucket is in, named from
    torch's own functions (the names are torch's, so the split holds for any model):

    - the parameter update's implementation, innermost first: ``_single_tensor_adamw`` (a loop
      over tensors), ``_multi_tensor_adamw`` (``foreach`` kernels), ``_fused_adamw`` (one fused
      kernel) ... — whichever the optimizer chose;
    - :data:`OPTIMIZER_ZERO_GRAD` for ``Optimizer.zero_grad``;
    - the gradient clipping call (``clip_grad_norm_``, ``clip_grad_value_``);
    - else :data:`OPTIMIZER_STEP_OTHER`: inside ``step`` but outside the update (step hooks, the
      profiler's record_function, the loop over parameter groups).
    """
    clip: str | None = None
    zero = False
    for frame in reversed(frames):
        fn = frame.function
        if _in_package(frame, "torch/optim/"):
            if _OPT_IMPL_RE.match(fn):
                return fn
            zero = zero or fn == "zero_grad"
        elif _is_clip_grad(frame) and fn.startswith("clip_grad"):
            clip = fn
    if zero:
        return OPTIMIZER_ZERO_GRAD
    if clip is not None:
        return clip
    return OPTIMIZER_STEP_OTHER


def classify(frames: Sequence[Frame], index: SourceIndex, *, gpu: bool = False) -> Attribution:
    """Where one stack's time goes.

    Order of precedence: ``gpu-wait`` (GPU targets only) > module-class path > data loading /
    optimizer / backward (the outermost such frame decides, so a Dataset's ``__getitem__`` under
    the DataLoader is data loading) > idle > python (other).
    """
    return classify_read(frames, index, gpu=gpu).att


def classify_read(frames: Sequence[Frame], index: SourceIndex, *, gpu: bool = False) -> Read:
    """:func:`classify`, with the sites of a module-class path (:class:`Read`)."""
    if gpu and is_sync_wait(frames, index):
        return Read(Attribution((), BUCKET_GPU_WAIT))
    path, sites = forward_chain(frames, index)
    if path:
        return Read(Attribution(path), sites)
    bucket = _outermost_bucket(frames)
    if bucket == BUCKET_OPTIMIZER:
        return Read(Attribution((), bucket, optimizer_part(frames)))
    if bucket is not None:
        return Read(Attribution((), bucket))
    if is_idle(frames, index):
        return Read(Attribution((), BUCKET_IDLE))
    return Read(Attribution((), BUCKET_OTHER))


# --------------------------------------------------------------------------- aggregation


def _is_main_thread(sample: StackSample, target_pid: int | None) -> bool:
    if sample.thread_id is None:
        return True
    if target_pid is not None and sample.thread_id == target_pid:
        return True
    return sample.thread_name == "MainThread"


def attribute(
    samples: Iterable[StackSample],
    *,
    index: SourceIndex | None = None,
    gpu: bool = False,
    target_pid: int | None = None,
) -> Counter[Attribution]:
    """Count samples per attribution (:func:`attribute_reads`, the sites dropped)."""
    return collapse(attribute_reads(samples, index=index, gpu=gpu, target_pid=target_pid))


def attribute_reads(
    samples: Iterable[StackSample],
    *,
    index: SourceIndex | None = None,
    gpu: bool = False,
    target_pid: int | None = None,
) -> Counter[Read]:
    """Count samples per :class:`Read` (an attribution and its path's sites).

    Threads: the main thread counts in full, its blocked time as ``idle``, so its samples cover
    the whole window. Another Python thread counts only while it does model work (a forward,
    backward, optimizer step, gpu-wait, or non-blocked data loading). py-spy's raw output does not
    say which samples were idle, and background threads in ML processes (DataLoader pin-memory,
    tqdm monitors, loggers, stdin readers) are nearly always blocked in a C call we can only guess
    at from the source line; counting them would dilute every share (by half, with one such
    thread). Their real work outside the model is the part we give up.
    """
    index = index if index is not None else SourceIndex()
    counts: Counter[Read] = Counter()
    for sample in samples:
        read = classify_read(sample.frames, index, gpu=gpu)
        bucket = read.att.bucket
        if not _is_main_thread(sample, target_pid) and (
            bucket in (BUCKET_IDLE, BUCKET_OTHER)
            or (bucket == BUCKET_DATA and is_idle(sample.frames, index))
        ):
            continue
        counts[read] += sample.count
    return counts


def whole_samples(n: float) -> int:
    """The whole samples in a (possibly fractional) count: rounded down, never to nearest.

    Rounding down is superadditive (``floor(a + b) >= floor(a) + floor(b)``), so a parent's
    ``n_samples`` is never below its children's summed, as inclusive counts are; rounding to the
    nearest broke that (36.4 -> 36 over children 18.6 + 17.8 -> 19 + 18). The tolerance absorbs
    the float error of summing the same counts in another order.
    """
    return math.floor(n + 1e-9 * max(1.0, abs(n)))


def aggregate(
    counts: Mapping[Attribution, float],
    *,
    window_start_ns: int,
    window_end_ns: int,
    rate_hz: float,
    window_energy_j: float | None,
) -> list[LayerCost]:
    """One window's rows: every node of the module-class tree plus every non-empty bucket.

    ``counts`` may be fractional: a window's lost reads spread by
    :class:`~wattlens.profiler.stacks.lost.LossAccount`; ``n_samples`` is then the whole samples
    (:func:`whole_samples`), so a node never counts fewer than its children together.
    ``time_s`` = samples x (1 / rate): sampled thread time, CPU side. ``share`` = the node's
    samples / all counted samples of the window (inclusive for class nodes), so shares of the
    top-level nodes and buckets add up to 1. ``energy_j = window_energy_j x share`` and
    ``self_energy_j`` from self samples (``figures.split_window_energy``); summing ``self_energy_j`` over all rows gives the window
    energy exactly (conservation). A bucket whose samples carry a detail (the optimizer's parts,
    :func:`optimizer_part`) gets one child row ``<bucket>/<detail>`` per part, the bucket row
    keeping its inclusive figures and only the unclaimed samples as self. Unknown window energy gives ``None`` energies, never 0.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    total = sum(counts.values())
    if total == 0:
        return []
    inclusive: dict[tuple[str, ...], float] = Counter()
    self_counts: dict[tuple[str, ...], float] = Counter()
    buckets: dict[str, float] = Counter()
    parts: dict[str, dict[str, float]] = {}  # bucket -> {detail: samples}
    for att, n in counts.items():
        if att.bucket is not None:
            buckets[att.bucket] += n
            if att.detail is not None:
                named = parts.setdefault(att.bucket, Counter())
                named[att.detail] += n
            continue
        self_counts[att.path] += n
        for depth in range(1, len(att.path) + 1):
            inclusive[att.path[:depth]] += n
    dt_s = 1.0 / rate_hz

    rows: list[LayerCost] = []
    for path, n in sorted(inclusive.items(), key=lambda kv: (-kv[1], kv[0])):
        n_self = self_counts.get(path, 0)
        rows.append(
            LayerCost(
                window_start_ns=window_start_ns,
                window_end_ns=window_end_ns,
                path="/".join(path),
                granularity="class",
                method=METHOD,
                time_s=n * dt_s,
                share=n / total,
                self_time_s=n_self * dt_s,
                n_samples=whole_samples(n),
                phase="forward",
            )
        )
    for name, n in sorted(buckets.items(), key=lambda kv: (-kv[1], kv[0])):
        named = parts.get(name, {})
        # A bucket split into named parts keeps its inclusive figures; its self figures are the
        # samples no part claims, so the window's self times still add up to all its samples.
        for path, n_row, n_self in [(name, n, n - sum(named.values()))] + [
            (f"{name}/{d}", k, k) for d, k in sorted(named.items(), key=lambda kv: (-kv[1], kv[0]))
        ]:
            rows.append(
                LayerCost(
                    window_start_ns=window_start_ns,
                    window_end_ns=window_end_ns,
                    path=path,
                    granularity="bucket",
                    method=METHOD,
                    time_s=n_row * dt_s,
                    share=n_row / total,
                    self_time_s=max(0.0, n_self) * dt_s,
                    n_samples=whole_samples(n_row),
                    phase="backward" if name == BUCKET_BACKWARD else "",
                )
            )
    return figures.split_window_energy(rows, window_energy_j)  # shared by self time, conserved


def window_counts(
    raw_text: str,
    *,
    gpu: bool = False,
    target_pid: int | None = None,
    index: SourceIndex | None = None,
) -> Counter[Attribution]:
    """py-spy raw text of one window -> samples per attribution."""
    return collapse(window_reads(raw_text, gpu=gpu, target_pid=target_pid, index=index))


def window_reads(
    raw_text: str,
    *,
    gpu: bool = False,
    target_pid: int | None = None,
    index: SourceIndex | None = None,
) -> Counter[Read]:
    """py-spy raw text of one window -> samples per :class:`Read`."""
    return attribute_reads(parse_raw(raw_text), index=index, gpu=gpu, target_pid=target_pid)


def window_costs(
    raw_text: str,
    *,
    window_start_ns: int,
    window_end_ns: int,
    rate_hz: float,
    window_energy_j: float | None,
    gpu: bool = False,
    target_pid: int | None = None,
    index: SourceIndex | None = None,
) -> list[LayerCost]:
    """py-spy raw text of one window -> that window's :class:`LayerCost` rows."""
    counts = window_counts(raw_text, gpu=gpu, target_pid=target_pid, index=index)
    return aggregate(
        counts,
        window_start_ns=window_start_ns,
        window_end_ns=window_end_ns,
        rate_hz=rate_hz,
        window_energy_j=window_energy_j,
    )
