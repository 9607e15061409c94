"""The figures, plots and layer view of one session — shared by the live view (redrawn by a
timer) and by a stored session's detail view (drawn once)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSplitter, QTabWidget, QVBoxLayout, QWidget

from wattlens.app.gui.models.layers_model import LayerTree
from wattlens.app.gui.models.live_model import Card
from wattlens.app.gui.models.series_model import SeriesSet, power_curves, util_curves
from wattlens.app.gui.qt_layers import QtLayerView
from wattlens.app.gui.qt_plots import QtTimePlot
from wattlens.app.gui.qt_ranks import QtRankTable
from wattlens.app.gui.qt_widgets import QtCards
from wattlens.app.gui.theme import PLOT


class QtSessionPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.theme = "light"
        self.cards = QtCards(columns=4, parent=self)
        self.power_plot = QtTimePlot("power", "W", self)
        # "util.": the stored view gives this plot ~70 px, and "utilisation (%)" was cut there
        self.util_plot = QtTimePlot("util.", "%", self, y_floor_max=100.0)
        self.util_plot.item.getAxis("left").enableAutoSIPrefix(False)
        # small enough that both fit the Sessions detail under an 8-row list: a splitter given less
        # than its children's minimums overlaps them (the power legend drawn over the % axis)
        self.power_plot.setMinimumHeight(140)
        self.util_plot.setMinimumHeight(110)
        self.layers = QtLayerView(LayerTree(), self)
        plots = QSplitter(Qt.Vertical, self)
        plots.addWidget(self.power_plot)
        plots.addWidget(self.util_plot)
        plots.setStretchFactor(0, 1)
        plots.setStretchFactor(1, 1)
        self._live_x: tuple[float, float, float | None] | None = None
        self.tabs = QTabWidget(self)
        self.tabs.addTab(plots, "Power and utilisation")
        self.tabs.addTab(self.layers, "Layers")
        self.ranks = QtRankTable(self)  # a tab only for a multi-rank session (set_ranks)
        self.ranks.hide()  # until then: a child in no layout is drawn over the cards
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.cards)
        lay.addWidget(self.tabs, 1)

    def set_layers(self, tree: LayerTree) -> None:
        self.layers.set_tree(tree)

    def set_ranks(self, ranks: dict | None) -> None:
        """The per-rank table (profiler.ranks.per_rank), as a "Ranks" tab only when the session
        is a multi-rank job."""
        shown = self.ranks.set_ranks(ranks)
        at = self.tabs.indexOf(self.ranks)
        if shown and at < 0:
            self.tabs.insertTab(self.tabs.indexOf(self.layers) + 1, self.ranks, "Ranks")
        elif not shown and at >= 0:
            self.tabs.removeTab(at)

    def set_cards(self, cards: list[Card]) -> None:
        self.cards.set_cards(cards)

    def clear(self) -> None:
        self._live_x = None
        self.power_plot.clear()
        self.util_plot.clear()
        self.cards.set_cards([])

    def draw(self, series: SeriesSet, window_s: float | None, step_ends_s: np.ndarray | None = None,
             *, live: bool = False, paused: tuple[list[tuple[float, float]], str] | None = None) -> None:
        """Draw the last ``window_s`` seconds (None: everything).

        Live, the time axis moves in steps of a tenth of the window (the data run into head-room on
        the right, then the view jumps) instead of sliding every frame: a moving axis means the
        axes, grid and every curve are rendered anew, which costs several times a frame's drawing.
        """
        t_end = series.end_s()
        x0, x1 = self._x_range(t_end, window_s, live)
        palette = PLOT[self.theme].series
        if paused is not None:  # spans where wattlens stopped the target (StoredSession.paused_spans)
            self.power_plot.set_spans(*paused)
            self.util_plot.set_spans(paused[0], "")  # said once, under the power plot
        for plot, specs in ((self.power_plot, power_curves(series)), (self.util_plot, util_curves(series))):
            y_max = 0.0
            columns = max(200, plot.item.getViewBox().width() or plot.plot.width())
            for c in specs:
                t, v = series.data[c.key].display(x0 if window_s else None, None, int(columns))
                plot.set_curve(c.key, c.label, t, v, color=palette[c.color_index % len(palette)],
                               width=c.width, dash=c.dash)
                if len(v):
                    y_max = max(y_max, float(np.nanmax(v)))
            plot.remove_missing({c.key for c in specs})
            plot.set_ranges(x0, x1, y_max, sticky=live)
        if step_ends_s is not None:
            xs = step_ends_s[step_ends_s >= x0] if len(step_ends_s) else step_ends_s
            # a tick per step end, while they stay apart; denser ones would merge into a bar
            px_per_s = self.power_plot.plot.width() / max(x1 - x0, 1e-9)
            dense = len(xs) > 1 and (xs[-1] - xs[0]) / (len(xs) - 1) * px_per_s < 4  # mean gap < 4 px
            self.power_plot.set_markers(np.empty(0) if dense else xs)
            if not len(xs):
                self.power_plot.set_note("")
            elif dense:
                span_s = max(float(xs[-1] - xs[0]), 1e-9)
                self.power_plot.set_note(f"{len(xs)} steps in view, {len(xs) / span_s:.0f} per second: "
                                         "too dense to mark")
            else:
                self.power_plot.set_note("ticks on the time axis: step ends")

    def _x_range(self, t_end: float, window_s: float | None, live: bool) -> tuple[float, float]:
        if not live:
            return (max(0.0, t_end - window_s), max(t_end, window_s)) if window_s else (0.0, t_end)
        prev = self._live_x
        span = window_s or max(t_end, 10.0)
        step = span / 10.0
        if prev is not None and prev[2] == window_s and prev[0] <= t_end <= prev[1]:
            return prev[0], prev[1]
        if window_s:
            x1 = max(window_s, (np.floor(t_end / step) + 2) * step)
            x0 = max(0.0, x1 - window_s)
        else:
            x0, x1 = 0.0, max(10.0, (np.floor(t_end * 1.1 / step) + 1) * step)
        self._live_x = (x0, x1, window_s)
        return x0, x1

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        self.power_plot.set_theme(theme)
        self.util_plot.set_theme(theme)
        self.layers.set_theme(theme)
