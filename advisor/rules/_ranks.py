"""What the rank rules share: a rank's power while it waits in collectives, with its source."""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures

MEAN_POWER_WAIT = ("estimated as the rank's mean power over its step (step energy ÷ step time): "
                   "waiting counted as costly as working, the same estimate as the straggler rule's")


def gpu_index(device: str | None) -> int | None:
    """``cuda:N`` → N (the NVML index, unless CUDA_VISIBLE_DEVICES reorders devices)."""
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


def wait_power_w(f: SessionFeatures, rank: dict) -> tuple[float | None, str]:
    """(W, where it comes from) the rank draws while it waits: its GPU's measured idle power when
    it runs on a GPU whose idle power is known, else its mean power (an estimate); None when the
    rank has no step energy."""
    idx = gpu_index(rank.get("device"))
    if idx is not None:
        gpu = next((g for g in f.gpus if g.source_id == f"nvml:{idx}"), None)
        if gpu is not None and gpu.idle_power_w is not None:
            return gpu.idle_power_w, f"measured idle power of {gpu.source_id} (its device)"
    e, t = rank.get("energy_per_step_j"), rank.get("mean_step_s")
    if e is None or not t:
        return None, "no step energy for this rank"
    return e / t, MEAN_POWER_WAIT
