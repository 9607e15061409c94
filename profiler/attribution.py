"""How much of each source's energy the target is responsible for. Pure arithmetic, one place.

CPU and DRAM: the target tree's share of the machine's busy CPU time over the interval, applied
to the interval's energy ("cpu-time share"). GPU: the target's share of SM utilisation among all
processes on the device (nvmlDeviceGetProcessUtilization), applied to the energy above idle
("sm share × dynamic"); idle power is reported apart. Every result is ≤ what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

CPU_METHOD = "cpu-time share"
GPU_METHOD = "sm share × dynamic (above idle)"
GPU_SOLE_METHOD = "sole GPU process × dynamic (above idle)"


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


def attribute_gpu(energy_delta_j: float | None, duration_s: float, idle_power_w: float | None,
                  share: float | None, *, sole: bool = False, reason: str | None = None) -> Attributed:
    """share × (energy above idle). ``share`` None → not attributable (reason says why)."""
    method = GPU_SOLE_METHOD if sole else GPU_METHOD
    if energy_delta_j is None:
        return Attributed(None, share, method, "no energy measured for this interval")
    if share is None:
        return Attributed(None, None, method, reason or "per-process GPU utilisation unavailable")
    idle_j = (idle_power_w or 0.0) * duration_s
    dynamic_j = max(energy_delta_j - idle_j, 0.0)
    return Attributed(dynamic_j * share, share, method)
