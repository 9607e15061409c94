"""The per-rank table of a torch.distributed session: rank | steps | mean step | collective share |
busy / step | energy | method, then "other" and the job total; the job lines (straggler, method)
under it. Rows come from ``app/report/ranks.py``, the same ``show`` and the reports print."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.report.ranks import HEADER, job_lines, rank_rows

NUMERIC = {1, 2, 3, 4, 5}  # right-aligned columns
MAX_ROWS_SHOWN = 10


class QtRankTable(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, len(HEADER), self)
        self.table.setHorizontalHeaderLabels(list(HEADER))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        head = self.table.horizontalHeader()
        for i in range(len(HEADER) - 1):
            head.setSectionResizeMode(i, QHeaderView.ResizeToContents)
        head.setSectionResizeMode(len(HEADER) - 1, QHeaderView.Stretch)
        self.notes = QLabel(self)
        self.notes.setWordWrap(True)
        self.notes.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.notes)
        lay.addStretch(0)

    def set_ranks(self, ranks: dict | None) -> bool:
        """Show ``profiler.ranks.per_rank``'s figures; False (and empty) for a single-process session."""
        rows = rank_rows(ranks)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                item = QTableWidgetItem(text)
                if j in NUMERIC:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if row[0] in ("other", "job"):
                    f = item.font()
                    f.setBold(row[0] == "job")
                    f.setItalic(row[0] == "other")
                    item.setFont(f)
                item.setToolTip(text)
                self.table.setItem(i, j, item)
        self.notes.setText("\n".join(job_lines(ranks)))
        # every row in view (up to MAX_ROWS_SHOWN, then it scrolls): the job total must not hide
        shown = min(len(rows), MAX_ROWS_SHOWN)
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + shown * self.table.verticalHeader().defaultSectionSize()
                                    + 2 * self.table.frameWidth() + 2)
        return bool(rows)

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item is not None else ""
