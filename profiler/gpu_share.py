"""Per-GPU attribution state: idle power measured from stretches with no GPU process, the
driver's per-process utilisation samples carried forward, and PIDs mapped to the host's.

What NVML gives and what this module does with it:

- ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`` returns the samples newer than
  the timestamp (µs, NVML's clock) and NOT_FOUND when there are none; the driver samples every
  1/6 s to 1 s, so most 100-ms ticks see NOT_FOUND. We pass the newest timestamp NVML gave us,
  and between samples carry the last shares forward. Before the first sample the interval's
  energy waits ("no sample yet", not "idle") and is shared out by the first sample.
- Idle power is the mean power over a stretch of at least ``min_idle_stretch_s`` with no
  process holding a context on the device (compute, graphics or MPS list empty), the slope of
  energy against time over the whole stretch so the counter's update granularity (0-W ticks)
  cannot pull it down; or the value remembered for this GPU from an earlier session; or unknown — then the
  target gets its share of the *total* energy and the method says so.
- Energy above idle is kept per interval with a bounded carry: a tick where the counter did not
  move (ΔE < idle·Δt) lowers the next ticks instead of being clipped to 0 and lost.
- Under MIG the driver has no per-process utilisation and the board's counter covers every
  instance: nothing is charged to a "sole process"; None with the reason.
- NVML reports host PIDs: the target's PIDs go through :class:`PidNamespace`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wattlens.profiler import attribution
from wattlens.profiler.pidns import PidNamespace

MIG_REASON = ("MIG mode is on: NVML has no per-process utilisation under MIG and the energy counter "
              "covers every GPU instance, so the target's share cannot be measured")
SAMPLE_HORIZON_US = 1_000_000
NO_SAMPLE_REASON = "no per-process utilisation sample from the driver yet"


@dataclass(slots=True)
class IdleStretch:
    """The mean power over a run of ticks with no GPU process: the least-squares slope of
    cumulative energy against time. A counter that refreshes every 20-200 ms makes each reading
    late by a varying amount (0-W ticks, then a catch-up); the slope over all the stretch's
    points is not pulled down by them, and is steadier than the two end points alone."""

    t0_ns: int | None = None
    e_j: float = 0.0  # cumulative energy inside the stretch
    n: int = 0
    st: float = 0.0
    se: float = 0.0
    stt: float = 0.0
    ste: float = 0.0
    span_s: float = 0.0

    def add(self, t_ns: int, d_e_j: float) -> None:
        if self.t0_ns is None:
            self.t0_ns = t_ns
        self.e_j += d_e_j
        t = (t_ns - self.t0_ns) / 1e9
        self.n += 1
        self.st += t
        self.se += self.e_j
        self.stt += t * t
        self.ste += t * self.e_j
        self.span_s = t

    def power_w(self, min_s: float) -> tuple[float, float] | None:
        """(W, stretch s) once the stretch is at least ``min_s`` long, else None."""
        if self.span_s < min_s or self.n < 3:
            return None
        den = self.n * self.stt - self.st * self.st
        if den <= 0:
            return None
        return (self.n * self.ste - self.st * self.se) / den, self.span_s


class GpuTracker:
    """The target's energy on one GPU, interval by interval."""

    def __init__(self, device, *, pidns: PidNamespace, known_idle_w: float | None = None,
                 min_idle_stretch_s: float = 2.0, max_carry_s: float = 1.0):
        self.device = device
        self.pidns = pidns
        self.idle_w = known_idle_w
        self.idle_source = "stored" if known_idle_w is not None else None
        self.measured_idle: tuple[float, float] | None = None  # (W, stretch s) seen this session
        self.min_idle_stretch_s = min_idle_stretch_s
        self.max_carry_s = max_carry_s
        self._stretch = IdleStretch()
        self._carry_j = 0.0
        self.last_seen_us = 0
        self.shares: dict[int, float] | None = None  # host PID -> SM % of the last driver sample
        self.util_supported = True
        self._pending_j = 0.0  # energy waiting for the first sample
        self.notes: dict[str, str] = {}  # flags worth telling the user once (MPS sums)
        self.last_procs: dict | None = None  # host PID -> memory of the last tick (the per-rank split)
        mig, _ = device.mig_enabled()
        self.mig = bool(mig)

    # ---- idle ----------------------------------------------------------------------------
    def _observe_idle(self, t_ns: int, procs: dict | None, d_e: float | None) -> bool:
        """Feed the stretch; True when a new idle figure was measured."""
        if procs is None or procs or d_e is None:
            self._stretch = IdleStretch()
            return False
        self._stretch.add(t_ns, d_e)
        got = self._stretch.power_w(self.min_idle_stretch_s)
        if got is None:
            return False
        self.measured_idle = got
        self.idle_w = got[0]
        self.idle_source = "measured"
        return True

    def _dynamic_j(self, d_e: float, dt_s: float) -> float:
        if self.idle_w is None:
            return d_e
        raw = d_e - self.idle_w * dt_s + self._carry_j
        if raw >= 0.0:
            self._carry_j = 0.0
            return raw
        self._carry_j = max(raw, -self.idle_w * self.max_carry_s)
        return 0.0

    # ---- shares --------------------------------------------------------------------------
    def _update_shares(self) -> str | None:
        if not self.util_supported:
            return None
        samples, reason = self.device.process_samples(self.last_seen_us)
        if samples is None:
            self.util_supported = False
            return reason
        if samples:
            newest = max(ts for _, _, ts in samples)
            self.last_seen_us = newest
            shares: dict[int, float] = {}
            for pid, sm, ts in samples:
                # the first call (timestamp 0) returns the driver's whole buffer: only the newest
                # second of it describes now (1 s is the slowest driver cadence)
                if ts > newest - SAMPLE_HORIZON_US:
                    shares[pid] = shares.get(pid, 0.0) + sm
            self.shares = shares
        return None

    def step(self, t_ns: int, d_e: float | None, dt_s: float,
             target_pids: set[int]) -> tuple[attribution.Attributed, float | None, bool, str | None]:
        """(the target's energy this interval, its GPU memory in bytes or None, whether idle
        power was newly measured, the reason memory is None)."""
        procs, preason = self.device.running_processes()
        self.last_procs = procs
        new_idle = self._observe_idle(t_ns, procs, d_e)
        idle_known = self.idle_w is not None
        host, ns_reason = self.pidns.to_host(target_pids)
        ureason = self._update_shares()
        if host is None:
            return attribution.attribute_gpu(None, None, reason=ns_reason), None, new_idle, ns_reason
        ours = set(host.values())
        mem = None
        mem_reason = preason
        if procs is not None:
            known = [procs[p] for p in procs if p in ours and procs[p] is not None]
            hidden = any(p in ours and procs[p] is None for p in procs)
            mem = None if hidden else float(sum(known))
            mem_reason = "the driver hides per-process memory (WDDM / no permission)" if hidden else None
        if d_e is None:
            return attribution.attribute_gpu(None, None), mem, new_idle, mem_reason
        if self.mig:
            return attribution.attribute_gpu(None, None, reason=MIG_REASON), mem, new_idle, mem_reason
        dyn = self._dynamic_j(d_e, dt_s)
        share, sole, reason = self._share(procs, ours, ureason or preason)
        if share is None and reason == NO_SAMPLE_REASON:
            self._pending_j += dyn
            return attribution.attribute_gpu(dyn, None, idle_known=idle_known, reason=reason), mem, \
                new_idle, mem_reason
        if share is not None and self._pending_j and self.shares is not None:
            dyn += self._pending_j  # the first sample shares out the wait
            self._pending_j = 0.0
        return attribution.attribute_gpu(dyn, share, sole=sole, idle_known=idle_known, reason=reason), \
            mem, new_idle, mem_reason

    def _share(self, procs: dict | None, ours: set[int], reason: str | None) -> tuple[float | None, bool, str | None]:
        if self.shares is not None:
            total = sum(self.shares.values())
            if total > 100.0:
                self.notes["mps"] = (f"per-process SM utilisation summed to {total:.0f} % (MPS clients "
                                     "share SMs); shares were normalised to 100 %")
            mine = sum(v for p, v in self.shares.items() if p in ours)
            return attribution.gpu_share(mine, total), False, None
        if procs is not None:
            on_gpu = [p for p in procs if p in ours]
            if not on_gpu:
                return 0.0, False, None  # the target holds no context on this GPU
            if len(on_gpu) == len(procs):
                return 1.0, True, None
        if self.util_supported:
            return None, False, NO_SAMPLE_REASON
        return None, False, reason or "per-process GPU utilisation unavailable"
