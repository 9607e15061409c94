"""Every derived figure, computed in one place: energy between two times, a window's energy split
over its layers, step energy, mean power and CO₂.

The profiler (summary, agent link, stack sampler, live session), the app (cards, layer tree,
Compare) and the reports all call these, so the same session shows the same number everywhere.
Times may be in any unit as long as ``t`` and the window edges share it (ns in the profiler,
seconds since the start in the app's series).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from wattlens.profiler.records import LayerCost, StepRecord

JOULES_PER_KWH = 3.6e6
AGENT_TIMING = "agent-timing"  # LayerCost.method of the in-process agent's exact timings

EnergyBetween = Callable[[int, int], "float | None"]


def energy_between(t: np.ndarray, cumulative_j: np.ndarray, t0: float, t1: float, *,
                   since_baseline: bool = False) -> float | None:
    """Energy in [t0, t1] by linear interpolation of a cumulative series; None where the series
    does not cover the window. ``since_baseline``: a window that began before the first sample
    gets the energy since that sample (cumulative series start at 0 at the sampler's baseline)."""
    n = len(t)
    if n == 0 or t1 < t0 or t1 > t[-1] or t1 < t[0]:
        return None
    e1 = float(np.interp(t1, t, cumulative_j))
    if t0 >= t[0]:
        if n < 2 and t0 != t1:
            return None
        return e1 - float(np.interp(t0, t, cumulative_j))
    return e1 if since_baseline else None


class SelfShareSE:
    """The standard error of each sampled node's self share of the sampled time, kept up to date
    as windows arrive: the summary (so ``show``, the reports and the exports) and the live layer
    tree read the same figure.

    The share is a ratio of sums over windows (the node's self time / all self time), so its
    standard error is the ratio estimator's, sqrt(k/(k-1) · Σ_w (x_w − r·y_w)²) / Σ_w y_w over the
    k windows: it covers the sampling noise and the window-to-window changes of the workload, and
    needs 2 windows or more. It is kept as sums (Σx, Σx², Σxy per node; Σy, Σy²), so a window is
    added once and never revisited.

    A part of a row split by pooled native reads (``split_se_s`` set: the backward by op or
    module class, the optimizer's parts by tensor op) shares the pool's estimate with every
    window, so that error does not average out between windows: Σ_w split_se_s_w / Σ_w y_w (the
    windows taken as fully correlated, an upper bound) is added in quadrature, from the first
    window on. Agent timings are exact: no entry.
    """

    def __init__(self, key: Callable[[LayerCost], tuple[str, str, str]] | None = None,
                 self_time_s: Callable[[LayerCost], float] | None = None) -> None:
        self.key = key or (lambda lc: (lc.path, lc.granularity, lc.phase))  # what a node is
        self.self_time_s = self_time_s or (lambda lc: lc.self_time_s or 0.0)  # as the share counts it
        self.k = 0
        self.sum_y = self.sum_y2 = 0.0
        self._x: dict[tuple[str, str, str], list[float]] = {}  # [Σx, Σx², Σxy, Σ split_se_s]

    def add_window(self, rows: Iterable[LayerCost]) -> None:
        """The rows of one window (its agent-timed rows are left out)."""
        x: dict[tuple[str, str, str], list[float]] = {}
        for lc in rows:
            if lc.method == AGENT_TIMING:
                continue
            a = x.setdefault(self.key(lc), [0.0, 0.0])
            a[0] += self.self_time_s(lc)
            a[1] += lc.split_se_s or 0.0
        if not x:
            return
        y = sum(a[0] for a in x.values())
        self.k += 1
        self.sum_y += y
        self.sum_y2 += y * y
        for key, (xw, split_s) in x.items():
            acc = self._x.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            acc[0] += xw
            acc[1] += xw * xw
            acc[2] += xw * y
            acc[3] += split_s

    def get(self, key: tuple[str, str, str]) -> float | None:
        """The standard error of a node's self share (its ``key``); None where unknown (fewer
        than 2 windows and no split, or not sampled)."""
        acc = self._x.get(key)
        if acc is None or self.sum_y <= 0:
            return None
        sx, sx2, sxy, split_s = acc
        var = (split_s / self.sum_y) ** 2
        if self.k >= 2:
            r = sx / self.sum_y
            ss = max(0.0, sx2 - 2.0 * r * sxy + r * r * self.sum_y2)
            var += self.k / (self.k - 1) * ss / self.sum_y ** 2
        elif not split_s:
            return None
        return float(np.sqrt(var))

    def all(self) -> dict[tuple[str, str, str], float]:
        out = {}
        for key in self._x:
            se = self.get(key)
            if se is not None:
                out[key] = se
        return out


def split_window_energy(rows: Sequence[LayerCost], energy_j: float | None) -> list[LayerCost]:
    """A window's energy shared over its rows by time: ``self_energy_j = E · self_time / base`` and
    ``energy_j = E · time / base`` with ``base`` the sum of the rows' self times (the rows of a
    window, buckets included, cover it: their self energies sum to ``E``)."""
    base = sum(r.self_time_s or 0.0 for r in rows)
    if energy_j is None or base <= 0.0:
        return [replace(r, energy_j=None, self_energy_j=None) for r in rows]
    return [replace(r, energy_j=energy_j * r.time_s / base,
                    self_energy_j=energy_j * (r.self_time_s or 0.0) / base) for r in rows]


def fill_step_energy(steps: Iterable[StepRecord], between: EnergyBetween) -> list[StepRecord]:
    """Steps with their energy: the agent's figure when it sent one, else the target's energy
    between the step's ends (None while that is not known). In a job of several ranks that energy
    is every rank's at once, so a rank's step gets its equal share (as rank_energy splits a job
    whose ranks have no energy of their own): added up over the ranks, a job step counts once."""
    steps = list(steps)
    ranks = len({s.rank for s in steps if s.rank is not None})
    out = []
    for s in steps:
        if s.energy_j is None:
            e = between(s.t_start_ns, s.t_end_ns)
            if e is not None:
                s = replace(s, energy_j=e / ranks if s.rank is not None and ranks > 1 else e)
        out.append(s)
    return out


def mean_power_w(energy_j: float | None, duration_s: float | None) -> float | None:
    """Mean power over a span: its energy over its duration (never the mean of power samples,
    which weighs unevenly spaced ticks wrongly)."""
    if energy_j is None or not duration_s:
        return None
    return energy_j / duration_s


def co2_g(energy_j: float | None, grid_g_per_kwh: float | None) -> float | None:
    if energy_j is None or grid_g_per_kwh is None:
        return None
    return energy_j / JOULES_PER_KWH * grid_g_per_kwh


def saving_interval(ratio: float, se_log_ratio: float, quantile: float) -> tuple[float, float]:
    """The interval of a saving 1 − R, from the ratio R = after/before (both positive) and the
    standard error of log R: R·exp(±quantile·se), mapped to 1 − R.

    On the log scale because a ratio of energies is positive and its error multiplicative: the
    interval of the saving stays below +100 % (no arm can use negative energy) however wide it
    is, and a doubling and a halving are equally far from no change. A symmetric interval on R
    once read −691 … +904 % for a contended run.
    Returned (low, high) as savings."""
    half = min(quantile * se_log_ratio, 700.0)  # exp(710) overflows; e^700 is already "no bound"
    return 1.0 - ratio * math.exp(half), 1.0 - ratio * math.exp(-half)


#: said beside a measured saving whose interval includes 0 (A/B, live apply): a figure, not a proof
UNPROVEN = "the interval includes no change, so this run does not show a difference"


def includes_no_change(interval: Sequence[float] | None) -> bool:
    """Whether a saving interval includes 0: the measurement cannot tell the change from none."""
    return bool(interval) and min(interval) <= 0.0 <= max(interval)


def change_pct(saving: float | None) -> str:
    """A saving fraction as the signed change of energy: 0.548 → "−54.8 %" (U+2212 minus)."""
    if saving is None:
        return "n/a"
    change = -saving * 100.0
    if abs(change) < 0.05:
        return "±0.0 %"
    return f"{'−' if change < 0 else '+'}{abs(change):.1f} %"


def direction(saving: float | None) -> str:
    if saving is None:
        return ""
    if abs(saving) < 0.0005:
        return "no change"
    return "saving" if saving > 0 else "costs more"
