"""A time plot for power and utilisation: pyqtgraph with clip-to-view and peak downsampling, the
x axis in seconds since the session start, the y axis from zero with its unit, a legend *outside*
the data (a label under the plot: long method names never hide a curve), step markers, and
shaded spans (where wattlens itself paused the target).

Ranges are set by the caller each frame (no per-frame auto-range: computing data bounds of long
series is what makes live plots slow).
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from wattlens.app.gui.theme import PLOT

pg.setConfigOptions(antialias=False, useOpenGL=False)


class QtTimePlot(QWidget):
    def __init__(self, y_label: str, y_unit: str, parent: QWidget | None = None, *,
                 y_floor_max: float | None = None, title: str = ""):
        super().__init__(parent)
        self.theme = "light"
        self.y_floor_max = y_floor_max  # the y range covers at least [0, this] (100 for %)
        self.plot = pg.PlotWidget(parent=self)
        self.item = self.plot.getPlotItem()
        self.item.setClipToView(True)
        self.item.setDownsampling(auto=True, mode="peak")
        self.item.setMenuEnabled(False)
        self.item.hideButtons()
        if title:
            self.item.setTitle(title)
        self.item.setLabel("bottom", "time since start", units="s")
        self.item.getAxis("bottom").enableAutoSIPrefix(False)
        self.item.setLabel("left", y_label, units=y_unit)
        self.item.getAxis("left").setWidth(64)
        self.item.getViewBox().disableAutoRange()
        self._x: tuple[float, float] | None = None  # the ranges last set (see set_ranges)
        self._y1: float | None = None
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.labels: dict[str, str] = {}
        self.colors: dict[str, str] = {}
        self.widths: dict[str, float] = {}
        self.markers = pg.VTickGroup(xvals=[], yrange=[0.0, 0.06])
        self.item.addItem(self.markers, ignoreBounds=True)
        self.legend = QLabel(self)
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.RichText)
        # room under the legend: the next plot's top tick label ("100" of utilisation) never touches it
        self.legend.setContentsMargins(4, 0, 4, 10)
        self.note = ""
        self.spans: list[pg.LinearRegionItem] = []  # shaded time spans (set_spans)
        self.span_note = ""
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.legend, 0)
        self.set_theme("light")

    # ---- data -------------------------------------------------------------------------------------
    def set_curve(self, key: str, label: str, t: np.ndarray, v: np.ndarray, *, color: str | None = None,
                  width: float = 1.0, dash: bool = False) -> None:
        curve = self.curves.get(key)
        if curve is None:
            color = color or PLOT[self.theme].series[len(self.curves) % len(PLOT[self.theme].series)]
            curve = pg.PlotDataItem(pen=self._pen(color, width, dash))
            curve.setClipToView(True)
            curve.setDownsampling(auto=True, method="peak")
            self.item.addItem(curve)
            self.curves[key] = curve
            self.colors[key] = color
            self.widths[key] = width
        if self.labels.get(key) != label:
            self.labels[key] = label
            self._update_legend()
        curve.setData(t, v, skipFiniteCheck=True)

    def remove_missing(self, keys: set[str]) -> None:
        for key in [k for k in self.curves if k not in keys]:
            self.item.removeItem(self.curves.pop(key))
            self.labels.pop(key, None)
            self.colors.pop(key, None)
        self._update_legend()

    def clear(self) -> None:
        self.remove_missing(set())
        self.set_markers(np.empty(0))
        self.set_spans([], "")
        self._x = self._y1 = None

    def set_spans(self, spans_s: list[tuple[float, float]], note: str) -> None:
        """Shade these (start, end) spans, in seconds, behind the curves, and say what they are
        in the legend (``note``)."""
        if len(spans_s) == len(self.spans):  # live: the same runs, the last one perhaps longer
            for region, span in zip(self.spans, spans_s, strict=True):
                if tuple(region.getRegion()) != tuple(span):
                    region.setRegion(span)
        else:
            for region in self.spans:
                self.item.removeItem(region)
            self.spans = []
            for x0, x1 in spans_s:
                region = pg.LinearRegionItem((x0, x1), movable=False, brush=self._span_brush(),
                                             pen=pg.mkPen(None))
                region.setZValue(-10)  # behind the curves
                self.item.addItem(region, ignoreBounds=True)
                self.spans.append(region)
        if note != self.span_note:
            self.span_note = note
            self._update_legend()

    def set_markers(self, xs: np.ndarray) -> None:
        self.markers.setXVals(list(map(float, xs)))

    def set_ranges(self, x0: float, x1: float, y_max: float | None, *, sticky: bool = False) -> None:
        """x in seconds; y from 0 to a little above ``y_max`` (or the floor).

        ``sticky`` (live views): the y range only grows, or shrinks when the data fall below 60 %
        of it, so the axes are not regenerated every frame. A range that did not change is not
        set again (setting it re-renders the axes, grid and every curve)."""
        top = max(y_max or 0.0, self.y_floor_max or 0.0)
        if top <= 0:
            top = 1.0
        y1 = top * 1.08
        if sticky and self._y1 is not None and top <= self._y1 and top >= 0.6 * self._y1:
            y1 = self._y1
        elif sticky:
            y1 = top * 1.25  # head-room, so a slowly rising curve does not move the axis each frame
        x1 = max(x1, x0 + 1e-3)
        if (x0, x1) != self._x:
            self.item.setXRange(x0, x1, padding=0)
            self._x = (x0, x1)
        if y1 != self._y1:
            self.item.setYRange(0, y1, padding=0)
            self._y1 = y1

    # ---- looks ------------------------------------------------------------------------------------
    @staticmethod
    def _pen(color: str, width: float, dash: bool):
        pen = pg.mkPen(color=color, width=width)
        if dash:
            pen.setStyle(Qt.DashLine)
        return pen

    def _span_brush(self):
        color = pg.mkColor(PLOT[self.theme].markers)
        color.setAlpha(60)
        return pg.mkBrush(color)

    def set_note(self, text: str) -> None:
        """A last legend entry in grey (what the step ticks are, or why they are hidden)."""
        if text != self.note:
            self.note = text
            self._update_legend()

    def _update_legend(self) -> None:
        parts = []
        for key, label in self.labels.items():
            color = self.colors.get(key, "#888")
            parts.append(f'<span style="color:{color}; font-weight:bold">━━</span>&nbsp;{html.escape(label)}')
        if self.note:
            parts.append(f'<span style="color:{PLOT[self.theme].markers}">┃ {html.escape(self.note)}</span>')
        if self.span_note:
            parts.append(f'<span style="color:{PLOT[self.theme].markers}">▒ {html.escape(self.span_note)}</span>')
        self.legend.setText("&nbsp;&nbsp;&nbsp; ".join(parts))

    def legend_texts(self) -> list[str]:
        return list(self.labels.values())

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        c = PLOT[theme]
        self.plot.setBackground(c.background)
        for axis in ("left", "bottom"):
            ax = self.item.getAxis(axis)
            ax.setPen(c.foreground)
            ax.setTextPen(c.foreground)
        self.item.showGrid(x=True, y=True, alpha=c.grid_alpha)
        self.markers.setPen(pg.mkPen(c.markers, width=1))
        for region in self.spans:
            region.setBrush(self._span_brush())
        self.item.titleLabel.setText(self.item.titleLabel.text, color=c.foreground)
