"""In-memory time series for live views and energy look-ups: append from the sampler thread,
snapshot copies from any other thread. Rate-limit the drawing, never the recording: buffers keep
every sample up to ``max_points`` per series (then the oldest half is dropped; the store has all).
"""

from __future__ import annotations

import threading

import numpy as np

from wattlens.profiler import figures
from wattlens.profiler.records import SamplePoint


class SeriesBuffer:
    __slots__ = ("_t", "_v", "_n", "_max", "_lock")

    def __init__(self, capacity: int = 4096, max_points: int = 2_000_000):
        self._t = np.empty(capacity, dtype=np.int64)
        self._v = np.empty(capacity, dtype=np.float64)
        self._n = 0
        self._max = max_points
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def append(self, t_ns: int, value: float) -> None:
        with self._lock:
            if self._n == len(self._t):
                if self._n >= self._max:
                    keep = self._n // 2
                    self._t[:keep] = self._t[self._n - keep : self._n]
                    self._v[:keep] = self._v[self._n - keep : self._n]
                    self._n = keep
                else:
                    new_cap = min(self._max, 2 * len(self._t))
                    self._t = np.resize(self._t, new_cap)
                    self._v = np.resize(self._v, new_cap)
            self._t[self._n] = t_ns
            self._v[self._n] = value
            self._n += 1

    def snapshot(self, since_t_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            t = self._t[: self._n]
            v = self._v[: self._n]
            if since_t_ns is not None:
                i = int(np.searchsorted(t, since_t_ns, side="left"))
                t, v = t[i:], v[i:]
            return t.copy(), v.copy()

    def last(self) -> tuple[int, float] | None:
        with self._lock:
            if self._n == 0:
                return None
            return int(self._t[self._n - 1]), float(self._v[self._n - 1])

    def energy_between(self, t0_ns: int, t1_ns: int, *, since_baseline: bool = False) -> float | None:
        """``figures.energy_between`` over this (cumulative) buffer, without copying it."""
        with self._lock:
            return figures.energy_between(self._t[: self._n], self._v[: self._n], t0_ns, t1_ns,
                                          since_baseline=since_baseline)

    def value_at(self, t_ns: int) -> float | None:
        """Linear interpolation inside the recorded span; None outside it (not known yet)."""
        with self._lock:
            if self._n == 0:
                return None
            t = self._t[: self._n]
            if t_ns < t[0] or t_ns > t[-1]:
                return None
            return float(np.interp(t_ns, t, self._v[: self._n]))


class RingBuffers:
    """A SeriesBuffer per series key; usable directly as a sampler sink."""

    def __init__(self, max_points: int = 2_000_000):
        self._buffers: dict[str, SeriesBuffer] = {}
        self._max = max_points
        self._lock = threading.Lock()

    def __call__(self, points: list[SamplePoint]) -> None:
        for p in points:
            buf = self._buffers.get(p.key)
            if buf is None:
                with self._lock:
                    buf = self._buffers.setdefault(p.key, SeriesBuffer(max_points=self._max))
            buf.append(p.t_ns, p.value)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._buffers)

    def get(self, key: str) -> SeriesBuffer | None:
        return self._buffers.get(key)

    def snapshot(self, keys: list[str] | None = None, since_t_ns: int | None = None):
        keys = keys if keys is not None else self.keys()
        return {k: self._buffers[k].snapshot(since_t_ns) for k in keys if k in self._buffers}
