"""Estimated CPU power where no counter exists: TDP × load curve over system CPU utilisation.

P(u) = P_idle + (TDP − P_idle) · u, with P_idle = idle_fraction · TDP and u the busy fraction of
all logical CPUs this machine sees. TDP comes from ``resources/cpu_tdp.json`` (scaled to the
visible share of the package), from a user override (``WATTLENS_CPU_TDP_W`` or the setting), or
from a stated per-thread default for unknown CPUs (never below the table's floor,
``default_min_w``, which the stated basis then names). Everything it produces is labelled
``estimated``; ``describe()`` says where the TDP came from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources

import psutil

from wattlens.profiler.process import system_cpu_s as _busy_and_total_s
from wattlens.profiler.sources.base import Reading, TrapezoidIntegrator


@dataclass(frozen=True)
class CpuPowerModel:
    model_name: str
    tdp_w: float
    idle_w: float
    tdp_source: str  # one line: where the TDP came from

    def power_w(self, busy_fraction: float) -> float:
        u = min(max(busy_fraction, 0.0), 1.0)
        return self.idle_w + (self.tdp_w - self.idle_w) * u


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _table() -> dict:
    text = resources.files("wattlens.resources").joinpath("cpu_tdp.json").read_text()
    return json.loads(text)


def build_model(tdp_override_w: float | None = None, model_name: str | None = None,
                visible_threads: int | None = None) -> CpuPowerModel:
    table = _table()
    name = model_name or cpu_model_name()
    threads = visible_threads or psutil.cpu_count(logical=True) or 1
    idle_fraction = float(table.get("idle_fraction", 0.3))
    env = os.environ.get("WATTLENS_CPU_TDP_W")
    if tdp_override_w is None and env:
        try:
            tdp_override_w = float(env)
        except ValueError:
            tdp_override_w = None
    if tdp_override_w is not None and tdp_override_w > 0:
        return CpuPowerModel(name, tdp_override_w, idle_fraction * tdp_override_w,
                             f"user override: TDP {tdp_override_w:g} W")
    for entry in table["cpus"]:
        if re.search(entry["pattern"], name, re.IGNORECASE):
            scale = min(1.0, threads / float(entry["threads"]))
            tdp = float(entry["tdp_w"]) * scale
            src = f"table: {entry['pattern']} TDP {entry['tdp_w']} W"
            if scale < 1.0:
                src += f" × {threads}/{entry['threads']} visible logical CPUs"
            return CpuPowerModel(name, tdp, idle_fraction * tdp, src)
    per_thread = float(table["default_w_per_thread"])
    floor_w = float(table["default_min_w"])
    per_threads_w = per_thread * threads
    tdp = max(floor_w, per_threads_w)
    # the basis states how the TDP used was obtained, floor included (it is the figure reports
    # show as the maximum power)
    basis = f"default {per_thread:g} W per logical CPU × {threads} = {per_threads_w:g} W"
    if tdp > per_threads_w:
        basis += f", raised to the {floor_w:g} W floor"
    return CpuPowerModel(
        name, tdp, idle_fraction * tdp,
        f"unknown CPU '{name}': {basis} "
        "(set WATTLENS_CPU_TDP_W to your CPU's TDP for a better estimate)",
    )


class CpuModelSource:
    """The estimated CPU source (id ``cpu-model``, method ``estimated``)."""

    id = "cpu-model"
    kind = "cpu"
    method = "estimated"

    def __init__(self, model: CpuPowerModel | None = None):
        self.model = model or build_model()
        self.label = f"CPU (estimated from TDP, {self.model.model_name})"
        self._integrator = TrapezoidIntegrator()
        self._last: tuple[float, float] = _busy_and_total_s()  # baseline for the first read
        self.busy_fraction: float | None = None

    def read(self, t_ns: int) -> Reading:
        busy, total = _busy_and_total_s()
        if total <= self._last[1]:  # clock tick not advanced yet: keep the last fraction
            u = self.busy_fraction if self.busy_fraction is not None else 0.0
        else:
            u = (busy - self._last[0]) / (total - self._last[1])
        self._last = (busy, total)
        self.busy_fraction = u
        power_w = self.model.power_w(u)
        return Reading(t_ns, self._integrator.add(t_ns, power_w), power_w, {"util_pct": 100.0 * u})

    def describe(self) -> dict:
        return {
            "model_name": self.model.model_name,
            "tdp_w": self.model.tdp_w,
            "idle_w": self.model.idle_w,
            "tdp_source": self.model.tdp_source,
            "curve": "P = idle + (TDP - idle) * busy_fraction",
        }

    def close(self) -> None:
        pass
