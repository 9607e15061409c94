"""Small widgets shared by the screens: the one-line message bar, figure cards, a bar chart."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from PySide6.QtCore import QEvent, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.format import si
from wattlens.app.gui.models.layers_model import Bar
from wattlens.app.gui.models.live_model import Card
from wattlens.app.gui.theme import ERROR_STYLE, INFO_STYLE, PLOT


class QtMessageBar(QFrame):
    """One line at the top of the window: an error (what went wrong and what to do) or a notice.
    Never a traceback; the close button hides it."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.close_button = QToolButton(self)
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self.hide)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 6, 6)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.close_button, 0, Qt.AlignTop)
        self.level = ""
        self.theme = "light"
        self.hide()

    @property
    def text(self) -> str:
        return self.label.text()

    def show_error(self, text: str) -> None:
        self._show("error", text)

    def show_info(self, text: str) -> None:
        self._show("info", text)

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        if self.level:
            self._restyle()

    def _show(self, level: str, text: str) -> None:
        self.level = level
        self.label.setText(("⚠ " if level == "error" else "ℹ ") + text)
        self._restyle()
        self.show()

    def _restyle(self) -> None:
        bg, fg, border = (ERROR_STYLE if self.level == "error" else INFO_STYLE)[self.theme]
        self.setStyleSheet(f"#messageBar {{ background: {bg}; border: 1px solid {border}; border-radius: 4px; }}"
                           f"#messageBar QLabel {{ color: {fg}; }}")


class QtCards(QWidget):
    """A grid of figure cards: title (small), value (large), detail (small, wrapped)."""

    def __init__(self, columns: int = 4, parent: QWidget | None = None):
        super().__init__(parent)
        self.columns = columns
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(6)
        self._cards: list[tuple[QFrame, QLabel, QLabel, QLabel]] = []

    def set_cards(self, cards: Sequence[Card]) -> None:
        while len(self._cards) < len(cards):
            self._add_card()
        for i, (frame, title, value, detail) in enumerate(self._cards):
            if i < len(cards):
                c = cards[i]
                title.setText(c.title)
                value.setText(c.value)
                detail.setText(c.detail)
                frame.setToolTip(f"{c.title}: {c.value}\n{c.detail}")
                frame.show()
            else:
                frame.hide()

    def texts(self) -> list[tuple[str, str, str]]:
        return [(t.text(), v.text(), d.text()) for f, t, v, d in self._cards if not f.isHidden()]

    def _add_card(self) -> None:
        frame = QFrame(self)
        frame.setFrameShape(QFrame.StyledPanel)
        frame.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)
        lay = QVBoxLayout(frame)
        lay.setContentsMargins(8, 6, 8, 6)
        lay.setSpacing(2)
        title, value, detail = QLabel(frame), QLabel(frame), QLabel(frame)
        f = title.font()
        f.setPointSizeF(f.pointSizeF() * 0.9)
        title.setFont(f)
        vf = value.font()
        vf.setPointSizeF(vf.pointSizeF() * 1.25)
        vf.setBold(True)
        value.setFont(vf)
        value.setTextInteractionFlags(Qt.TextSelectableByMouse)
        value.setWordWrap(True)
        detail.setWordWrap(True)
        df = detail.font()
        df.setPointSizeF(df.pointSizeF() * 0.85)
        detail.setFont(df)
        for w in (title, value, detail):
            lay.addWidget(w)
        lay.addStretch(1)
        n = len(self._cards)
        self.grid.addWidget(frame, n // self.columns, n % self.columns)
        self._cards.append((frame, title, value, detail))


MIN_PARENT_CHARS = 6  # a parent class cut shorter than this says nothing: "…/" instead


def fit_path_label(label: str, width: float, measure: Callable[[str], float]) -> str:
    """``label`` if it fits in ``width``, else its last whole path components after "…/" (the
    class or attribute name is never cut: "…/NewGELUActivation", not "…2MLP/NewGELUActivation"),
    then the last one under its parent cut in the middle ("BertInte…iate/Linear"), the phase
    suffix kept; a single component too long is elided in the middle."""
    if measure(label) <= width:
        return label
    m = re.fullmatch(r"(.*?)((?: \([\w -]+\))?)", label)
    core, suffix = m.group(1), m.group(2)
    sep = "/" if "/" in core else "."
    comps = core.split(sep)
    for k in range(len(comps) - 1, 1, -1):
        candidate = "…" + sep + sep.join(comps[-k:]) + suffix
        if measure(candidate) <= width:
            return candidate
    if len(comps) > 1:
        # the parent cut in its middle still tells "BertInte…iate/Linear" from "BertOutput/Linear"
        # (five bars of "…/Linear (backward)" did not)
        parent, tail = comps[-2], sep + comps[-1] + suffix
        for n in range(len(parent) - 1, MIN_PARENT_CHARS - 1, -1):
            candidate = parent[: (n + 1) // 2] + "…" + parent[len(parent) - n // 2:] + tail
            if measure(candidate) <= width:
                return candidate
        candidate = "…" + tail
        if measure(candidate) <= width:
            return candidate
    last = comps[-1] + suffix
    if measure(last) <= width:
        return last
    n = len(last)
    while n > 2 and measure(last[: n // 2] + "…" + last[len(last) - (n - n // 2) + 1:]) > width:
        n -= 1
    return last[: n // 2] + "…" + last[len(last) - (n - n // 2) + 1:]


class QtBarChart(QWidget):
    """Horizontal bars with their labels and values written out: readable at any width (long
    module paths keep their last whole components, see ``fit_path_label``; the full path is in
    the tooltip)."""

    ROW_H = 22

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.bars: list[Bar] = []
        self.title = ""
        self.theme = "light"
        self.setMinimumHeight(120)
        self.setMouseTracking(True)

    def set_bars(self, bars: Sequence[Bar], title: str = "") -> None:
        self.bars = list(bars)
        self.title = title
        self.setMinimumHeight(30 + self.ROW_H * max(1, len(self.bars)))
        self.update()

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        self.update()

    def _layout(self) -> tuple[float, float, float]:
        fm = QFontMetrics(self.font())
        label_w = min(max((fm.horizontalAdvance(b.label) for b in self.bars), default=60) + 12,
                      self.width() * 0.5)
        value_w = fm.horizontalAdvance("999 mJ (100.0 %)") + 10
        return label_w, value_w, fm.height()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        pal = self.palette()
        colors = PLOT[self.theme]
        text_color = pal.color(QPalette.WindowText)
        fm = QFontMetrics(self.font())
        p.setPen(text_color)
        p.drawText(QRectF(4, 2, self.width() - 8, 20), Qt.AlignLeft | Qt.AlignVCenter,
                   fm.elidedText(self.title, Qt.ElideRight, self.width() - 8))
        if not self.bars:
            p.drawText(QRectF(4, 26, self.width() - 8, 20), Qt.AlignLeft | Qt.AlignVCenter,
                       "no layer figures yet")
            p.end()
            return
        label_w, value_w, _ = self._layout()
        bar_x = 4 + label_w
        bar_w = max(20.0, self.width() - bar_x - value_w - 8)
        vmax = max(b.value for b in self.bars) or 1.0
        bar_color = QColor(colors.series[0])
        for i, b in enumerate(self.bars):
            y = 26 + i * self.ROW_H
            label = fit_path_label(b.label, label_w - 8, fm.horizontalAdvance)
            p.setPen(text_color)
            p.drawText(QRectF(4, y, label_w - 8, self.ROW_H), Qt.AlignRight | Qt.AlignVCenter, label)
            w = bar_w * b.value / vmax
            p.fillRect(QRectF(bar_x, y + 4, max(1.0, w), self.ROW_H - 8), bar_color)
            p.drawText(QRectF(bar_x + w + 6, y, value_w + bar_w - w, self.ROW_H), Qt.AlignLeft | Qt.AlignVCenter,
                       f"{si(b.value, b.unit)} ({b.share * 100:.1f} %)")
        p.end()

    def shown_labels(self) -> list[str]:
        """The bar labels as drawn at the current width (tests and screenshots read this)."""
        label_w, _, _ = self._layout()
        fm = QFontMetrics(self.font())
        return [fit_path_label(b.label, label_w - 8, fm.horizontalAdvance) for b in self.bars]

    def bar_at(self, y: float) -> Bar | None:
        i = int((y - 26) // self.ROW_H)
        return self.bars[i] if 0 <= i < len(self.bars) and y >= 26 else None

    def event(self, e) -> bool:
        if e.type() == QEvent.ToolTip:
            b = self.bar_at(e.pos().y())
            if b is not None:
                QToolTip.showText(e.globalPos(), f"{b.path}\n{b.value:.4g} {b.unit} ({b.share * 100:.1f} %)", self)
            else:
                QToolTip.hideText()
            return True
        return super().event(e)
