"""The Attach screen: pick a running process (Python first, torch and GPU use marked), or launch
a command under wattlens. Listing processes and reading /proc/PID/maps run in workers."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QAbstractTableModel, QEvent, QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.format import si
from wattlens.app.gui.models.process_model import (
    GpuState,
    ProcessInfo,
    ProcessListModel,
    check_torch,
    gpu_processes,
    scan_processes,
)
from wattlens.app.gui.models.run_model import LaunchRequest
from wattlens.profiler.errors import BadInputError

COLUMNS = ("PID", "Name", "Python", "torch", "CPU %", "GPU memory", "Memory (RSS)", "User", "Command")
TORCH_BATCH = 16
AUTO_REFRESH_MS = 2000  # the list rescans itself (in a worker) while the screen is shown
POINTER_HOLD_S = 5.0  # no rescan while the pointer moved over the list this recently


def scan(exclude: set[int]) -> tuple[list[ProcessInfo], GpuState]:
    """One worker call: the process list and which PIDs use a GPU."""
    return scan_processes(exclude), gpu_processes()


class QtProcessTable(QAbstractTableModel):
    """A read-only Qt view of ``ProcessListModel.visible()``; reset whenever the model changes."""

    def __init__(self, model: ProcessListModel, parent=None):
        super().__init__(parent)
        self.model = model
        self.rows: list[ProcessInfo] = []
        self._bold = QFont()
        self._bold.setBold(True)

    def refresh(self) -> None:
        self.beginResetModel()
        self.rows = self.model.visible()
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008
        return len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):  # noqa: N802
        if role == Qt.DisplayRole and orientation == Qt.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.DisplayRole):
        p = self.rows[index.row()]
        col = index.column()
        if role == Qt.DisplayRole:
            if col == 0:
                return str(p.pid)
            if col == 1:
                return p.name
            if col == 2:
                return "yes" if p.is_python else ""
            if col == 3:
                return p.torch_text
            if col == 4:
                return "…" if p.cpu_percent is None else f"{p.cpu_percent:.0f}"
            if col == 5:
                if p.on_gpu:
                    return si(p.gpu_mem_bytes, "B", missing="on GPU (memory hidden)")
                return "" if self.model.gpu.processes is not None else "unknown"
            if col == 6:
                return si(p.rss_bytes, "B", missing="")
            if col == 7:
                return p.user or ""
            return p.cmdline
        if role == Qt.FontRole and (p.torch or p.on_gpu):
            return self._bold
        if role == Qt.ForegroundRole and col == 5 and not p.on_gpu:
            return QColor(Qt.gray)
        if role == Qt.ToolTipRole:
            if col == 4:
                return ("CPU use between the last two scans, % of one core (polled)" if p.cpu_percent is not None
                        else "measured from the second scan on (two readings are needed)")
            return p.cmdline
        if role == Qt.TextAlignmentRole and col in (0, 4, 5, 6):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None

    def pid_at(self, row: int) -> int | None:
        return self.rows[row].pid if 0 <= row < len(self.rows) else None

    def row_of(self, pid: int) -> int | None:
        return next((i for i, p in enumerate(self.rows) if p.pid == pid), None)


class QtLaunchDialog(QDialog):
    """Run mode: a command line, a working directory, extra environment variables."""

    def __init__(self, parent: QWidget | None = None, *, cwd: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Launch a program under wattlens")
        self.request: LaunchRequest | None = None
        self.command = QLineEdit(self)
        self.command.setPlaceholderText("python train.py --epochs 1")
        self.cwd = QLineEdit(cwd, self)
        self.cwd.setPlaceholderText("(this folder: " + os.getcwd() + ")")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse)
        cwd_row = QHBoxLayout()
        cwd_row.addWidget(self.cwd, 1)
        cwd_row.addWidget(browse)
        self.env = QPlainTextEdit(self)
        self.env.setPlaceholderText("NAME=VALUE, one per line (added to wattlens' own environment)")
        self.env.setFixedHeight(90)
        self.name = QLineEdit(self)
        self.name.setPlaceholderText("(default: the command)")
        self.error = QLabel(self)
        self.error.setStyleSheet("color: #B3261E;")
        self.error.setWordWrap(True)
        self.error.hide()
        note = QLabel("wattlens measures the program's power and energy while it runs. When you stop the "
                      "session you may choose to end the program too; otherwise it keeps running.", self)
        note.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Command:", self.command)
        form.addRow("Working directory:", cwd_row)
        form.addRow("Environment:", self.env)
        form.addRow("Session name:", self.name)
        buttons = QDialogButtonBox(QDialogButtonBox.Cancel, self)
        self.ok_button = buttons.addButton("Launch and measure", QDialogButtonBox.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(note)
        lay.addLayout(form)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.resize(560, 320)

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Working directory", self.cwd.text() or os.getcwd())
        if folder:
            self.cwd.setText(folder)

    def accept(self) -> None:
        try:
            self.request = LaunchRequest.parse(self.command.text(), self.cwd.text(), self.env.toPlainText())
        except BadInputError as exc:
            self.error.setText(error_text(exc))
            self.error.show()
            return
        super().accept()


class QtAttachView(QWidget):
    attach_requested = Signal(int)  # PID
    launch_requested = Signal(object, str)  # LaunchRequest, session name ("" = default)

    def __init__(self, model: ProcessListModel, pool, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.pool = pool
        self.table_model = QtProcessTable(model, self)
        self._scanning = False
        self._torch_pending = 0

        intro = QLabel("Pick the process to measure — your training or inference job. Python processes "
                       "come first; <b>bold</b> ones have torch loaded or use a GPU.", self)
        intro.setWordWrap(True)
        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Filter by name, command or PID")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._on_filter_changed)
        self.table = QTableView(self)
        self.table.setModel(self.table_model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        h = self.table.horizontalHeader()
        for c in range(len(COLUMNS) - 1):
            h.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        h.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.Stretch)
        self.table.doubleClicked.connect(self._on_double_clicked)
        self.table.viewport().setMouseTracking(True)
        self.table.viewport().installEventFilter(self)
        self._pointer_moved_at = float("-inf")
        self.gpu_label = QLabel(self)
        self.gpu_label.setWordWrap(True)
        self.status = QLabel(self)
        self.python_only = QCheckBox("Python only", self)
        self.python_only.setToolTip("Hide kernel threads, shells and every other non-Python process")
        self.python_only.setChecked(model.python_only)
        self.python_only.toggled.connect(model.set_python_only)
        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.setToolTip(f"The list also refreshes by itself every {AUTO_REFRESH_MS / 1000:g} s, "
                                       "except while the pointer moves over it: rows stay put while you pick one")
        self.refresh_button.clicked.connect(self.refresh)
        self.auto_refresh = QTimer(self)
        self.auto_refresh.setInterval(AUTO_REFRESH_MS)
        self.auto_refresh.timeout.connect(self._on_auto_refresh)
        self.auto_refresh.start()
        self.launch_button = QPushButton("Launch…", self)
        self.launch_button.setToolTip("Start a command under wattlens (run mode)")
        self.launch_button.clicked.connect(self._on_launch_clicked)
        self.attach_button = QPushButton("Attach", self)
        self.attach_button.setDefault(True)
        self.attach_button.setEnabled(False)
        self.attach_button.clicked.connect(self._on_attach_clicked)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)

        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.python_only)
        top.addWidget(self.refresh_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.launch_button)
        bottom.addWidget(self.attach_button)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.gpu_label)
        lay.addLayout(bottom)
        model.changed.connect(self._on_model_changed)
        self._on_model_changed()

    # ---- actions ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self._scanning:
            return
        self._scanning = True
        if not self.model.all():
            self.status.setText("listing processes…")
        self.pool.submit(scan, {os.getpid()}, on_done=self._on_scanned, on_error=self._on_scan_failed)

    def stop(self) -> None:
        """No more automatic rescans (the window is closing)."""
        self.auto_refresh.stop()

    def _on_auto_refresh(self) -> None:
        """Timer tick: rescan in a worker while the screen is shown (never blocks the UI thread)."""
        if self.isVisible() and not self._scanning and self._torch_pending <= 0 and not self._picking():
            try:
                self.refresh()
            except RuntimeError:  # the window is closing: its pool takes no more work
                self._scanning = False
                self.auto_refresh.stop()

    def _picking(self) -> bool:
        """Is the user about to click a row (the pointer moved over the list in the last few
        seconds)? A rescan then would move the rows: a process that starts or ends shifts them,
        and the row under the pointer would be another process when the click comes. A pointer
        left resting on the list does not stop the list from following new processes."""
        return (self.table.viewport().underMouse()
                and time.monotonic() - self._pointer_moved_at < POINTER_HOLD_S)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.MouseMove, QEvent.Enter) and obj is self.table.viewport():
            self._pointer_moved_at = time.monotonic()
        return super().eventFilter(obj, event)

    def selected_pid(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table_model.pid_at(rows[0].row()) if rows else None

    def select_pid(self, pid: int) -> bool:
        row = self.table_model.row_of(pid)
        if row is None:
            return False
        self.table.selectRow(row)
        return True

    # ---- handlers --------------------------------------------------------------------------------
    def _on_scanned(self, result) -> None:
        self._scanning = False
        rows, gpu = result
        self.model.set_processes(rows, gpu)
        pending = self.model.pending_torch_checks()
        self._torch_pending = len(pending)
        for i in range(0, len(pending), TORCH_BATCH):
            self.pool.submit(check_torch, pending[i:i + TORCH_BATCH], on_done=self._on_torch_checked,
                             on_error=self._on_scan_failed)

    def _on_torch_checked(self, results) -> None:
        self._torch_pending -= len(results)
        self.model.set_torch_many(results)

    def _on_scan_failed(self, exc) -> None:
        self._scanning = False
        self._torch_pending = 0
        self.status.setText(f"could not list processes: {error_text(exc)}")

    def _on_model_changed(self) -> None:
        pid = self.selected_pid()
        self.table_model.refresh()
        if pid is not None:
            self.select_pid(pid)
        rows = self.model.all()
        n_py = sum(p.is_python for p in rows)
        n_torch = sum(p.torch is True for p in rows)
        checking = " (checking for torch…)" if self._torch_pending > 0 else ""
        if not self._scanning:
            self.status.setText(f"{len(rows)} processes, {n_py} Python, {n_torch} with torch{checking}")
        self.gpu_label.setText(self.model.gpu_note)
        self._on_selection_changed()

    def _on_filter_changed(self, text: str) -> None:
        self.model.set_filter(text)

    def _on_selection_changed(self, *_args) -> None:
        self.update_buttons()

    def update_buttons(self) -> None:
        self.attach_button.setEnabled(self.selected_pid() is not None)

    def _on_double_clicked(self, index) -> None:
        pid = self.table_model.pid_at(index.row())
        if pid is not None:
            self.attach_requested.emit(pid)

    def _on_attach_clicked(self) -> None:
        pid = self.selected_pid()
        if pid is not None:
            self.attach_requested.emit(pid)

    def _on_launch_clicked(self) -> None:
        dlg = QtLaunchDialog(self)
        if dlg.exec() == QDialog.Accepted and dlg.request is not None:
            self.launch_requested.emit(dlg.request, dlg.name.text().strip())
        dlg.deleteLater()
