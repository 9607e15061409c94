"""How much of each source's energy the target is responsible for. Pure arithmetic, one place.

CPU and DRAM: the target tree's share of the machine's busy CPU time over the interval, applied
to the interval's energy ("cpu-time share"). GPU: the target's share of SM utilisation among all
processes on the device (nvmlDeviceGetProcessUtilization), applied to the energy above a
*measured* idle power ("sm share × dynamic"), or to the whole energy, labelled so, while idle
power is unknown. Every result is ≤ what was measured. The per-GPU state (driver samples,
idle stretches) lives in :mod:`wattlens.profiler.gpu_share`.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU_METHOD = "cpu-time share"
GPU_METHOD = "sm share × dynamic (above idle)"
GPU_SOLE_METHOD = "sole GPU process × dynamic (above idle)"
GPU_TOTAL_METHOD = "sm share × total (idle power unknown)"
GPU_SOLE_TOTAL_METHOD = "sole GPU process × total (idle power unknown)"


@dataclass(frozen=True, slots=True)
class Attributed:
    energy_j: float | None
    share: float | None
    method: str
    reason: str | None = None


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def cpu_share(target_cpu_delta_s: float, system_busy_delta_s: float) -> float | None:
    """The target tree's fraction of busy CPU time; None when the machine recorded no busy time
    (the clock tick did not advance) — there is nothing to share then."""
    if system_busy_delta_s <= 0.0:
        return None if target_cpu_delta_s <= 0.0 else 1.0
    return _clip01(target_cpu_delta_s / system_busy_delta_s)


def attribute_cpu(energy_delta_j: float | None, share: float | None) -> Attributed:
    if energy_delta_j is None:
        return Attributed(None, share, CPU_METHOD, "no energy measured for this interval")
    if share is None:
        return Attributed(0.0, None, CPU_METHOD, None) if energy_delta_j == 0 else Attributed(
            None, None, CPU_METHOD, "no CPU time advanced in this interval")
    return Attributed(energy_delta_j * share, share, CPU_METHOD)


def gpu_share(target_sm_pct: float, all_sm_pct: float) -> float:
    """Target's fraction of the SM utilisation summed over every process on the device."""
    if all_sm_pct <= 0.0:
        return 0.0
    return _clip01(target_sm_pct / all_sm_pct)


def gpu_method(*, sole: bool, idle_known: bool) -> str:
    if idle_known:
        return GPU_SOLE_METHOD if sole else GPU_METHOD
    return GPU_SOLE_TOTAL_METHOD if sole else GPU_TOTAL_METHOD


def attribute_gpu(dynamic_j: float | None, share: float | None, *, sole: bool = False,
                  idle_known: bool = True, reason: str | None = None) -> Attributed:
    """share × ``dynamic_j`` (the interval's energy above idle, or its whole energy when idle
    power is unknown: the method says which). ``share`` None → not attributable (reason why)."""
    method = gpu_method(sole=sole, idle_known=idle_known)
    if dynamic_j is None:
        return Attributed(None, share, method, reason or "no energy measured for this interval")
    if share is None:
        return Attributed(None, None, method, reason or "per-process GPU utilisation unavailable")
    return Attributed(dynamic_j * share, share, method)
