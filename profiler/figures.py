"""Every derived figure, computed in one place: energy between two times, a window's energy split
over its layers, step energy, mean power and CO₂.

The profiler (summary, agent link, stack sampler, live session), the app (cards, layer tree,
Compare) and the reports all call these, so the same session shows the same number everywhere.
Times may be in any unit as long as ``t`` and the window edges share it (ns in the profiler,
seconds since the start in the app's series).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from wattlens.profiler.records import LayerCost, StepRecord

JOULES_PER_KWH = 3.6e6

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
    between the step's ends (None while that is not known)."""
    out = []
    for s in steps:
        if s.energy_j is None:
            e = between(s.t_start_ns, s.t_end_ns)
            if e is not None:
                s = replace(s, energy_j=e)
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
