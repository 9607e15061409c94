"""The target's attributed energy split over the ranks of a torch.distributed job, tick by tick.

Each rank is a process whose PID its agent reports (hello). Every tick the sampler hands over the
energy it just attributed to the target (CPU side and per GPU); :class:`RankSplit` shares it by
the same rules that charged the target:

- CPU (and DRAM): by CPU time. Each member of the target's process tree belongs to the rank whose
  process is its nearest ancestor (a rank's DataLoader workers count as the rank); the tick's
  attributed CPU energy is shared by the groups' CPU seconds. Ticks come as often as step ends
  ask for them, and over a few ms a rank's CPU time says little (it may be between two bursts; /proc
  counts it in 10-ms clock ticks where its CPU-time clock cannot be read), so each tick's shares
  are measured over a window of at least ``min_span_s`` that ends at the tick and slides with the
  ticks; a share from a few ms would charge a rank 0 J for a step it computed in.
- GPU: by the driver's per-process SM utilisation on each device (the same samples that gave the
  target its share): a rank gets the part of the device's attributed energy its processes used.
  Where the driver has no per-process figure, a device held by one rank's processes alone is that
  rank's; else the device goes to the ranks that report it as theirs (the main model's
  ``cuda:N``, else ``LOCAL_RANK``) — "device map".
- Whatever no rank is charged (the launcher, processes outside every rank, energy from before the
  ranks reported) is the ``other`` row, so ``Σ ranks + other == target/energy_j`` at every tick.

Where a rank's own figures cannot be had (its PID never appears in the target's tree: another
PID namespace), the CPU energy is split equally over the ranks — a labelled fallback with the
reason, recorded as a ``rank-energy`` event like every change of a rank's method.

Output: cumulative series ``rank/<r>/energy_j`` and ``rank/other/energy_j`` (declared through
``declare`` before their first point), stored like every other series.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from wattlens.profiler.records import EventRecord, SamplePoint, SeriesSpec

CPU_BY_TIME = "per-rank CPU time"
GPU_BY_PROCESS = "GPU per-process share of its device"
GPU_SOLE = "GPU device held by the rank alone"
GPU_BY_DEVICE_MAP = "GPU device map (the device the rank reports)"
CPU_EQUAL = "equal split of CPU energy"
GPU_EQUAL = "equal split of GPU energy"
METHOD = f"{CPU_BY_TIME} + {GPU_BY_PROCESS}"
EQUAL_METHOD = "equal split: the target's energy over the rank's step span ÷ ranks on the host"
OTHER = "other"
MIN_SPAN_S = 0.3  # CPU shares over at least 30 clock ticks of one CPU
NOT_IN_TREE_AFTER_S = 3.0  # a registered rank PID not found in the tree by then: another namespace
SERIES_METHOD = f"attributed: {METHOD} (fallbacks recorded as rank-energy events)"


def series_key(rank: int | str) -> str:
    return f"rank/{rank}/energy_j"


@dataclass(frozen=True, slots=True)
class GpuTick:
    """One GPU's part of a tick: the energy attributed to the target, and per-process figures."""

    source_id: str
    index: int | None  # NVML device index
    energy_j: float
    sm_by_pid: Mapping[int, float] | None  # our PID → SM % of the driver's last sample (None: none)
    on_device: set[int] | None  # our PIDs holding a context on the device (None: unknown)


@dataclass
class _Rank:
    rank: int
    pid: int
    device: int | None
    registered_ns: int
    cum_j: float = 0.0
    seen: bool = False  # its PID was found in the target's tree (an exited rank stays "seen")
    methods: set[str] = field(default_factory=set)


class RankSplit:
    """Per-rank cumulative energy; thread-safe (ranks register from the agent link's thread)."""

    def __init__(self, *, declare: Callable[[SeriesSpec], None] | None = None,
                 on_event: Callable[[EventRecord], None] | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns, min_span_s: float = MIN_SPAN_S) -> None:
        self.declare = declare
        self._min_span_ns = int(min_span_s * 1e9)
        self._cpu_history: deque[tuple[int, dict[int, float]]] = deque()  # (tick ns, CPU s per PID)
        self.on_event = on_event
        self._clock = clock_ns
        self._lock = threading.Lock()
        self._ranks: dict[int, _Rank] = {}  # rank → its process
        self._declared: set[str] = set()
        self._last_cpu_frac: dict[int | str, float] | None = None
        self.other_j: float | None = None  # None until the first tick with ranks
        self._reasons: dict[tuple[int, str], str] = {}

    # ---- registration (agent link thread) --------------------------------------------------------
    def register(self, pid: int, rank: int, device: int | None = None) -> None:
        """The process ``pid`` is rank ``rank``; ``device``: the GPU index it uses, if known."""
        with self._lock:
            r = self._ranks.get(rank)
            if r is None or r.pid != pid:  # a restarted rank (elastic) keeps its cumulative energy
                self._ranks[rank] = _Rank(rank, pid, device, self._clock(), cum_j=r.cum_j if r else 0.0)
            else:  # a later hello (the model was reported): the device as known now
                r.device = device

    @property
    def ranks(self) -> dict[int, int]:
        with self._lock:
            return {r: x.pid for r, x in self._ranks.items()}

    def has(self, rank: int) -> bool:
        with self._lock:
            return rank in self._ranks

    # ---- one tick (sampler thread) -----------------------------------------------------------------
    def tick(self, t_ns: int, *, cpu_s_by_pid: Mapping[int, float], parents: Mapping[int, int | None],
             cpu_j: float | None, gpus: list[GpuTick], target_total_j: float) -> list[SamplePoint]:
        """Share this tick's attributed energy (``cpu_j`` + each GPU's) over the ranks; return the
        cumulative points. ``target_total_j``: the target's cumulative energy after this tick."""
        with self._lock:
            ranks = dict(self._ranks)
        if not ranks:
            return []
        tick_j = (cpu_j or 0.0) + sum(g.energy_j for g in gpus)
        if self.other_j is None:  # everything before the ranks reported stays with "other"
            self.other_j = target_total_j - tick_j
        group = _groups(cpu_s_by_pid, parents, {x.pid: r for r, x in ranks.items()})
        charged: dict[int, float] = dict.fromkeys(ranks, 0.0)
        frac = self._cpu_fractions(t_ns, cpu_s_by_pid, group)  # every tick: the spans run on
        if cpu_j:
            self._split_cpu(t_ns, cpu_j, cpu_s_by_pid, frac, ranks, charged)
        for g in gpus:
            if g.energy_j:
                self._split_gpu(t_ns, g, group, ranks, charged)
        self.other_j += tick_j - sum(charged.values())
        points = []
        for r, x in ranks.items():
            x.cum_j += charged[r]
            points.append(self._point(r, t_ns, x.cum_j))
        points.append(self._point(OTHER, t_ns, self.other_j))
        return points

    def _point(self, who: int | str, t_ns: int, value: float) -> SamplePoint:
        key = series_key(who)
        if key not in self._declared:
            self._declared.add(key)
            if self.declare is not None:
                label = (f"rank {who}'s energy" if who != OTHER else
                         "target energy outside every rank (launcher, start-up, other processes)")
                self.declare(SeriesSpec(key, "J", SERIES_METHOD, None, label))
        return SamplePoint(key, t_ns, value)

    def _split_cpu(self, t_ns, cpu_j, cpu_s, frac, ranks, charged) -> None:
        for x in ranks.values():
            x.seen = x.seen or x.pid in cpu_s
        missing = [r for r, x in ranks.items()
                   if not x.seen and (t_ns - x.registered_ns) / 1e9 >= NOT_IN_TREE_AFTER_S]
        if missing:
            reason = (f"the PID of rank(s) {', '.join(map(str, sorted(missing)))} is not in the target's "
                      "process tree (another PID namespace?), so per-rank CPU time is unknown")
            for r in ranks:
                charged[r] += cpu_j / len(ranks)
                self._method(t_ns, r, CPU_EQUAL, reason)
            return
        for r in ranks:
            charged[r] += cpu_j * frac.get(r, 0.0)
            self._method(t_ns, r, CPU_BY_TIME, None)

    def _cpu_fractions(self, t_ns: int, cpu_s: Mapping[int, float], group: Mapping[int, int]) -> dict:
        """Each group's share of the tree's CPU seconds over a window that ends at this tick and
        reaches back to the newest earlier tick at least ``min_span_s`` old (before there is one:
        every member's CPU time since the sampler first saw it).

        The window slides with the ticks, so a rank's share follows what it does now: fractions
        from the last *completed* span lagged by up to two spans, and a 1.2-s loop in which rank 0
        did 20x rank 1's work was charged 2.9x (the start-up's even split carried into it)."""
        hist = self._cpu_history
        if not hist:
            hist.append((t_ns, {}))  # CPU seconds since first seen
        hist.append((t_ns, dict(cpu_s)))
        while len(hist) > 2 and t_ns - hist[1][0] >= self._min_span_ns:
            hist.popleft()  # the next one is old enough to be the window's start
        base = hist[0][1]
        d: dict[int | str, float] = {}
        for pid, s in cpu_s.items():
            who = group.get(pid, OTHER)
            d[who] = d.get(who, 0.0) + max(0.0, s - base.get(pid, 0.0))
        total = sum(d.values())
        if total > 0:
            self._last_cpu_frac = {k: v / total for k, v in d.items()}
        return self._last_cpu_frac or {}

    def _split_gpu(self, t_ns, g: GpuTick, group, ranks, charged) -> None:
        if g.sm_by_pid:
            by: dict[int | str, float] = {}
            for pid, sm in g.sm_by_pid.items():
                who = group.get(pid, OTHER)
                by[who] = by.get(who, 0.0) + sm
            total = sum(by.values())
            if total > 0:
                for r in ranks:
                    if by.get(r):
                        charged[r] += g.energy_j * by[r] / total
                        self._method(t_ns, r, GPU_BY_PROCESS, None)
                return
        if g.on_device:
            holders = {group.get(p, OTHER) for p in g.on_device}
            if len(holders) == 1 and (only := next(iter(holders))) in ranks:
                charged[only] += g.energy_j
                self._method(t_ns, only, GPU_SOLE, None)
                return
        mapped = [r for r, x in ranks.items() if x.device is not None and x.device == g.index]
        if mapped:
            for r in mapped:
                charged[r] += g.energy_j / len(mapped)
                self._method(t_ns, r, GPU_BY_DEVICE_MAP,
                             f"no per-process utilisation on {g.source_id}: its energy goes to the rank(s) "
                             "that report it as their device")
            return
        reason = (f"no per-process utilisation on {g.source_id} and no rank reports it as its device, "
                  "so its energy is split equally")
        for r in ranks:
            charged[r] += g.energy_j / len(ranks)
            self._method(t_ns, r, GPU_EQUAL, reason)

    def _method(self, t_ns: int, rank: int, method: str, reason: str | None) -> None:
        x = self._ranks.get(rank)
        if x is None or method in x.methods:
            return
        x.methods.add(method)
        if self.on_event is not None:
            text = f"rank {rank}'s energy: {method}" + (f" — {reason}" if reason else "")
            self.on_event(EventRecord(t_ns, "rank-energy", text,
                                      {"rank": rank, "pid": x.pid, "method": method, "reason": reason}))

    # ---- reading back (agent link thread) --------------------------------------------------------
    def methods(self) -> dict[int, list[str]]:
        with self._lock:
            return {r: sorted(x.methods) for r, x in self._ranks.items()}


def _groups(cpu_s_by_pid: Mapping[int, float], parents: Mapping[int, int | None],
            rank_of_pid: Mapping[int, int]) -> dict[int, int]:
    """Member PID → the rank whose process is its nearest ancestor (itself included); members
    under no rank are left out (they are "other")."""
    out: dict[int, int] = {}
    for pid in set(cpu_s_by_pid) | set(rank_of_pid):
        p, seen = pid, 0
        while p is not None and seen < 64:
            if p in rank_of_pid:
                out[pid] = rank_of_pid[p]
                break
            p, seen = parents.get(p), seen + 1
    return out
