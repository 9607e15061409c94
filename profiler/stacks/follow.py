"""Follow the worker processes of an attached tree: one :class:`StackSampler` per rank.

``wattlens attach PID`` hands this the attached PID. It finds the processes to sample
(:func:`~wattlens.profiler.stacks.workers.find_workers`: the ranks of a torchrun job by RANK in
their environment, a launcher's Python children, else PID itself), starts one StackSampler per
process (each with its own non-blocking reader, blocking calibration reader, torn-path guard and
lost-read account, which are all per process), tags its layer rows with the process's rank, and
gives each the energy of its own process: the tree's attributed energy over the window × the
process's share of the tree's CPU time there (:class:`~wattlens.profiler.stacks.cpu_split.CpuSplit`),
so the ranks' rows add up to the job's energy once (the launcher's own share stays unassigned).

The tree is rescanned every ``rescan_s``: a rank that starts late gets a sampler then; a rank that
exits ends its sampler (its rows stop at its end; the session goes on); a rank py-spy may not
read (ptrace denied) is one line, and the others and the power measurement go on.

Why one py-spy per rank rather than ``py-spy record --subprocesses`` (one py-spy for the tree,
each stack rooted at a ``process PID:"cmdline"`` frame): the lost-read correction needs each
process's own read and error counts, and ``--subprocesses`` prints one ``Samples: N Errors: M``
line for all of them. It is not cheaper either: on a 2-rank DDP job
(benchmarks/bench_attach_ranks.py, benchmarks/results/attach_ranks.md) py-spy used 0.027 CPU-s per
second per rank this way (native reader off; 0.069 with the 1 Hz native reader), against 0.059 per
rank for a --subprocesses pair, which also samples the launcher and pauses the whole tree for its
blocking calibration reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psutil

from wattlens.profiler.process import tree_children
from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks.cpu_split import CpuSplit
from wattlens.profiler.stacks.sampler import (
    DEFAULT_RATE_HZ,
    INSTALL_HINT,
    StackSampler,
    find_pyspy,
)
from wattlens.profiler.stacks.workers import Worker, find_workers, owners

log = logging.getLogger(__name__)

RESCAN_S = 2.0  # a rank that starts late is sampled from at most this long after it appears
READ_S = 0.25  # CPU readings of the tree's members, interpolated to each window's ends


class RankFollower:
    """Stack samplers for every worker of ``root_pid``'s tree, found again every ``rescan_s``.

    ``on_window(rows)`` gets each sampler's rows (tagged with its rank); ``energy_between(t0, t1)``
    is the tree's attributed energy in joules (None when unknown). ``sampler_kwargs`` go to every
    :class:`StackSampler` (rate_hz, window_s, gpu, pyspy_path, ...).
    """

    def __init__(self, root_pid: int, *, on_window: Callable[[list[LayerCost]], None],
                 energy_between: Callable[[int, int], float | None], rescan_s: float = RESCAN_S,
                 read_s: float = READ_S, **sampler_kwargs):
        self.root_pid = int(root_pid)
        self.rate_hz = float(sampler_kwargs.get("rate_hz", DEFAULT_RATE_HZ))
        self.samplers: dict[int, tuple[Worker, StackSampler]] = {}
        self.cpu = CpuSplit()
        self._on_window = on_window
        self._energy_between = energy_between
        self._rescan_s = rescan_s
        self._read_s = read_s
        self._kwargs = sampler_kwargs
        self._reason: str | None = None
        self._reported: set[int] = set()  # samplers whose failure was already said
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        try:
            self._root: psutil.Process | None = psutil.Process(self.root_pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._root = None

    # ----------------------------------------------------------------- public state

    @property
    def available(self) -> bool:
        """False when no layer figures can come (py-spy missing, the target gone at start)."""
        return self._reason is None

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def windows(self) -> int:
        return sum(s.windows for _, s in self._list())

    def workers(self) -> list[Worker]:
        return [w for w, _ in self._list()]

    def _list(self) -> list[tuple[Worker, StackSampler]]:
        with self._lock:
            return list(self.samplers.values())

    # ----------------------------------------------------------------- lifecycle

    def start(self, *, wait_s: float = 10.0) -> None:
        """Find the workers, start their samplers, and return once each has attached (or failed),
        or after ``wait_s``; then a thread keeps rescanning."""
        if find_pyspy(self._kwargs.get("pyspy_path")) is None:
            self._reason = f"py-spy not found: {INSTALL_HINT}"
            return
        if self._root is None or not self._root.is_running():
            self._reason = f"process {self.root_pid} has exited: there are no layer figures after its end"
            return
        started = self._rescan()
        deadline = time.monotonic() + wait_s
        for sampler in started:
            sampler.wait_attached(max(0.0, deadline - time.monotonic()))
        self._thread = threading.Thread(target=self._loop, name=f"wattlens-ranks-{self.root_pid}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop every sampler; their windows in progress are cut short and handed over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        samplers = [s for _, s in self._list()]
        for s in samplers:  # all at once: their windows end together
            s.request_stop()
        for s in samplers:
            s.stop()

    # ----------------------------------------------------------------- the follower thread

    def _loop(self) -> None:
        next_scan = time.monotonic() + self._rescan_s
        while not self._stop.wait(self._read_s):
            try:
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self._rescan_s
                    self._rescan()
                self.cpu.read()
            except Exception:  # never let the follower take the session down
                log.exception("rank follower of %d failed a rescan", self.root_pid)

    def _rescan(self) -> list[StackSampler]:
        """Start samplers for workers not seen before; refresh the CPU split's members."""
        assert self._root is not None
        found = find_workers(self._root)
        started: list[StackSampler] = []
        with self._lock:
            known = set(self.samplers)
        for worker in found:
            if worker.pid in known or self._stop.is_set():
                continue
            sampler = self._make(worker)
            with self._lock:
                self.samplers[worker.pid] = (worker, sampler)
            log.info("sampling the stacks of %s (%s)", worker.label(), worker.found_by)
            sampler.start(wait_s=0.0)
            started.append(sampler)
        with self._lock:
            workers = list(self.samplers)
        try:
            members = {p.pid: p for p in [self._root, *tree_children(self._root)]}
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            members = {}
        self.cpu.set_owners(owners(self._root, workers), members)
        self.cpu.read()
        return started

    def _make(self, worker: Worker) -> StackSampler:
        def energy(t0_ns: int, t1_ns: int, pid: int = worker.pid) -> float | None:
            energy_j = self._energy_between(t0_ns, t1_ns)
            if energy_j is None:
                return None
            share = self.cpu.share(pid, t0_ns, t1_ns)
            return None if share is None else energy_j * share

        return StackSampler(worker.pid, on_window=self._on_window, energy_between=energy,
                            rank=worker.rank, **self._kwargs)

    # ----------------------------------------------------------------- messages

    def _single_root(self) -> bool:
        items = self._list()
        return len(items) == 1 and items[0][0].found_by == "root"

    def start_notes(self) -> list[str]:
        """One line per worker that could not be sampled from the start (e.g. ptrace denied),
        when other workers are sampled; said once. Power measurement is not affected."""
        if self._single_root():
            return []
        out = []
        for worker, s in self._list():
            if not s.available and s.windows == 0 and worker.pid not in self._reported:
                self._reported.add(worker.pid)
                out.append(f"no layer figures for {worker.label()}: {s.reason}")
        return out

    def final_split(self) -> tuple[list[LayerCost], list[LayerCost]]:
        """Every sampled process's :meth:`StackSampler.final_split`, together."""
        return self._together(StackSampler.final_split)

    def final_tree(self) -> tuple[list[LayerCost], list[LayerCost], list[str]]:
        """Every sampled process's :meth:`StackSampler.final_tree`, together, and its notes."""
        old, new = self._together(StackSampler.final_tree)
        single = self._single_root()
        return old, new, [("" if single else f"{worker.label()}: ") + s.final_tree_note
                          for worker, s in self._list() if s.final_tree_note]

    def _together(self, method: Callable[[StackSampler], tuple[list[LayerCost], list[LayerCost]]]
                  ) -> tuple[list[LayerCost], list[LayerCost]]:
        old: list[LayerCost] = []
        new: list[LayerCost] = []
        for _worker, s in self._list():
            o, n = method(s)
            old += o
            new += n
        return old, new

    def native_run_spans(self) -> list[dict]:
        """Every sampled process's native runs (:meth:`StackSampler.native_run_spans`), for the
        live plots to shade while the session runs."""
        return [span for _worker, s in self._list() for span in s.native_run_spans()]

    def backward_pooled(self) -> bool:
        """Did any sampled process pool native reads (a split to speak of)?"""
        return any(s.backward_ops or s.optimizer_ops for _worker, s in self._list())

    def stop_notes(self) -> list[tuple[str, str, dict]]:
        """(event kind, one line, data) to store at the end: per sampled process, why it stopped
        early, its lost reads and its backward split (as a single sampler says them)."""
        items = self._list()
        if not items:
            why = ("its launcher started no Python worker while it was measured"
                   if self._root is not None else "the process could not be read")
            return [("note", f"no layer figures: no Python process to sample in the tree of "
                             f"PID {self.root_pid} ({why})", {})]
        single = self._single_root()
        out: list[tuple[str, str, dict]] = []
        for worker, s in items:
            who = "" if single else f"{worker.label()}: "
            data = {} if single else {"rank": worker.rank, "pid": worker.pid}
            spans = s.native_run_spans()  # where native reads paused it (the plots shade them)
            if not s.available:
                if not single and s.windows and s.exited:
                    out.append(("note", f"{worker.label()} exited during the session after "
                                        f"{s.windows} window(s): its layer rows end there", data))
                elif worker.pid not in self._reported and s.windows:
                    # what it did measure is in the table: say where it ends, not "no layer figures"
                    why = f"process {worker.pid} exited" if s.exited else s.reason
                    out.append(("note", f"{who}the layer rows end after {s.windows} window(s): {why}", data))
                elif worker.pid not in self._reported:
                    what = "no layer figures" if single else f"no layer figures for {worker.label()}"
                    out.append(("note", f"{what}: {s.reason}", data))
                if single or not s.windows:  # a single sampler says only why it stopped
                    if spans:  # and where it paused the target, which happened all the same
                        out.append(_native_runs_event(who, s, spans, data, ""))
                    continue
            out.append(("stack-reads", who + s.loss_message(), {**s.loss.summary(), **data}))
            backward = s.backward_message()
            if backward is not None:
                out.append(("backward-ops", who + backward, {"ops": dict(s.backward_ops),
                                                              "classes": s.backward_classes(),
                                                              "native_runs": spans, **data}))
            elif spans:  # runs that pooled no backward read: their cost is said all the same
                out.append(_native_runs_event(who, s, spans, data, "; no backward read was pooled"))
        return out


def _native_runs_event(who: str, s: StackSampler, spans: list[dict], data: dict,
                       why: str) -> tuple[str, str, dict]:
    """The native runs of a sampler without a backward note (no backward read pooled, or it
    stopped early): where they paused the target, and their cost where it was read."""
    said = (s.native_cost_message() if s.native_runs else
            f"{len(spans)} native stack read run(s) stopped the target; their cost could not be read")
    return ("native-runs", f"{who}{said}{why}", {"native_runs": spans, **data})
