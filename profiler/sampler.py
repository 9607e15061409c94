"""The Sampler: one thread that reads every source at a fixed interval, attributes energy to the
target, and hands batches of SamplePoints to its sinks (the StoreWriter's queue, ring buffers).

Series keys (units in names):
  ``<source>/power_w``, ``<source>/energy_j`` (cumulative), ``<source>/util_pct``,
  ``<source>/mem_used_bytes``; with a target: ``target/<source>/power_w``,
  ``target/<source>/energy_j`` (cumulative), ``target/<gpu>/mem_used_bytes``, ``target/energy_j`` (all sources),
  ``target/power_w`` and ``target/cpu_pct`` (percent of one core).
``target/<source>/power_w`` is the target's share × the source's power reading stored at the same
timestamp (for a GPU with a known idle, × the reading above idle), and ``target/power_w`` their
sum, so at every timestamp the target's power is at most the machine power it was attributed
from (``invariants.check_power_within``); the energies stay share × each interval's energy.
Idle GPU power is ``<source>/idle_power_w``: measured over a stretch with no GPU process, or the
value remembered for that GPU from an earlier session (``known_idle_w``), never the session
minimum (see :mod:`wattlens.profiler.gpu_share`). Where a GPU's energy covers the CPU too
(GH200), CPU sources are left out of ``target/energy_j`` so nothing is counted twice.

Callers may ask for a tick at any moment (a step's end, a measurement window's edge), so two ticks
can be a millisecond apart, and the machine's busy time (/proc/stat) advances in 10-ms clock ticks
per CPU (the target's own CPU time is read to the ns where the kernel allows:
``process.process_cpu_s``). The target's CPU rate and CPU share are therefore measured over spans
of at least ``min_cpu_span_s`` (most of one interval): a shorter tick reuses the share of the last
full span and stores no CPU percentage.
Every tick passes the checks in ``invariants.py`` before anything is stored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from wattlens.profiler import attribution, invariants
from wattlens.profiler.gpu_share import GpuTracker
from wattlens.profiler.pidns import PidNamespace
from wattlens.profiler.process import Target, logical_cpus, system_cpu_s
from wattlens.profiler.records import EventRecord, SamplePoint, SeriesSpec

log = logging.getLogger(__name__)

_CLOCK_TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)  # /proc CPU times' unit

Sink = Callable[[list[SamplePoint]], None]
EventSink = Callable[[EventRecord], None]


def _reading_note(src) -> str:
    """For a polled GPU: which NVML reading its power is (power.draw may be a 1-s average)."""
    reading = getattr(getattr(src, "device", None), "power_reading", None)
    return f" — {reading}" if src.method == "polled" and isinstance(reading, str) else ""


class Sampler:
    def __init__(self, sources: Sequence, *, interval_s: float = 0.1, target: Target | None = None,
                 sinks: Sequence[Sink] = (), known_idle_w: dict[str, float] | None = None,
                 pidns: PidNamespace | None = None, clock_ns: Callable[[], int] | None = None,
                 on_event: EventSink | None = None, n_logical_cpus: int | None = None,
                 min_cpu_span_s: float | None = None):
        if not (0 < interval_s < float("inf")):  # also refuses NaN
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        self.sources = list(sources)
        self.interval_s = interval_s
        self.target = target
        self.sinks = list(sinks)
        self.on_event = on_event  # impossible values found by the per-tick checks go here
        self.n_logical_cpus = n_logical_cpus or logical_cpus()
        span_s = 0.8 * interval_s if min_cpu_span_s is None else min_cpu_span_s
        self._min_cpu_span_ns = int(span_s * 1e9)
        self._full_share_cpu: float | None = None  # the share over the last full CPU span
        self._last_stored: dict[str, float] = {}  # cumulative series: last value stored
        self.violations: dict[str, int] = {}  # invariant check → how many ticks failed it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: dict[str, tuple[int, float | None]] = {}
        self._target_energy_j: dict[str, float] = {s.id: 0.0 for s in self.sources}
        self._source_since_j: dict[str, float] = {s.id: 0.0 for s in self.sources}  # since the first tick
        # the hardware clock (looked up at each call, so a test may patch this module's `time`);
        # a simulated one in tests of the GPU path
        self.clock_ns = clock_ns or (lambda: time.monotonic_ns())
        self._known_idle_w = dict(known_idle_w or {})
        self._pidns = pidns
        self._gpu: dict[str, GpuTracker] = {}
        # a GPU whose energy covers the CPU too (GH200): CPU sources stay out of the target's total
        self.cpu_in_gpu = [s.id for s in self.sources if s.kind == "gpu" and
                           getattr(getattr(s, "device", None), "covers_cpu", False) is True]
        self._prev_cpu: tuple[float, float, int] | None = None  # (target s, busy s, read at ns)
        self.reasons: dict[str, str] = {}  # series key → why it is missing
        self.ticks = 0
        self.last_tick_ns = 0
        self._tick_lock = threading.Lock()  # tick() may be called from the thread and by callers
        self.error: BaseException | None = None  # the last failure (of a tick or of the thread)
        # why the sampling thread ended before stop() was asked: the session must not be stored
        # as completed when it stopped measuring early (issue 9)
        self.failure: str | None = None
        # the per-rank split of a torch.distributed job (rank_energy.RankSplit), set by run mode
        self.rank_split = None

    # ---- what the sampler produces -------------------------------------------------------
    def series_specs(self) -> list[SeriesSpec]:
        specs: list[SeriesSpec] = []
        for s in self.sources:
            specs += [
                SeriesSpec(f"{s.id}/power_w", "W", s.method, s.id, f"{s.label} power" + _reading_note(s)),
                SeriesSpec(f"{s.id}/energy_j", "J", s.method, s.id, f"{s.label} energy"),
                SeriesSpec(f"{s.id}/util_pct", "%", "polled", s.id, f"{s.label} utilisation"),
            ]
            if s.kind == "gpu":
                specs += [
                    SeriesSpec(f"{s.id}/mem_used_bytes", "B", "polled", s.id, f"{s.label} memory"),
                    SeriesSpec(f"{s.id}/idle_power_w", "W", "derived", s.id,
                               f"{s.label} idle power (measured with no GPU process, or remembered "
                               "for this GPU)"),
                ]
            if self.target is not None:
                method = (attribution.gpu_method(sole=False, idle_known=s.id in self._known_idle_w)
                          if s.kind == "gpu" else attribution.CPU_METHOD)
                if s.kind == "gpu" and s.id not in self._known_idle_w:
                    method += " until idle is measured, then sm share × dynamic (above idle)"
                specs += [
                    SeriesSpec(f"target/{s.id}/power_w", "W", f"attributed: {method} × {s.method}",
                               s.id, f"target's share of {s.label}"),
                    SeriesSpec(f"target/{s.id}/energy_j", "J", f"attributed: {method} × {s.method}",
                               s.id, f"target's energy from {s.label}"),
                ]
                if s.kind == "gpu":
                    specs.append(SeriesSpec(f"target/{s.id}/mem_used_bytes", "B", "polled", s.id,
                                            f"target's memory on {s.label}"))
        if self.target is not None:
            methods = "+".join(sorted({s.method for s in self.sources}))
            specs += [
                SeriesSpec("target/energy_j", "J", f"attributed ({methods})", None, "target energy"),
                SeriesSpec("target/power_w", "W", f"attributed ({methods})", None, "target power"),
                SeriesSpec("target/cpu_pct", "%", "polled", None, "target CPU (% of one core)"),
            ]
        return specs

    # ---- thread control --------------------------------------------------------------------
    def start(self) -> None:
        self.tick()  # baseline reading: counters and integrators start here
        self._thread = threading.Thread(target=self._run, name="wattlens-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            try:
                self.tick()  # a last point at the stop time
            except Exception:  # noqa: BLE001
                log.exception("last sample failed")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - recorded; the session ends as failed
            self.error = exc
            self.failure = f"the sampler stopped ({type(exc).__name__}: {exc})"
            log.error("%s; the samples taken before are kept", self.failure)

    def _loop(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        next_ns = time.monotonic_ns() + interval_ns
        while not self._stop.is_set():
            delay_s = (next_ns - time.monotonic_ns()) / 1e9
            if delay_s > 0 and self._stop.wait(delay_s):
                break
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a failing tick must not kill the session
                self.error = exc
                log.exception("sampler tick failed")
            next_ns += interval_ns
            now = time.monotonic_ns()
            if next_ns < now:  # fell behind (suspended, overloaded): skip, do not burst
                next_ns = now + interval_ns

    # ---- one tick ------------------------------------------------------------------------------
    def tick(self) -> list[SamplePoint]:
        with self._tick_lock:
            return self._tick()

    def _tick(self) -> list[SamplePoint]:
        t_ns = self.clock_ns()
        points: list[SamplePoint] = []
        add = points.append
        target_share_cpu: float | None = None
        target_cpu_pct: float | None = None
        if self.target is not None:
            try:
                self.target.pids()  # the (at most once a second) child rescan, before the timed reads
                busy_s, _total = system_cpu_s()
                tgt_s = self.target.cpu_time_s()
            except Exception:  # noqa: BLE001 - the target vanished between checks
                busy_s, _total = system_cpu_s()
                tgt_s = self._prev_cpu[0] if self._prev_cpu else 0.0
            t_cpu_ns = self.clock_ns()  # when the CPU times were read: the rate's own clock
            if self._prev_cpu is None:
                self._prev_cpu = (tgt_s, busy_s, t_cpu_ns)
            else:
                d_tgt = tgt_s - self._prev_cpu[0]
                d_busy = busy_s - self._prev_cpu[1]
                span_ns = t_cpu_ns - self._prev_cpu[2]
                long_enough = span_ns >= self._min_cpu_span_ns
                if long_enough and self._within_resolution_of_limit(d_tgt, span_ns):
                    long_enough = False  # a saturated tree read a clock tick high: measure longer
                if long_enough:
                    target_share_cpu = attribution.cpu_share(d_tgt, d_busy)
                    self._full_share_cpu = target_share_cpu
                    target_cpu_pct = 100.0 * d_tgt / (span_ns / 1e9)
                    self._prev_cpu = (tgt_s, busy_s, t_cpu_ns)
                elif self._full_share_cpu is not None:
                    target_share_cpu = self._full_share_cpu  # too short to measure: the last span's
                else:  # no full span yet (a window edge right after start): the short one, bounded
                    target_share_cpu = attribution.cpu_share(d_tgt, d_busy)
        first = self.ticks == 0
        tick_j: dict[str, float] = {}  # source id → the target's energy this tick (for the rank split)
        target_power_w = 0.0
        machine_power_w = 0.0  # the readings target_power_w was attributed from
        target_power_known = False
        for src in self.sources:
            r = src.read(t_ns)
            sid = src.id
            if r.power_w is not None:
                add(SamplePoint(f"{sid}/power_w", t_ns, r.power_w))
            energy_j = r.energy_j
            if energy_j is not None:
                bad = invariants.check_monotonic(f"{sid}/energy_j", self._last_stored.get(sid), energy_j)
                if bad:
                    self._violation("energy-monotonic", bad, t_ns, sid)
                    energy_j = None
                else:
                    self._last_stored[sid] = energy_j
                    add(SamplePoint(f"{sid}/energy_j", t_ns, energy_j))
            elif r.reason:
                self.reasons[f"{sid}/energy_j"] = r.reason
            for name, value in r.extra.items():
                if value is not None:
                    add(SamplePoint(f"{sid}/{name}", t_ns, value))
            if first and src.kind == "gpu" and sid in self._known_idle_w:
                add(SamplePoint(f"{sid}/idle_power_w", t_ns, self._known_idle_w[sid]))
            prev_t, prev_e = self._prev.get(sid, (t_ns, None))
            if energy_j is not None or r.energy_j is None:
                self._prev[sid] = (t_ns, energy_j)
            if self.target is None or first:
                continue
            d_e = None if (energy_j is None or prev_e is None) else energy_j - prev_e
            dt_s = (t_ns - prev_t) / 1e9
            if d_e is not None:
                self._source_since_j[sid] += d_e
            if src.kind == "gpu":
                att, target_mem, new_idle_w = self._attribute_gpu(src, t_ns, d_e, dt_s)
                if target_mem is not None:
                    add(SamplePoint(f"target/{sid}/mem_used_bytes", t_ns, target_mem))
                if new_idle_w is not None:
                    add(SamplePoint(f"{sid}/idle_power_w", t_ns, new_idle_w))
            else:
                att = attribution.attribute_cpu(d_e, target_share_cpu)
            if att.energy_j is None:
                if att.reason:
                    self.reasons[f"target/{sid}/energy_j"] = att.reason
                continue
            # cumulative, not per interval: the GPU path may hold energy back until the driver's
            # next per-process sample and then share it out (gpu_share), which is one tick later
            bad = invariants.check_target_within(sid, self._target_energy_j[sid] + att.energy_j,
                                                 self._source_since_j[sid])
            if bad:
                self._violation("target-within-source", bad, t_ns, sid)
                continue
            self._target_energy_j[sid] += att.energy_j
            tick_j[sid] = att.energy_j
            add(SamplePoint(f"target/{sid}/energy_j", t_ns, self._target_energy_j[sid]))
            # the target's power: its share × the reading stored for the source at this timestamp
            # (not energy / dt, an interval average set beside a point reading: issue "target above
            # the machine"), so the two series are comparable point by point
            p_w = self._target_power_w(src, r.power_w, att)
            if p_w is None:
                self.reasons[f"target/{sid}/power_w"] = f"{sid} gave no power reading at this tick"
                continue
            bad = invariants.check_power_within(f"target/{sid}/power_w", p_w, r.power_w)
            if bad:
                self._violation("target-power-within-source", bad, t_ns, f"target/{sid}/power_w")
                continue
            add(SamplePoint(f"target/{sid}/power_w", t_ns, p_w))
            if not (self.cpu_in_gpu and src.kind != "gpu"):
                target_power_w += p_w
                machine_power_w += r.power_w
                target_power_known = True
        if self.target is not None:
            add(SamplePoint("target/energy_j", t_ns, self._target_total_j()))
            if self.rank_split is not None and not first:
                points += self._split_ranks(t_ns, tick_j)
            if target_power_known:
                bad = invariants.check_power_within("target/power_w", target_power_w, machine_power_w)
                if bad:
                    self._violation("target-power-within-source", bad, t_ns, "target/power_w")
                else:
                    add(SamplePoint("target/power_w", t_ns, target_power_w))
            if target_cpu_pct is not None:
                bad = invariants.check_cpu_pct(target_cpu_pct, self.n_logical_cpus)
                if bad:
                    self._violation("cpu-pct-limit", bad, t_ns, "target/cpu_pct")
                else:
                    add(SamplePoint("target/cpu_pct", t_ns, target_cpu_pct))
        self.ticks += 1
        self.last_tick_ns = t_ns
        for sink in self.sinks:
            sink(points)
        return points

    def _target_total_j(self) -> float:
        """The target's energy over all sources; a GPU whose counter covers the CPU (GH200)
        already holds the CPU's share, so CPU sources are left out then."""
        if not self.cpu_in_gpu:
            return sum(self._target_energy_j.values())
        return sum(self._target_energy_j[s.id] for s in self.sources if s.kind == "gpu")

    def _target_power_w(self, src, reading_w: float | None,
                        att: attribution.Attributed) -> float | None:
        """The target's power at this tick: the share it was attributed × the source's power
        reading at this tick (for a GPU, × the reading's part above idle once idle is known, as
        its energy is). None when the source gave no power reading."""
        if reading_w is None:
            return None
        share = att.share if att.share is not None else 0.0  # energy 0 with no CPU advanced
        basis_w = reading_w
        if src.kind == "gpu":
            tr = self._gpu.get(src.id)
            idle_w = tr.idle_w if tr is not None else None
            if idle_w is not None:
                basis_w = max(reading_w - idle_w, 0.0)  # dynamic power: none below idle
        return share * basis_w

    def _split_ranks(self, t_ns: int, tick_j: dict[str, float]) -> list[SamplePoint]:
        """Hand this tick's attributed energy to the per-rank split (profiler/rank_energy.py)."""
        from wattlens.profiler.rank_energy import GpuTick

        cpu = [tick_j[s.id] for s in self.sources
               if s.kind != "gpu" and s.id in tick_j and not self.cpu_in_gpu]
        gpus = []
        for s in self.sources:
            if s.kind != "gpu" or s.id not in tick_j:
                continue
            tr = self._gpu.get(s.id)
            sm = on = None
            if tr is not None:
                ours = self.target.pids()
                host, _ = tr.pidns.to_host(ours)
                if host:
                    if tr.shares is not None:
                        sm = {p: tr.shares.get(h, 0.0) for p, h in host.items()}
                    if tr.last_procs is not None:
                        on = {p for p, h in host.items() if h in tr.last_procs}
            gpus.append(GpuTick(s.id, getattr(getattr(s, "device", None), "index", None), tick_j[s.id], sm, on))
        return self.rank_split.tick(t_ns, cpu_s_by_pid=self.target.member_cpu_s(), parents=self.target.parents(),
                                    cpu_j=sum(cpu) if cpu else None, gpus=gpus,
                                    target_total_j=self._target_total_j())

    def gpu_tracker(self, src) -> GpuTracker:
        tr = self._gpu.get(src.id)
        if tr is None:
            if self._pidns is None:
                self._pidns = PidNamespace()
            tr = self._gpu[src.id] = GpuTracker(src.device, pidns=self._pidns,
                                                known_idle_w=self._known_idle_w.get(src.id))
        return tr

    def measured_idle(self) -> dict[str, tuple[float, float]]:
        """GPU source id → (idle power W, length s of the stretch it was measured over), for the
        GPUs that showed a stretch with no process this session (to remember across sessions)."""
        return {sid: tr.measured_idle for sid, tr in self._gpu.items() if tr.measured_idle is not None}

    def _attribute_gpu(self, src, t_ns: int, d_e: float | None,
                       dt_s: float) -> tuple[attribution.Attributed, float | None, float | None]:
        """The target's GPU energy for this interval, its GPU memory (bytes) when known, and a
        newly measured idle power (W) when this tick completed one."""
        tr = self.gpu_tracker(src)
        att, mem, new_idle, mem_reason = tr.step(t_ns, d_e, dt_s, self.target.pids())
        if mem is None and mem_reason:
            self.reasons[f"target/{src.id}/mem_used_bytes"] = mem_reason
        for key, note in tr.notes.items():
            self.reasons[f"{src.id}/{key}"] = note
        if self.cpu_in_gpu:
            self.reasons["target/energy_j"] = (
                f"{', '.join(self.cpu_in_gpu)}: the GPU module's energy counter covers its CPU too "
                "(GH200), so CPU sources are not added to the target's total")
        return att, mem, (tr.idle_w if new_idle else None)

    def _within_resolution_of_limit(self, d_tgt_s: float, span_ns: int) -> bool:
        """True when the tree's CPU rate over ``span_ns`` is above the machine's limit by no more
        than the counters' resolution: each member's CPU time is read in whole clock ticks, so a
        tree that kept every CPU busy can read up to one tick per member high. Such a span is
        extended (up to 10 × the minimum) rather than stored or flagged; beyond that, or above the
        resolution, the value goes to the invariant check."""
        span_s = span_ns / 1e9
        limit_s = invariants.cpu_pct_limit(self.n_logical_cpus) / 100.0 * span_s
        if d_tgt_s <= limit_s or span_ns >= 10 * self._min_cpu_span_ns:
            return False
        members = len(self.target.pids()) if self.target is not None else 1
        return d_tgt_s - limit_s <= members * _CLOCK_TICK_S

    def _violation(self, check: str, message: str, t_ns: int, key: str) -> None:
        """An impossible value was not stored: log it and record an event (the 1st, 10th, 100th...
        failure of each check, so a persistent fault does not flood the timeline)."""
        n = self.violations.get(check, 0) + 1
        self.violations[check] = n
        if str(n).rstrip("0") == "1":
            log.warning("impossible value not stored (%s, %d so far): %s", check, n, message)
            if self.on_event is not None:
                self.on_event(EventRecord(t_ns, "invariant", f"not stored: {message}",
                                          {"check": check, "key": key, "count": n}))
