"""Power sources, one file per kind, and ``discover()`` which says what can be measured here."""

from __future__ import annotations

from dataclasses import dataclass, field

from wattlens.profiler.sources.base import PowerSource, Reading, Unavailable, source_dict

__all__ = ["Discovery", "PowerSource", "Reading", "Unavailable", "discover", "source_dict"]


@dataclass
class Discovery:
    usable: list = field(default_factory=list)  # PowerSource objects, counters first
    unavailable: list[Unavailable] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "usable": [source_dict(s, **s.describe()) for s in self.usable],
            "unavailable": [
                {"id": u.source_id, "kind": u.kind, "reason": u.reason, "fix": u.fix}
                for u in self.unavailable
            ],
        }


def discover(*, gpu: bool = True, cpu_tdp_w: float | None = None) -> Discovery:
    """The usable sources on this machine, and for each unusable one why and how to fix it.

    CPU: RAPL package/DRAM counters when readable, else the estimated CPU model (the model is used
    only when no RAPL package domain is usable, so CPU energy is never counted twice).
    """
    from wattlens.profiler.sources.cpu_model import CpuModelSource, build_model
    from wattlens.profiler.sources.rapl import discover_rapl

    found = Discovery()
    if gpu:
        from wattlens.profiler.sources.nvml import discover_nvml

        gpus, problems = discover_nvml()
        found.usable.extend(gpus)
        found.unavailable.extend(Unavailable(i, "gpu", r, f) for i, r, f in problems)
    rapl, problems = discover_rapl()
    found.usable.extend(rapl)
    found.unavailable.extend(
        Unavailable(i, "dram" if "dram" in i else "cpu", r, f) for i, r, f in problems
    )
    if not any(s.kind == "cpu" for s in rapl):
        found.usable.append(CpuModelSource(build_model(cpu_tdp_w)))
    return found
