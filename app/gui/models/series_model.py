"""Time series for the plots, shared by the live view (fed from ring buffers) and stored sessions
(loaded from the database): seconds since the session start, values, and what each series is.

The live feed pulls only what is new since the last pull (``RingBuffers.snapshot(since)``), so a
frame costs O(new points), not O(session length).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from wattlens.profiler import figures

SHORT_SOURCE = {"cpu-model": "CPU (TDP model)"}


@dataclass(frozen=True)
class SeriesInfo:
    key: str
    unit: str
    method: str
    label: str = ""
    source_id: str | None = None
    source_kind: str | None = None  # gpu | cpu | dram for per-source series
    source_label: str = ""

    @property
    def quantity(self) -> str:
        """The last key part: power_w, energy_j, util_pct, cpu_pct, mem_used_bytes ..."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def is_target(self) -> bool:
        return self.key.startswith("target/")


def short_source(source_id: str | None, label: str) -> str:
    if source_id in SHORT_SOURCE:
        return SHORT_SOURCE[source_id]
    return label or source_id or "?"


def method_text(method: str) -> str:
    """``"attributed: cpu-time share × estimated"`` → ``"attributed (cpu-time share) × estimated"``."""
    if method.startswith("attributed: "):
        rule, _, base = method[len("attributed: "):].partition(" × ")
        return f"attributed ({rule}) × {base}" if base else f"attributed ({rule})"
    return method


def legend_label(info: SeriesInfo) -> str:
    """What a legend entry says: whose power, from which source, measured how."""
    src = short_source(info.source_id, info.source_label)
    if info.key == "target/power_w":
        return f"target, all sources — {method_text(info.method)}"
    if info.is_target and info.quantity == "power_w":
        return f"target's share of {src} — {method_text(info.method)}"
    if info.key == "target/cpu_pct":
        return "target CPU (% of one core)"
    if info.quantity == "power_w":
        return f"{src} — {info.method}"
    if info.quantity == "util_pct":
        return f"{src} utilisation"
    if info.quantity == "idle_power_w":
        return f"{src} idle (measured with no GPU process)"
    return info.label or info.key


class _Growing:
    """An append-only float64 array with amortised doubling."""

    __slots__ = ("a", "n")

    def __init__(self, capacity: int = 256):
        self.a = np.empty(capacity, dtype=np.float64)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.a):
            self.a = np.resize(self.a, max(need, 2 * len(self.a)))
        self.a[self.n:need] = values
        self.n = need

    def view(self) -> np.ndarray:
        return self.a[: self.n]


class _MinMaxLevel:
    """The min and max samples of consecutive blocks of ``factor`` samples, extended as samples
    arrive, so a long series is drawn from 2 points per block instead of every sample.

    Each block's two extremes are kept as the real samples they are — at their own times, in
    time order — so the drawn line only joins real samples. (Drawing min then max at the block's
    first time, as pyqtgraph's 'peak' mode does, is fine below a pixel per block but draws a
    regular sawtooth that is not in the data once a block spans several pixels.)"""

    __slots__ = ("factor", "t", "v", "n")

    def __init__(self, factor: int):
        self.factor = factor
        self.t, self.v = _Growing(), _Growing()  # 2 points per block, interleaved
        self.n = 0  # complete blocks

    def update(self, t: np.ndarray, v: np.ndarray) -> None:
        f = self.factor
        done, complete = self.n, len(t) // f
        if complete > done:
            tv = t[done * f: complete * f].reshape(-1, f)
            vv = v[done * f: complete * f].reshape(-1, f)
            rows = np.arange(len(tv))
            i_min, i_max = vv.argmin(axis=1), vv.argmax(axis=1)
            first = np.minimum(i_min, i_max)
            second = np.maximum(i_min, i_max)
            pair_t = np.empty((len(tv), 2))
            pair_v = np.empty((len(tv), 2))
            pair_t[:, 0], pair_t[:, 1] = tv[rows, first], tv[rows, second]
            pair_v[:, 0], pair_v[:, 1] = vv[rows, first], vv[rows, second]
            self.t.extend(pair_t.ravel())
            self.v.extend(pair_v.ravel())
            self.n = complete


class GrowingSeries:
    """Append-only (t_s, value) arrays with amortised doubling; ``view()`` returns no copies."""

    __slots__ = ("_t", "_v", "n", "_levels")
    LEVELS = tuple(2**k for k in range(2, 13))  # blocks of 4 … 4096 samples

    def __init__(self, capacity: int = 1024):
        self._t = np.empty(capacity, dtype=np.float64)
        self._v = np.empty(capacity, dtype=np.float64)
        self.n = 0
        self._levels: list[_MinMaxLevel] | None = None

    def display(self, t0: float | None, t1: float | None, columns: int) -> tuple[np.ndarray, np.ndarray]:
        """The samples in [t0, t1] for drawing on ``columns`` pixel columns: each block's min and
        max samples (at their own times, in time order) of the coarsest level whose blocks are no
        wider than a column, plus the samples before the first and after the last whole block —
        or all samples when there are fewer than 4 per column. Every point drawn is a stored
        sample, and each column's extremes are drawn (2 to 4 points per column, so pyqtgraph's
        own downsampling has nothing left to do)."""
        t, v = self.view()
        i0 = 0 if t0 is None else int(np.searchsorted(t, t0, side="left"))
        i1 = self.n if t1 is None else int(np.searchsorted(t, t1, side="right"))
        per_column = (i1 - i0) / max(columns, 1)
        if per_column < self.LEVELS[0]:
            return t[i0:i1], v[i0:i1]
        if self._levels is None:
            self._levels = [_MinMaxLevel(f) for f in self.LEVELS]
        level = [lv for lv in self._levels if lv.factor <= per_column][-1]
        level.update(t, v)
        f = level.factor
        b0, b1 = -(-i0 // f), min(level.n, i1 // f)  # whole blocks inside [i0, i1)
        if b1 <= b0:
            return t[i0:i1], v[i0:i1]
        head1, tail0 = min(b0 * f, i1), max(b1 * f, i0)
        x = np.concatenate([t[i0:head1], level.t.view()[2 * b0: 2 * b1], t[tail0:i1]])
        y = np.concatenate([v[i0:head1], level.v.view()[2 * b0: 2 * b1], v[tail0:i1]])
        return x, y

    def extend(self, t_s: np.ndarray, v: np.ndarray) -> None:
        k = len(t_s)
        if k == 0:
            return
        need = self.n + k
        if need > len(self._t):
            cap = max(need, 2 * len(self._t))
            self._t = np.resize(self._t, cap)
            self._v = np.resize(self._v, cap)
        self._t[self.n:need] = t_s
        self._v[self.n:need] = v
        self.n = need

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self._t[: self.n], self._v[: self.n]

    def last(self) -> tuple[float, float] | None:
        return (float(self._t[self.n - 1]), float(self._v[self.n - 1])) if self.n else None

    def value_at(self, t_s: float) -> float | None:
        """Linear interpolation inside the recorded span; None outside it."""
        if self.n == 0:
            return None
        t, v = self.view()
        if t_s < t[0] or t_s > t[-1]:
            return None
        return float(np.interp(t_s, t, v))


class SeriesSet:
    """All series of one session, in seconds since its start."""

    def __init__(self, start_ns: int, infos: Iterable[SeriesInfo] = ()):
        self.start_ns = start_ns
        self.infos: dict[str, SeriesInfo] = {i.key: i for i in infos}
        self.data: dict[str, GrowingSeries] = {}

    def extend_ns(self, key: str, t_ns: np.ndarray, v: np.ndarray) -> None:
        s = self.data.get(key)
        if s is None:
            s = self.data[key] = GrowingSeries(max(1024, len(t_ns)))
            self.infos.setdefault(key, SeriesInfo(key, "", "", key))
        s.extend((t_ns - self.start_ns) / 1e9, v)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        s = self.data.get(key)
        return s.view() if s is not None else None

    def last(self, key: str) -> float | None:
        s = self.data.get(key)
        point = s.last() if s is not None else None
        return point[1] if point else None

    def target_energy_j(self) -> float | None:
        """The target's attributed energy so far (J); None before its first point."""
        return self.last("target/energy_j")

    @property
    def target_estimated(self) -> bool:
        """The target's energy comes from an estimate (a CPU power model)."""
        info = self.infos.get("target/energy_j")
        return "estimated" in ((info.method if info is not None else "") or "")

    def energy_between_ns(self, t0_ns: int, t1_ns: int, key: str = "target/energy_j") -> float | None:
        """Energy of a cumulative series between two monotonic times; None while not covered.
        A span that began before the first sample gets the energy since the baseline (the
        cumulative series starts at 0), as ``ProfilingSession.attributed_energy_between`` does."""
        s = self.data.get(key)
        if s is None:
            return None
        t, v = s.view()
        return figures.energy_between(t, v, (t0_ns - self.start_ns) / 1e9, (t1_ns - self.start_ns) / 1e9,
                                      since_baseline=True)

    def end_s(self) -> float:
        ends = [s.last()[0] for s in self.data.values() if s.n]
        return max(ends) if ends else 0.0

    def keys(self) -> list[str]:
        return list(self.data)

    def power_keys(self) -> list[str]:
        """Per-source power, then the target's per-source shares, then the target's total."""
        ks = [k for k in self.data if self.infos[k].quantity == "power_w"]
        return sorted(ks, key=lambda k: (k.startswith("target/"), k == "target/power_w", k))

    def util_keys(self) -> list[str]:
        ks = [k for k in self.data if self.infos[k].quantity in ("util_pct", "cpu_pct")]
        return sorted(ks, key=lambda k: (k.startswith("target/"), k))

    def source_energy_keys(self) -> list[str]:
        return [k for k in self.data if not k.startswith("target/") and self.infos[k].quantity == "energy_j"]

    @classmethod
    def from_arrays(cls, start_ns: int, infos: Iterable[SeriesInfo],
                    data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> SeriesSet:
        out = cls(start_ns, infos)
        for key, (t, v) in data.items():
            out.extend_ns(key, np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64))
        return out


def infos_from_specs(specs: Iterable, sources: Iterable[Mapping]) -> list[SeriesInfo]:
    """SeriesSpec objects (or the store's series dicts) + source dicts → SeriesInfo."""
    by_id = {s["id"]: s for s in sources}
    out = []
    for s in specs:
        get = s.get if isinstance(s, Mapping) else (lambda k, _s=s: getattr(_s, k))
        sid = get("source_id")
        src = by_id.get(sid, {})
        out.append(SeriesInfo(get("key"), get("unit"), get("method"), get("label") or "", sid,
                              src.get("kind"), src.get("label", "")))
    return out


class LiveFeed:
    """Pulls new points from a session's ring buffers into a SeriesSet (GUI thread, per frame)."""

    def __init__(self, rings, series: SeriesSet):
        self.rings = rings
        self.series = series
        self._last_ns: dict[str, int] = {}

    def pull(self) -> int:
        n = 0
        for key in self.rings.keys():
            buf = self.rings.get(key)
            if buf is None:
                continue
            last = self._last_ns.get(key)
            t, v = buf.snapshot(None if last is None else last + 1)
            if len(t):
                self.series.extend_ns(key, t, v)
                self._last_ns[key] = int(t[-1])
                n += len(t)
        return n


@dataclass(frozen=True)
class CurveSpec:
    key: str
    label: str
    color_index: int
    width: float = 1.0
    dash: bool = False


def power_curves(series: SeriesSet) -> list[CurveSpec]:
    """What the power plot draws: each source's power (solid), the target's share of each (dashed,
    same colour) when there is more than one source, and the target's total (thick), each
    labelled with how it is obtained."""
    keys = series.power_keys()
    sources = [k for k in keys if not k.startswith("target/") and series.infos[k].quantity == "power_w"
               and not k.endswith("idle_power_w")]
    shares = [k for k in keys if k.startswith("target/") and k != "target/power_w"]
    out = [CurveSpec(k, legend_label(series.infos[k]), i) for i, k in enumerate(sources)]
    color_of = {k.split("/")[0]: i for i, k in enumerate(sources)}
    if len(sources) > 1:
        out += [CurveSpec(k, legend_label(series.infos[k]), color_of.get(k.split("/")[1], 0), 1.0, True)
                for k in shares]
    if "target/power_w" in series.data:
        rules = sorted({method_text(series.infos[k].method) for k in shares})
        how = "; ".join(rules) if rules else method_text(series.infos["target/power_w"].method)
        out.append(CurveSpec("target/power_w", f"target process — {how}", len(sources), 2.0))
    return out


def util_curves(series: SeriesSet) -> list[CurveSpec]:
    return [CurveSpec(k, legend_label(series.infos[k]), i, 2.0 if k == "target/cpu_pct" else 1.0)
            for i, k in enumerate(series.util_keys())]
