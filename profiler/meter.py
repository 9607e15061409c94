"""Measurement windows for code that measures itself (the advisor's A/B runs, benchmarks).

``EnergyMeter`` runs a Sampler over the usable sources while at least one window is open, and
``end_window`` returns a frozen ``Measurement`` from the cumulative series interpolated at the
window's ends — the same sources and the same arithmetic as a profiling session.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from wattlens.profiler.process import Target
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.summary import energy_between


@dataclass(frozen=True)
class Measurement:
    duration_s: float
    energy_j: dict[str, float | None]  # per source id
    methods: dict[str, str]  # per source id: counter | polled | estimated
    attributed_energy_j: float | None  # attributed to the meter's pid over all sources
    attributed_method: str
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def total_energy_j(self) -> float | None:
        values = [v for v in self.energy_j.values() if v is not None]
        return sum(values) if values else None

    @property
    def method(self) -> str:
        return "+".join(sorted(set(self.methods.values())))


class EnergyMeter:
    def __init__(self, sources=None, *, pid: int | None = None, interval_s: float = 0.05,
                 known_idle_w: dict[str, float] | None = None):
        if sources is None:
            from wattlens.profiler.sources import discover

            sources = discover().usable
        self.sources = list(sources)
        self.pid = pid if pid is not None else os.getpid()
        self.interval_s = interval_s
        self.known_idle_w = known_idle_w  # GPU source id → idle W remembered (Store.gpu_idle)
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()
        self._rings: RingBuffers | None = None
        self._sampler: Sampler | None = None

    def begin_window(self, key: str) -> None:
        with self._lock:
            if key in self._open:
                raise ValueError(f"measurement window '{key}' is already open")
            if self._sampler is None:
                self._rings = RingBuffers()
                self._sampler = Sampler(self.sources, interval_s=self.interval_s,
                                        target=Target(self.pid), sinks=[self._rings],
                                        known_idle_w=self.known_idle_w)
                self._sampler.start()
            self._open[key] = _tick_time(self._sampler)

    def end_window(self, key: str) -> Measurement:
        with self._lock:
            if key not in self._open:
                raise ValueError(f"no open measurement window '{key}'")
            t0 = self._open.pop(key)
            t1 = _tick_time(self._sampler)
            rings, sampler = self._rings, self._sampler
            energy: dict[str, float | None] = {}
            methods: dict[str, str] = {}
            reasons: dict[str, str] = {}
            for s in self.sources:
                methods[s.id] = s.method
                energy[s.id] = _between(rings, f"{s.id}/energy_j", t0, t1)
                if energy[s.id] is None:
                    reasons[s.id] = sampler.reasons.get(f"{s.id}/energy_j", "no energy reading in this window")
            attributed = _between(rings, "target/energy_j", t0, t1)
            if attributed is None:
                reasons["attributed"] = "no attributed reading in this window"
            if not self._open:
                sampler.stop()
                self._sampler, self._rings = None, None
        kinds = {s.kind for s in self.sources}
        rule = "cpu-time share" if kinds <= {"cpu", "dram"} else "cpu-time share / sm share"
        return Measurement(duration_s=(t1 - t0) / 1e9, energy_j=energy, methods=methods,
                           attributed_energy_j=attributed,
                           attributed_method=f"{rule} × {'+'.join(sorted(set(methods.values())))}",
                           reasons=reasons)

    def close(self) -> None:
        with self._lock:
            self._open.clear()
            if self._sampler is not None:
                self._sampler.stop()
                self._sampler = None


def _tick_time(sampler: Sampler) -> int:
    """Take a reading now, so the window edge is a real sample and not an extrapolation."""
    sampler.tick()
    return sampler.last_tick_ns


def _between(rings: RingBuffers, key: str, t0: int, t1: int) -> float | None:
    buf = rings.get(key)
    if buf is None:
        return None
    t, v = buf.snapshot()
    return energy_between(t, v, t0, t1)
