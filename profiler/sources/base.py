"""What every power source is: a protocol, its reading, and the one trapezoid integrator.

A source reports *cumulative* energy since its first read (``energy_j``) and the power over the
last interval (``power_w``). Counter sources (NVML total energy, RAPL energy_uj) read energy
directly; polled sources integrate power by trapezoid; estimated sources integrate a model.
A value that cannot be had is ``None`` and ``reason`` says why — never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from wattlens.profiler.records import Method, SourceKind


@dataclass(frozen=True, slots=True)
class Reading:
    t_ns: int
    energy_j: float | None  # cumulative since this source's first read
    power_w: float | None  # mean power over the last interval (or instant for polled)
    extra: dict[str, float | None] = field(default_factory=dict)  # util_pct, mem_used_bytes ...
    reason: str | None = None  # why energy_j/power_w is None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A source that cannot be used here, with why and how to fix it (what `doctor` prints)."""

    source_id: str
    kind: str
    reason: str
    fix: str


@runtime_checkable
class PowerSource(Protocol):
    id: str  # "nvml:0", "rapl:package-0", "cpu-model"
    kind: SourceKind  # gpu | cpu | dram
    method: Method  # counter | polled | estimated
    label: str  # human name: "NVIDIA H100 (GPU 0)", "CPU package 0 (RAPL)"

    def read(self, t_ns: int) -> Reading: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


def source_dict(source, **more) -> dict:
    """A source (a PowerSource, or a stored source dict) as ``{"id", "kind", "method", "label"}``
    plus ``more``: the one spelling of a source in summaries, stores, views and reports."""
    get = source.get if isinstance(source, dict) else (lambda k: getattr(source, k))
    return {"id": get("id"), "kind": get("kind"), "method": get("method"), "label": get("label"), **more}


class TrapezoidIntegrator:
    """Cumulative energy from power samples: E += (P0 + P1) / 2 · Δt. One place for this rule."""

    __slots__ = ("energy_j", "_last_t_ns", "_last_power_w")

    def __init__(self) -> None:
        self.energy_j = 0.0
        self._last_t_ns: int | None = None
        self._last_power_w: float | None = None

    def add(self, t_ns: int, power_w: float) -> float:
        if self._last_t_ns is not None and self._last_power_w is not None and t_ns > self._last_t_ns:
            dt_s = (t_ns - self._last_t_ns) / 1e9
            self.energy_j += (self._last_power_w + power_w) / 2.0 * dt_s
        self._last_t_ns = t_ns
        self._last_power_w = power_w
        return self.energy_j


class CounterDelta:
    """Turns a wrapping hardware energy counter into cumulative joules since the first read."""

    __slots__ = ("_first", "_last", "_wraps", "_range", "_last_t_ns", "energy_j", "power_w")

    def __init__(self, range_j: float | None) -> None:
        self._first: float | None = None
        self._last: float | None = None
        self._wraps = 0
        self._range = range_j
        self._last_t_ns: int | None = None
        self.energy_j = 0.0
        self.power_w: float | None = None

    def add(self, t_ns: int, counter_j: float) -> float:
        if self._first is None:
            self._first = counter_j
        elif self._last is not None and counter_j < self._last:
            if self._range:
                self._wraps += 1
            else:  # a counter that went backwards without a known range: restart from here
                self._first = counter_j - self.energy_j
        wrapped = self._wraps * (self._range or 0.0)
        energy_j = counter_j + wrapped - self._first
        if self._last_t_ns is not None and t_ns > self._last_t_ns:
            self.power_w = (energy_j - self.energy_j) / ((t_ns - self._last_t_ns) / 1e9)
        self.energy_j = energy_j
        self._last = counter_j
        self._last_t_ns = t_ns
        return energy_j
