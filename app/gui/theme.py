"""Light and dark themes: a Fusion palette for the widgets and matching plot colours."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication


@dataclass(frozen=True)
class PlotColors:
    background: str
    foreground: str
    grid_alpha: float
    series: tuple[str, ...]
    markers: str


# Colour-blind-safe series colours (Okabe–Ito), target series drawn thicker on top.
_SERIES_LIGHT = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_SERIES_DARK = ("#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#F0E442", "#0072B2", "#FFFFFF", "#D55E00")

PLOT = {
    "light": PlotColors("#FFFFFF", "#202020", 0.25, _SERIES_LIGHT, "#808080"),
    "dark": PlotColors("#1E1E1E", "#E0E0E0", 0.3, _SERIES_DARK, "#A0A0A0"),
}

ERROR_STYLE = {
    "light": ("#FDECEA", "#8A1C12", "#F5C2BC"),
    "dark": ("#4A1C1A", "#FFD7D2", "#7A2E29"),
}
INFO_STYLE = {
    "light": ("#E8F1FB", "#0B3D6E", "#B8D4F0"),
    "dark": ("#1B3049", "#D6E8FA", "#2E4D72"),
}


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 30, 30), QColor(45, 45, 48), QColor(224, 224, 224)
    p.setColor(QPalette.Window, window)
    p.setColor(QPalette.WindowText, text)
    p.setColor(QPalette.Base, base)
    p.setColor(QPalette.AlternateBase, QColor(38, 38, 40))
    p.setColor(QPalette.ToolTipBase, window)
    p.setColor(QPalette.ToolTipText, text)
    p.setColor(QPalette.Text, text)
    p.setColor(QPalette.Button, window)
    p.setColor(QPalette.ButtonText, text)
    p.setColor(QPalette.BrightText, QColor(255, 80, 80))
    p.setColor(QPalette.Highlight, QColor(38, 110, 180))
    p.setColor(QPalette.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.PlaceholderText, QColor(150, 150, 150))
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        p.setColor(QPalette.Disabled, role, QColor(120, 120, 120))
    return p


def apply_theme(app: QApplication, name: str) -> None:
    app.setStyle("Fusion")
    app.setPalette(_dark_palette() if name == "dark" else app.style().standardPalette())
