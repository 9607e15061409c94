"""The Export screen: a stored session (optionally compared with another) to html, pdf, md,
json, csv (samples, steps or layers) or a trace through ``write_report``, in a worker with progress."""

from __future__ import annotations

import os
from collections.abc import Callable

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.export_model import available_formats, default_path, run_export
from wattlens.app.gui.models.sessions_model import SessionsModel
from wattlens.app.report.formats import COMPARE_FORMATS, CSV_WHAT, CSV_WHAT_TEXT


class QtExportView(QWidget):
    error_occurred = Signal(str)
    exported = Signal(str)  # the written path

    def __init__(self, sessions: SessionsModel, pool, get_store: Callable[[], object],
                 get_grid: Callable[[], float | None], parent: QWidget | None = None):
        super().__init__(parent)
        self.sessions = sessions
        self.pool = pool
        self.get_store = get_store
        self.get_grid = get_grid
        self._running = False
        self._path_edited = False

        self.session_box = QComboBox(self)
        self.compare_box = QComboBox(self)
        self.format_box = QComboBox(self)
        self.formats = available_formats()
        for f in self.formats:
            self.format_box.addItem(f"{f.name.upper()} — {f.text}" + ("" if f.available else " (not available)"), f.name)
            if not f.available:
                idx = self.format_box.count() - 1
                item = self.format_box.model().item(idx)
                item.setEnabled(False)
                item.setToolTip(f.reason)
        first_ok = next((i for i, f in enumerate(self.formats) if f.available), 0)
        self.format_box.setCurrentIndex(first_ok)
        # what a CSV holds (`wattlens report --what`): offered only while CSV is chosen
        self.csv_box = QComboBox(self)
        for what in CSV_WHAT:
            self.csv_box.addItem(CSV_WHAT_TEXT[what], what)
        self.path = QLineEdit(self)
        self.path.textEdited.connect(self._on_path_edited)
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.export_button = QPushButton("Export", self)
        self.export_button.clicked.connect(self.export)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.hide()
        self.result = QLabel(self)
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.last_path: str | None = None  # the report written last (what "Open the file" opens)
        self.open_button = QPushButton("Open the file", self)
        self.open_button.setToolTip("Open the report with the desktop's default application")
        self.open_button.clicked.connect(self.open_file)
        self.open_button.hide()
        missing = [f for f in self.formats if not f.available]
        self.format_note = QLabel(
            f"{', '.join(f.name.upper() for f in missing)}: {missing[0].reason}." if missing else "", self)
        self.format_note.setWordWrap(True)
        self.format_note.setVisible(bool(missing))

        intro = QLabel("Write a report of a stored session. Figures carry their method (counter, polled, "
                       "estimated, attributed); CO₂ uses the grid intensity from Settings.", self)
        intro.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Session:", self.session_box)
        form.addRow("Compare with:", self.compare_box)
        form.addRow("Format:", self.format_box)
        form.addRow("CSV table:", self.csv_box)
        self._form = form
        form.addRow("Save to:", path_row)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.format_note)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.export_button)
        lay.addLayout(row)
        result_row = QHBoxLayout()
        result_row.addWidget(self.result, 1)
        result_row.addWidget(self.open_button)
        lay.addLayout(result_row)
        lay.addStretch(1)
        self.session_box.currentIndexChanged.connect(self._fill_compare)
        self.compare_box.currentIndexChanged.connect(self._update_path)
        self.format_box.currentIndexChanged.connect(self._update_path)
        self.csv_box.currentIndexChanged.connect(self._update_path)
        sessions.changed.connect(self._on_sessions_changed)
        self._on_sessions_changed()

    # ---- state ----------------------------------------------------------------------------------
    def selected(self) -> tuple[int | None, int | None, str]:
        return self.session_box.currentData(), self.compare_box.currentData(), self.format_box.currentData()

    def csv_what(self) -> str:
        return self.csv_box.currentData() or CSV_WHAT[0]

    def choose(self, session_id: int, fmt: str, path: str | None = None, compare_id: int | None = None,
               what: str = "samples") -> None:
        self.session_box.setCurrentIndex(max(0, self.session_box.findData(session_id)))
        self._fill_compare()
        self.compare_box.setCurrentIndex(max(0, self.compare_box.findData(compare_id)))
        self.format_box.setCurrentIndex(max(0, self.format_box.findData(fmt)))
        self.csv_box.setCurrentIndex(max(0, self.csv_box.findData(what)))
        if path is not None:
            self.path.setText(path)
            self._path_edited = True

    def _folder(self) -> str:
        current = self.path.text().strip()
        return os.path.dirname(current) if current else os.path.expanduser("~")

    def _update_path(self, *_args) -> None:
        sid, cid, fmt = self.selected()
        self._form.setRowVisible(self.csv_box, fmt == "csv")
        # a CSV or trace holds one session: no comparison offered (it was silently left out)
        self.compare_box.setEnabled(fmt in COMPARE_FORMATS)
        self.compare_box.setToolTip("" if fmt in COMPARE_FORMATS else
                                    f"a {(fmt or '').upper()} export holds one session; compare in "
                                    f"{', '.join(f.upper() for f in COMPARE_FORMATS)}")
        if fmt not in COMPARE_FORMATS:
            cid = None
        if sid is None or fmt is None:
            return
        if self._path_edited and self.path.text().strip():
            base, _ext = os.path.splitext(self.path.text().strip())
            self.path.setText(f"{base}.{fmt}")
            return
        self.path.setText(str(default_path(self._folder(), sid, fmt, cid, self.csv_what())))

    def _on_path_edited(self, _text: str) -> None:
        self._path_edited = True

    def _on_browse(self) -> None:
        _sid, _cid, fmt = self.selected()
        path, _ = QFileDialog.getSaveFileName(self, "Save report", self.path.text(), f"{(fmt or '').upper()} (*.{fmt})")
        if path:
            self.path.setText(path)
            self._path_edited = True

    def _on_sessions_changed(self) -> None:
        sid, _cid, _ = self.selected()
        self._fill(self.session_box, sid, None, exclude=None)
        self._fill_compare()
        self.export_button.setEnabled(bool(self.sessions.rows) and not self._running)
        if not self.sessions.rows:
            self.result.setText("no stored sessions to export yet")
        elif self.result.text() == "no stored sessions to export yet":  # never a stale line
            self.result.setText("")

    def _fill_compare(self, *_args) -> None:
        """The comparison choices: every other session (never the exported session itself)."""
        self._fill(self.compare_box, self.compare_box.currentData(), "(no comparison)",
                   exclude=self.session_box.currentData())
        self._update_path()

    def _fill(self, box: QComboBox, keep, none_text: str | None, exclude) -> None:
        box.blockSignals(True)
        box.clear()
        if none_text:
            box.addItem(none_text, None)
        for r in self.sessions.rows:
            if r.id != exclude:
                # both energies, named: a bare "2.5 kJ" read as the target's (it was the machine's)
                box.addItem(f"{r.id}: {r.name} — {r.started_text}, {r.duration_text}, "
                            f"target {r.target_energy_text}, machine {r.energy_text}", r.id)
        i = box.findData(keep)
        box.setCurrentIndex(i if i >= 0 else 0)
        box.blockSignals(False)

    # ---- export ---------------------------------------------------------------------------------
    def export(self) -> None:
        sid, cid, fmt = self.selected()
        store = self.get_store()
        path = self.path.text().strip()
        if store is None or sid is None or self._running:
            return
        if not path:
            self.result.setText("choose where to save the report")
            return
        if cid == sid or fmt not in COMPARE_FORMATS:
            cid = None
        self._running = True
        self.export_button.setEnabled(False)
        self.progress.setValue(0)
        self.progress.show()
        self.open_button.hide()
        what = self.csv_what() if fmt == "csv" else "samples"
        self.result.setText(f"exporting session {sid} as {fmt}" + (f" ({what})" if fmt == "csv" else "") + "…")
        self.pool.submit(run_export, store, sid, fmt, path, compare_id=cid, grid_g_per_kwh=self.get_grid(),
                         what=what, on_done=self._on_done, on_error=self._on_failed,
                         on_progress=self._on_progress)

    def _on_progress(self, text: str, fraction: float) -> None:
        self.progress.setValue(int(fraction * 100))
        self.progress.setFormat(f"{text} %p%")

    def _on_done(self, path) -> None:
        self._running = False
        self.progress.hide()
        self.export_button.setEnabled(True)
        self.result.setText(f"Saved to {path}")
        self.last_path = str(path)
        self.open_button.show()
        self.exported.emit(str(path))

    def open_file(self) -> bool:
        """Open the last report with the desktop's default application; False (and a line) if none."""
        if not self.last_path:
            return False
        ok = QDesktopServices.openUrl(QUrl.fromLocalFile(self.last_path))
        if not ok:
            self.result.setText(f"Saved to {self.last_path} — no application to open it here; open it from "
                                "your file manager")
        return bool(ok)

    def _on_failed(self, exc: BaseException) -> None:
        self._running = False
        self.progress.hide()
        self.export_button.setEnabled(True)
        text = error_text(exc)
        self.result.setText(f"Export failed: {text}")
        self.error_occurred.emit(text)
