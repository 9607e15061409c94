"""Break the backward pass of an attached training job into autograd operations.

The Python stack of a thread in ``loss.backward()`` ends in ``torch.autograd``: every sample lands
in one ``backward`` bucket. py-spy's ``--native`` mode also unwinds the C++ frames, and there the
autograd engine runs one generated node per operation —
``torch::autograd::generated::MmBackward0::apply``, ``SiluBackward0``, ``NllLossBackward0`` ... —
so a native sample in the backward says which operation's gradient is being computed.

Native reads must pause the target (blocking) and cost ~1-5 ms each on a 2-core machine, so
they run at :data:`NATIVE_RATE_HZ` (1 Hz) and only once the target has shown a backward pass.
Each native py-spy also stops the target once, at its first read, while it loads the symbols of
torch's libraries (0.3-0.65 s on a Llama-style training loop here: py-spy 0.4 reads a library's
whole symbol table the first time it names an address in it, and names addresses while the thread
is locked, in remoteprocess's ``Symbolicator::symbolicate``; its ``merge_native_thread`` carries a
TODO to do that outside the lock, so only a py-spy change moves it), and slows it for a few
seconds more while it reads them: benchmarks/bench_attach_long.py measured +14-16 % own-core
slowdown over the 10-s slices with a start against 0.4-1.0 % paused in the slices without one.
A start costs far more than all of a run's later reads, so the runs are few (:func:`native_run`):
a first short one at a higher rate (5 s at 10 Hz: ~50 reads, so the split starts early on a
pool that can carry it), then 120 s, then 300 s each at the steady rate. Back to back, the steady
reads would pause the target ~0.7 % of its time (1 Hz at ~7 ms a read: attach_long_train.md before
the budget), so every run after the first keeps to a budget (:data:`NATIVE_BUDGET`, 0.25 % of the
attach's time): a native py-spy works while the target is stopped, so a run's cost is counted
from its CPU time, read with ``wait4`` (times :data:`NATIVE_OWN_CORE_PER_CPU_S`, measured: the
target also runs slower for a moment after a start), and the next run waits until, once it ends,
the runs will have cost it no more than that share (:func:`native_budget_wait`). The first
run waits for nothing (its cost counts): it is the price of a split within the first minute. On
the Llama-style training loop here the second run then comes about a quarter of an hour in
(the next run's cost is estimated as a start plus its reads, the CPU per read measured 2 s into
each run, past its start: :func:`native_next_cost_s`).
Once the pool is large enough (:data:`NATIVE_POOL_BACKWARD_READS`) the runs stop, but for a short
refresh run every 10 minutes (:func:`native_schedule`); from then on a long attach costs the
target the calibration reads and little more. Their counts are
pooled over the session and split each window's ``backward`` bucket in those proportions; the
windows that close while the first run is still reading wait for it (a few seconds, at most its
length + 10 s) so their backward is split too (:func:`split_backward`): the op rows are an *estimate* whose
uncertainty is binomial in the pooled count (:func:`op_shares`), reported with them.

Lite native reads (:mod:`.native_lite`) do the backward's part of this without py-spy: one thread
stopped for a stack copy (~0.3 ms), torch's symbols loaded in our own process before the first
read, the node found by scanning the copy (so reads inside BLAS kernels are named too). Where they
work (x86-64 Linux, ptrace allowed, torch's symbols present, the backward on the main thread) they
split the backward from the first backward on at :data:`LITE_RATE_HZ`, and the first native
py-spy run is no longer exempt from the budget: its start-up stop comes minutes in, within
:data:`NATIVE_BUDGET`, and the py-spy runs are left to what only they give (the forward map of
:mod:`.backward_map`, the optimizer split). Their backward reads are not pooled with the lite
ones: the lite reads name the BLAS reads py-spy leaves as :data:`BLAS_UNWOUND`, so a pool of both
would mix two labellings of the same time. Where lite reads are unavailable, all is as above.

The same native reads split the optimizer step's parts (``optimizer/_single_tensor_adamw`` ...,
named from the Python frames by ``parse.optimizer_part``) by the tensor op the update called
(:func:`optimizer_ops`, :func:`split_optimizer`): pooled, an estimate like the backward's.

The same reads in the *forward* say which module class issues which op; :mod:`.backward_map`
uses them to charge each op's backward reads to module classes (an ``MmBackward0`` belongs to
whichever Linear issued the matmul: the autograd graph's names do not say which, the forward
reads do, in proportion). Ops with no forward evidence stay op rows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace

from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_OPTIMIZER,
    SourceIndex,
    classify,
    parse_frame,
)

NATIVE_RATE_HZ = 1
#: (seconds, rate in Hz or None for the steady rate) of the n-th native py-spy run; the last
#: repeats. Its start-up stop is paid rarely; the first run reads fast so the split starts early.
NATIVE_RUNS = ((5, 10), (120, None), (300, None))


#: Once this many backward reads are pooled, the split is known to a few points (the binomial
#: standard error of any op's share is at most 0.5 / sqrt(400) = 2.5 pp) and the native reads stop
#: paying for themselves: they stop, but for one :data:`NATIVE_REFRESH_RUN_S` run every
#: :data:`NATIVE_REFRESH_EVERY_S`, which keeps the pool following a job that changes.
NATIVE_POOL_BACKWARD_READS = 400
NATIVE_REFRESH_EVERY_S = 600
NATIVE_REFRESH_RUN_S = 60

#: The share of the attach's time the native reads may cost the target (own-core time: stopped,
#: or slower while running). The first run (the price of a split in the first minute) waits for
#: nothing, but its cost counts. The rest of the attach costs 0.48 % (95 % CI 0.23-0.73 %) once
#: native reads pause (benchmarks/results/attach_alternate_train.md): 0.25 % keeps the whole
#: under 1 % at the top of that interval.
NATIVE_BUDGET = 0.0025

#: A native py-spy works while the target is stopped (its symbol loading at the start, each read's
#: unwinding), so its own CPU time, read with ``wait4``, is what a run costs is counted from. Measured
#: side by side (bench_attach_long.py --native-runs, attach_native_runs_train.md: 74 runs of the
#: first run's shape on the Llama-style training loop): 0.89 s of py-spy CPU per run, the target
#: stopped 0.61 s and its own-core time 1.09 s longer (95 % CI 0.91-1.27 s): 1.23 s of own-core
#: time per CPU second. The upper end of that interval is the factor used.
NATIVE_OWN_CORE_PER_CPU_S = 1.43


def native_budget_wait(spent_s: float, elapsed_s: float, next_cost_s: float, next_run_s: float,
                       budget: float = NATIVE_BUDGET) -> float:
    """Seconds to wait before the next native run so that when it ends the native reads will have
    cost the target at most ``budget`` of the attach's time: ``spent_s`` (their cost so far) plus
    ``next_cost_s`` (the next run's, estimated) over ``elapsed_s`` + the wait + ``next_run_s``.
    A ``budget`` of 0 switches the budget off (no wait)."""
    if budget <= 0:
        return 0.0
    return max(0.0, (spent_s + next_cost_s) / budget - elapsed_s - next_run_s)


def native_cost_phrase(runs: int, spent_s: float) -> str:
    """How the cost of the native runs is said, in the backward note and under the plots that
    shade the runs (one wording, one rounding: the two read the same)."""
    return f"{runs} native run{'' if runs == 1 else 's'} cost the target about {spent_s:.1f} s"


def native_next_cost_s(runs: list[tuple[float, int, float | None]], next_reads: int) -> float:
    """The next run's CPU, estimated from the runs so far (``(cpu_s, reads, cpu_per_read_s)``
    each; the per-read CPU measured after the run's start, or None). A run's start costs far more
    than a read (~0.65 s against ~3.3 ms of py-spy CPU: attach_native_runs_train.md), so with the
    per-read figures: the largest start seen plus the largest per-read CPU seen times
    ``next_reads``. Without them: the last run's cost per read, its start included (an
    overestimate for a run of more reads). Never less than the cheapest run so far (a run pays
    its start however few its reads). Both err on the target's side."""
    if not runs:
        return 0.0
    cheapest = min(c for c, _, _ in runs)
    measured = [(c, r, p) for c, r, p in runs if p is not None]
    if measured:
        per_read = max(p for _, _, p in measured)
        start = max(max(0.0, c - p * r) for c, r, p in measured)
        return max(start + per_read * next_reads, cheapest)
    last_s, last_reads, _ = runs[-1]
    return max(last_s / max(1, last_reads) * next_reads, cheapest)


def native_read_cost_s(cpu_s: float, mark_cpu_s: float | None, reads_after_mark: float) -> float | None:
    """The CPU one read cost in a run: its CPU after a mark taken once the start was past
    (``mark_cpu_s``) over the reads made after it. None without a mark or reads after it. A start
    not yet done at the mark only raises the figure (errs on the target's side)."""
    if mark_cpu_s is None or reads_after_mark < 1:
        return None
    return max(0.0, cpu_s - mark_cpu_s) / reads_after_mark


def native_run(n: int, steady_hz: int = NATIVE_RATE_HZ) -> tuple[int, int]:
    """(seconds, rate in Hz) of the ``n``-th (0-based) native py-spy of a session."""
    seconds, hz = NATIVE_RUNS[min(n, len(NATIVE_RUNS) - 1)]
    return seconds, max(hz or 0, steady_hz)


def native_schedule(n: int, pooled_backward_reads: int, steady_hz: int = NATIVE_RATE_HZ,
                    pool_reads: int = NATIVE_POOL_BACKWARD_READS) -> tuple[float, int, int]:
    """(seconds to wait first, seconds, rate in Hz) of the ``n``-th native py-spy run, given the
    backward reads pooled so far: the runs of :data:`NATIVE_RUNS` back to back until the pool
    holds ``pool_reads``, then a short refresh run every :data:`NATIVE_REFRESH_EVERY_S`."""
    seconds, hz = native_run(n, steady_hz)
    if pool_reads and pooled_backward_reads >= pool_reads:
        return float(NATIVE_REFRESH_EVERY_S), NATIVE_REFRESH_RUN_S, steady_hz
    return 0.0, seconds, hz

#: The first native py-spy run's CPU before any run has been measured (its start is most of it):
#: 0.89 s per run of the first run's shape, measured (attach_native_runs_train.md). With lite
#: reads splitting the backward, the first run waits for the budget like the rest, and this is its
#: estimated cost.
NATIVE_FIRST_RUN_CPU_S = 0.89

#: Lite native reads (:mod:`.native_lite`: one thread stopped for a stack copy, symbols named in
#: our process) split the backward from the first backward on, at this rate: the Llama-style
#: training loop spends ~48 % of its time in the backward, so ~140 backward reads in the first
#: minute (any op's share to ±4 pp), stopping the thread 0.31 % of its time (0.30 ms median,
#: 0.62 ms mean a read, measured: benchmarks/results/native_lite.md). Once the pool holds
#: :data:`NATIVE_POOL_BACKWARD_READS` (~3 minutes) they go on at :data:`LITE_REFRESH_HZ`, which
#: keeps the pool following the job for a tenth of that.
LITE_RATE_HZ = 5.0
LITE_REFRESH_HZ = 0.5


def lite_wait_s(rate_hz: float, spent_s: float, elapsed_s: float, read_cost_s: float,
                budget: float = NATIVE_BUDGET) -> float:
    """Seconds until the next lite read: ``1 / rate_hz``, or longer where the native reads so far
    (``spent_s``: the lite stops, measured, and the py-spy runs, estimated) plus one more read
    (``read_cost_s``: the mean stop so far) would pass ``budget`` of the attach's time
    (``elapsed_s``). On a quiet machine a read stops the thread ~0.3 ms and 5 Hz stays well
    inside the budget; on a busy one our own thread waits for a CPU while it holds the target
    stopped (2 ms a read, seen beside a test suite: 1 % of the attach at 5 Hz), and the budget
    slows the reads rather than the target. A ``budget`` of 0 switches it off."""
    wait_s = 1.0 / rate_hz
    if budget > 0:
        wait_s = max(wait_s, native_budget_wait(spent_s, elapsed_s, read_cost_s, 0.0, budget))
    return wait_s
#: How long the native py-spy waits for the lite reader to load torch's symbols and read once
#: before it takes it as unavailable (and its first run, as before lite reads, waits for nothing).
LITE_READY_TIMEOUT_S = 30.0

#: How a bucket split by op reads in a view's caption (the rows keep their sampling method; the
#: backward's rows by module class have their own, backward_map.METHOD)
OP_SPLIT_TEXT = ("by tensor op: each window's bucket shared out by the session's pooled native "
                 "reads (an estimate, ± its binomial error)")

ENGINE_OTHER = "autograd engine (other)"
PYTHON_FUNCTION = "autograd.Function (Python)"
# A BLAS kernel straight under the Python frames: the unwinder could not get through the
# hand-written kernel to the node that called it, but it is a matrix product's gradient.
BLAS_UNWOUND = "matmul grad (BLAS kernel; node not unwound)"
GRAD_ACCUMULATION = "gradient accumulation"

OPTIMIZER_NO_OP = "no tensor op on the stack"
# The Python-visible tensor op a native stack is in: torch's binding THPVariable_<op>
# (THPVariable_mul_, THPVariable__foreach_add_): the outermost one is what the Python code called.
_TENSOR_OP_RE = re.compile(r"THPVariable_([A-Za-z0-9_]+)")
_NODE_RE = re.compile(r"(?:^|::)([A-Za-z0-9_]+Backward\d*|AccumulateGrad)::")
_BLAS_RE = re.compile(r"^(?:mkl_blas|mkl_|openblas|dgemm|sgemm|cblas_|bli_|dnnl_)|gemm", re.I)


def native_reads(raw_text: str) -> Iterator[tuple[list[str], list, int]]:
    """Each stack of a ``py-spy record --native --format raw`` file: its ``;``-separated parts
    (native and Python), the Python frames among them (``parse.parse_frame``), and its count."""
    for line in raw_text.splitlines():
        stack, sep, count_text = line.rpartition(" ")
        if not sep or not count_text.isdigit() or int(count_text) <= 0:
            continue
        parts = stack.split(";")
        yield parts, [f for f in (parse_frame(p) for p in parts) if f is not None], int(count_text)


def is_blas_leaf(part: str) -> bool:
    """Is this native frame (as py-spy printed it) a BLAS kernel (MKL, OpenBLAS, oneDNN gemm)?"""
    return _BLAS_RE.search(part.split(" (", 1)[0]) is not None


def autograd_node(parts: Iterable[str]) -> str | None:
    """What the innermost frames of a native stack say the backward is doing (frames as py-spy
    printed them): the innermost autograd node, else a BLAS kernel leaf, else the engine's
    gradient accumulation; None when none of these is on the stack."""
    found: str | None = None
    other: str | None = None
    leaf = ""
    for part in parts:
        leaf = part
        m = _NODE_RE.search(part)
        if m is not None:
            found = m.group(1)
        elif "PyNode::apply" in part:
            found = PYTHON_FUNCTION
        elif "InputBuffer::add" in part or "autograd::accumulate" in part:
            other = GRAD_ACCUMULATION
    if found is not None:
        return found
    if is_blas_leaf(leaf):
        return BLAS_UNWOUND
    return other


def backward_ops(raw_text: str, index: SourceIndex | None = None) -> Counter[str]:
    """Native samples in the backward pass, per autograd node (``py-spy record --native`` raw).

    A sample counts when its Python stack is in the backward (the op from :func:`autograd_node`,
    else :data:`ENGINE_OTHER`), or when another thread has an autograd node on its native stack
    (on a GPU the engine runs in its own thread).
    """
    index = index if index is not None else SourceIndex()
    out: Counter[str] = Counter()
    for parts, frames, count in native_reads(raw_text):
        in_backward = classify(frames, index).bucket == BUCKET_BACKWARD
        node = autograd_node(parts)
        engine_thread = not frames and node not in (None, BLAS_UNWOUND)
        if not (in_backward or engine_thread):
            continue  # a forward (whose frames may name nodes it creates), or other work
        node = node or ENGINE_OTHER
        out[node] += count
    return out


def op_shares(ops: Counter[str]) -> dict[str, tuple[float, float]]:
    """{op: (share of the backward, standard error)}; binomial over the pooled native reads."""
    total = sum(ops.values())
    if total <= 0:
        return {}
    return {op: (n / total, binomial_se(n, total)) for op, n in ops.most_common()}


def binomial_se(k: float, n: float) -> float:
    """Standard error of the proportion k/n of n independent reads."""
    p = k / n
    return math.sqrt(p * (1.0 - p) / n)


def split_backward(rows: list[LayerCost], ops: Counter[str]) -> list[LayerCost]:
    """Replace the window's ``backward`` bucket by one child row per autograd op.

    The bucket row stays as the parent (inclusive figures unchanged, self figures 0) and each
    child ``backward/<Op>`` gets the op's pooled share of it; ``n_samples`` of a child is the
    number of native reads behind its share. Summing ``self_energy_j`` still gives the window's
    energy; ``split_se_s`` the binomial standard error of its time. Without native reads the
    rows are returned unchanged.
    """
    total = sum(ops.values())
    if total <= 0:
        return rows
    out: list[LayerCost] = []
    for row in rows:
        if row.granularity != "bucket" or row.path != BUCKET_BACKWARD:
            out.append(row)
            continue
        out.append(
            replace(
                row,
                self_time_s=0.0,
                self_energy_j=None if row.energy_j is None else 0.0,
            )
        )
        for op, n in ops.most_common():
            frac = n / total
            out.append(
                replace(
                    row,
                    path=f"{BUCKET_BACKWARD}/{op}",
                    time_s=row.time_s * frac,
                    share=row.share * frac,
                    energy_j=None if row.energy_j is None else row.energy_j * frac,
                    self_time_s=row.time_s * frac,
                    self_energy_j=None if row.energy_j is None else row.energy_j * frac,
                    n_samples=n,
                    split_se_s=row.time_s * binomial_se(n, total),
                )
            )
    return out


def optimizer_ops(raw_text: str, index: SourceIndex | None = None) -> Counter[tuple[str, str]]:
    """Native samples in the optimizer step, per (optimizer part, tensor op): the part as
    :func:`~wattlens.profiler.stacks.parse.optimizer_part` names it from the Python frames, the op
    from the outermost ``THPVariable_<op>`` binding frame (``mul_``, ``addcdiv_``,
    ``_foreach_add_``), else :data:`OPTIMIZER_NO_OP`."""
    index = index if index is not None else SourceIndex()
    out: Counter[tuple[str, str]] = Counter()
    for parts, frames, count in native_reads(raw_text):
        att = classify(frames, index)
        if att.bucket != BUCKET_OPTIMIZER or att.detail is None:
            continue
        op = next((m.group(1) for m in map(_TENSOR_OP_RE.search, parts) if m is not None),
                  OPTIMIZER_NO_OP)
        out[(att.detail, op)] += count
    return out


def split_optimizer(rows: list[LayerCost], ops: Counter[tuple[str, str]]) -> list[LayerCost]:
    """Each ``optimizer/<part>`` row with native reads gets one child ``optimizer/<part>/<op>``
    per tensor op, in the pooled proportions of those reads (an estimate, like the backward's
    split); the part row keeps its inclusive figures and gives its self figures to the
    children, so the window's energy still adds up (``split_se_s``: the binomial standard
    error of each child's time). Parts without native reads stay whole."""
    by_part: dict[str, Counter[str]] = {}
    for (part, op), n in ops.items():
        if n > 0:
            by_part.setdefault(f"{BUCKET_OPTIMIZER}/{part}", Counter())[op] += n
    if not by_part:
        return rows
    out: list[LayerCost] = []
    for row in rows:
        part_ops = by_part.get(row.path) if row.granularity == "bucket" else None
        if not part_ops:
            out.append(row)
            continue
        total = sum(part_ops.values())
        self_t = row.self_time_s or 0.0
        self_e = row.self_energy_j
        out.append(replace(row, self_time_s=0.0, self_energy_j=None if self_e is None else 0.0))
        for op, n in part_ops.most_common():
            frac = n / total
            out.append(replace(
                row, path=f"{row.path}/{op}", time_s=self_t * frac, share=row.share * frac,
                energy_j=None if self_e is None else self_e * frac, self_time_s=self_t * frac,
                self_energy_j=None if self_e is None else self_e * frac, n_samples=n,
                split_se_s=self_t * binomial_se(n, total)))
    return out
