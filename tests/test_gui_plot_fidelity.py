"""A stored session's plot draws the stored samples: every point drawn is a stored sample, and
per pixel column the drawn min and max are the samples' (no sawtooth that is not in the data)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("PySide6")

from wattlens.app.gui.models.series_model import SeriesInfo, SeriesSet  # noqa: E402

START_NS = 10**12


def _stored_series(n: int = 20_000) -> tuple[SeriesSet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t_s = np.arange(n) * 0.1  # seconds, for the shape only
    # a slow ramp with a little noise: the shape a min/max block drawn at one x turns into a sawtooth
    v = 5.0 + 0.0004 * np.arange(n) + 0.3 * np.sin(t_s / 40.0) + rng.normal(0.0, 0.02, n)
    v[12_345] = 30.0  # one spike
    info = SeriesInfo("cpu-model/power_w", "W", "estimated", source_id="cpu-model", source_kind="cpu")
    t_ns = START_NS + np.arange(n, dtype=np.int64) * 100_000_000
    series = SeriesSet.from_arrays(START_NS, [info], {"cpu-model/power_w": (t_ns, v)})
    t_s, v = series.get("cpu-model/power_w")  # the stored samples, on the plot's time axis
    return series, t_s.copy(), v.copy()


@pytest.mark.parametrize("width", [480, 1100])
def test_drawn_curve_is_the_stored_samples_per_pixel_column(qtbot, tmp_path, width):
    from wattlens.app.gui.qt_session_panel import QtSessionPanel

    series, t_s, v = _stored_series()
    panel = QtSessionPanel()
    qtbot.addWidget(panel)
    panel.resize(width, 620)
    panel.show()
    qtbot.waitExposed(panel)
    panel.draw(series, None)
    curve = panel.power_plot.curves["cpu-model/power_w"]
    x, y = curve.getData()  # what pyqtgraph draws, after its own clipping and downsampling
    assert len(x) < len(t_s)  # reduced for drawing
    assert np.all(np.diff(x) >= 0), "drawn x goes back in time"
    # every drawn point is a stored sample
    idx = np.clip(np.searchsorted(t_s, x), 0, len(t_s) - 1)
    assert np.array_equal(t_s[idx], x) and np.array_equal(v[idx], y), "a drawn point is not a stored sample"
    # per pixel column, the drawn extremes are the stored ones (a neighbour column may hold a
    # block's extreme that lies on the column's edge)
    vb = panel.power_plot.item.getViewBox()
    (x0, x1), _ = vb.viewRange()
    cols = max(int(vb.width()), 1)
    col_of = lambda ts: np.clip(((ts - x0) / (x1 - x0) * cols).astype(int), 0, cols - 1)  # noqa: E731
    ds, cs = col_of(t_s), col_of(x)
    true_max = np.full(cols, -np.inf)
    true_min = np.full(cols, np.inf)
    np.maximum.at(true_max, ds, v)
    np.minimum.at(true_min, ds, v)
    drawn_max = np.full(cols, -np.inf)
    drawn_min = np.full(cols, np.inf)
    np.maximum.at(drawn_max, cs, y)
    np.minimum.at(drawn_min, cs, y)
    near_max = np.maximum(np.maximum(drawn_max, np.roll(drawn_max, 1)), np.roll(drawn_max, -1))
    near_min = np.minimum(np.minimum(drawn_min, np.roll(drawn_min, 1)), np.roll(drawn_min, -1))
    has = np.isfinite(true_max)
    assert np.all(near_max[has] >= true_max[has]), "a column's peak is not drawn"
    assert np.all(near_min[has] <= true_min[has]), "a column's trough is not drawn"
    assert y.max() == 30.0
    if os.environ.get("WATTLENS_SHOW_PLOT"):
        panel.grab().save(str(tmp_path / f"plot-{width}.png"))
        print(tmp_path / f"plot-{width}.png")
