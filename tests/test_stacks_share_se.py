"""Each stack-sampled class share comes with its standard error (profiler/summary.top_layers)."""

from __future__ import annotations

import math

import pytest

from wattlens.profiler.records import LayerCost
from wattlens.profiler.summary import top_layers


def row(w: int, path: str, self_s: float, method: str = "stack-sampling") -> LayerCost:
    return LayerCost(
        window_start_ns=w, window_end_ns=w + 1, path=path, granularity="class", method=method,
        time_s=self_s, share=0.0, self_time_s=self_s, self_energy_j=self_s,
    )


def test_share_se_is_the_ratio_estimators_between_windows():
    # three windows, node A's self time / all self time: 2/4, 3/4, 1/4
    layers = []
    for w, a in enumerate((2.0, 3.0, 1.0)):
        layers += [row(w, "A", a), row(w, "B", 4.0 - a)]
    got = {r["path"]: r for r in top_layers(layers)}
    r = 6.0 / 12.0
    resid = [(a - r * 4.0) ** 2 for a in (2.0, 3.0, 1.0)]
    expected = math.sqrt(3 / 2 * sum(resid)) / 12.0
    assert got["A"]["self_share"] == pytest.approx(0.5)
    assert got["A"]["self_share_se"] == pytest.approx(expected)
    assert got["B"]["self_share_se"] == pytest.approx(expected)  # the complement moves with A


def test_no_se_for_exact_timings_or_a_single_window():
    timed = [row(w, "A", 1.0, method="agent-timing") for w in range(3)]
    assert top_layers(timed)[0]["self_share_se"] is None
    assert top_layers([row(0, "A", 1.0), row(0, "B", 1.0)])[0]["self_share_se"] is None
