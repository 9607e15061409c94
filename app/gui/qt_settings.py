"""The Settings screen (persisted with QSettings through SettingsModel) and the Doctor screen."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.doctor_model import DoctorRow, doctor_rows
from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.settings_model import THEMES, GuiSettings, SettingsModel
from wattlens.profiler.errors import BadInputError


class QtSettingsView(QWidget):
    error_occurred = Signal(str)

    def __init__(self, model: SettingsModel, *, db_override: str | None = None,
                 tdp_hint: Callable[[], str] | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.db = QLineEdit(self)
        self.db.setPlaceholderText("(default: WATTLENS_DB, else wattlens.db in your user data folder)")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse)
        db_row = QHBoxLayout()
        db_row.addWidget(self.db, 1)
        db_row.addWidget(browse)
        self.db_note = QLabel(self)
        self.db_note.setWordWrap(True)
        if db_override:
            self.db_note.setText(f"This window uses --db {db_override} from the command line; the setting "
                                 "applies when wattlens starts without --db.")
        self.db_note.setVisible(bool(db_override))
        self.interval = QDoubleSpinBox(self)
        self.interval.setRange(0.01, 10.0)
        self.interval.setDecimals(2)
        self.interval.setSingleStep(0.05)
        self.interval.setSuffix(" s")
        self.stacks = QCheckBox("sample Python stacks in attach mode (layer figures; needs py-spy)", self)
        self.stack_rate = QSpinBox(self)
        self.stack_rate.setRange(1, 1000)
        self.stack_rate.setSuffix(" Hz")
        self.stacks.toggled.connect(self.stack_rate.setEnabled)
        self.grid = QDoubleSpinBox(self)
        self.grid.setRange(0, 2000)
        self.grid.setDecimals(0)
        self.grid.setSuffix(" gCO₂/kWh")
        self.tdp_override = QCheckBox("override", self)
        self.tdp = QSpinBox(self)
        self.tdp.setRange(1, 2000)
        self.tdp.setSuffix(" W")
        self.tdp_override.toggled.connect(self.tdp.setEnabled)
        tdp_row = QHBoxLayout()
        tdp_row.addWidget(self.tdp_override)
        tdp_row.addWidget(self.tdp)
        tdp_row.addStretch(1)
        self.tdp_note = QLabel(tdp_hint() if tdp_hint else "", self)
        self.tdp_note.setWordWrap(True)
        self.theme = QComboBox(self)
        for t in THEMES:
            self.theme.addItem(t.capitalize(), t)
        for w in (self.interval, self.stack_rate, self.grid, self.theme):
            w.setMaximumWidth(220)
        self.apply_button = QPushButton("Apply", self)
        self.apply_button.clicked.connect(self.apply)
        self.revert_button = QPushButton("Revert", self)
        self.revert_button.clicked.connect(self.load)
        self.result = QLabel(self)
        self.result.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Database:", db_row)
        form.addRow("", self.db_note)
        form.addRow("Power sampling interval:", self.interval)
        form.addRow("Stack sampling:", self.stacks)
        form.addRow("Stack sampling rate:", self.stack_rate)
        form.addRow("Grid carbon intensity:", self.grid)
        form.addRow("", QLabel("used for every CO₂ figure; the default 475 is a world average — look up "
                               "your grid's figure", self))
        form.addRow("CPU TDP (power model):", tdp_row)
        form.addRow("", self.tdp_note)
        form.addRow("Theme:", self.theme)
        buttons = QHBoxLayout()
        buttons.addWidget(self.result, 1)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.apply_button)
        lay = QVBoxLayout(self)
        note = QLabel("Sampling settings apply to the next session.", self)
        lay.addWidget(note)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addStretch(1)
        model.changed.connect(self._on_model_changed)
        self.load()

    def load(self) -> None:
        v = self.model.values
        self.db.setText(v.db)
        self.interval.setValue(v.interval_s)
        self.stacks.setChecked(v.stacks)
        self.stack_rate.setValue(v.stack_rate_hz)
        self.stack_rate.setEnabled(v.stacks)
        self.grid.setValue(v.grid_g_per_kwh)
        self.tdp_override.setChecked(v.cpu_tdp_w is not None)
        self.tdp.setValue(int(v.cpu_tdp_w) if v.cpu_tdp_w is not None else 65)
        self.tdp.setEnabled(v.cpu_tdp_w is not None)
        self.theme.setCurrentIndex(max(0, self.theme.findData(v.theme)))

    def form_values(self) -> dict:
        return {
            "db": self.db.text().strip(), "interval_s": round(self.interval.value(), 3),
            "stacks": self.stacks.isChecked(), "stack_rate_hz": self.stack_rate.value(),
            "grid_g_per_kwh": self.grid.value(),
            "cpu_tdp_w": float(self.tdp.value()) if self.tdp_override.isChecked() else None,
            "theme": self.theme.currentData(),
        }

    def apply(self) -> GuiSettings | None:
        try:
            new = self.model.update(**self.form_values())
        except BadInputError as exc:
            text = error_text(exc)
            self.result.setText(text)
            self.error_occurred.emit(text)
            return None
        self.result.setText("saved")
        return new

    def _on_model_changed(self, _new, _old) -> None:
        self.load()

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Database file", self.db.text(), "wattlens database (*.db)",
                                              options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.db.setText(path)


class QtDoctorView(QWidget):
    """What can be measured here and the fix for everything that cannot (runs in a worker)."""

    def __init__(self, pool, get_db: Callable[[], str | None], parent: QWidget | None = None):
        super().__init__(parent)
        self.pool = pool
        self.get_db = get_db
        self.rows: list[DoctorRow] = []
        intro = QLabel("What wattlens can measure on this machine, what it cannot, and how to fix each. "
                       "The same as <code>wattlens doctor</code>.", self)
        intro.setWordWrap(True)
        self.table = QTableWidget(0, 4, self)
        self.table.setHorizontalHeaderLabels(["", "What", "Details", "Fix"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setWordWrap(True)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        h.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        h.setSectionResizeMode(2, QHeaderView.Stretch)
        h.setSectionResizeMode(3, QHeaderView.Stretch)
        self.status = QLabel(self)
        self.refresh_button = QPushButton("Check again", self)
        self.refresh_button.clicked.connect(self.refresh)
        row = QHBoxLayout()
        row.addWidget(self.status, 1)
        row.addWidget(self.refresh_button)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)

    def refresh(self) -> None:
        self.status.setText("checking…")
        self.refresh_button.setEnabled(False)
        self.pool.submit(doctor_rows, self.get_db(), on_done=self._on_rows, on_error=self._on_failed)

    def _on_rows(self, rows: list[DoctorRow]) -> None:
        self.rows = rows
        self.refresh_button.setEnabled(True)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            mark = QTableWidgetItem("✓" if row.ok else "✗")
            mark.setForeground(Qt.darkGreen if row.ok else Qt.red)
            mark.setTextAlignment(Qt.AlignCenter)
            self.table.setItem(r, 0, mark)
            for c, text in enumerate((row.what, row.detail, row.fix), start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(r, c, item)
        self.table.resizeRowsToContents()
        n_bad = sum(not r.ok for r in rows)
        self.status.setText(f"{len(rows) - n_bad} fine, {n_bad} to look at" if n_bad else "everything is fine")

    def _on_failed(self, exc: BaseException) -> None:
        self.refresh_button.setEnabled(True)
        self.status.setText(f"the check failed: {error_text(exc)}")
