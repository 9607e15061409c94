"""The Sessions screen: stored history; open one (plots, figures, layers from the database,
loaded in a worker with progress), rename, delete (after confirmation), compare two."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.sessions_model import (
    Comparison,
    SessionsModel,
    StoredSession,
    compare_sessions,
    load_stored_session,
    session_rows,
)
from wattlens.app.gui.theme import PLOT

POLL_MS = 3000  # while the screen is shown: new sessions (e.g. recorded by the CLI) appear by themselves
COLUMNS = ("ID", "Name", "Target", "Started", "Duration", "Energy, target", "Energy, machine", "Status")
_SORT_ROLE = Qt.UserRole + 1


class _Item(QTableWidgetItem):
    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(_SORT_ROLE), other.data(_SORT_ROLE)
        if a is not None and b is not None:
            return a < b
        return super().__lt__(other)


def _listing(store) -> tuple[tuple, list]:
    """One worker call: the store's fingerprint (read first, so a session added meanwhile causes
    one more refresh rather than none) and the rows."""
    return store.sessions_fingerprint(), session_rows(store)


def _load_pair(store, a_id: int, b_id: int, grid: float | None, progress=None) -> Comparison:
    def sub(offset: float):
        return lambda text, f: progress(f"session {a_id if offset == 0 else b_id}: {text}", offset + f / 2) if progress else None

    a = load_stored_session(store, a_id, grid_g_per_kwh=grid, progress=sub(0.0))
    b = load_stored_session(store, b_id, grid_g_per_kwh=grid, progress=sub(0.5))
    return compare_sessions(a, b)


NOTES_LINES = 4  # the most lines of a stored session's notes shown at once (the rest scroll)


class QtSessionDetail(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.stored: StoredSession | None = None
        self.headline = QLabel(self)
        self.headline.setWordWrap(True)
        self.headline.setTextInteractionFlags(Qt.TextSelectableByMouse)
        f = self.headline.font()
        f.setBold(True)
        self.headline.setFont(f)
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setTextInteractionFlags(Qt.TextSelectableByMouse)
        # notes scroll within at most NOTES_LINES lines: however many there are (and however they
        # wrap), they never take the height the plots need (the plots were drawn over each other)
        self.notes_area = QScrollArea(self)
        self.notes_area.setWidgetResizable(True)
        self.notes_area.setFrameShape(QFrame.NoFrame)
        self.notes_area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.notes_area.setWidget(self.notes)
        self.notes_area.setMaximumHeight(NOTES_LINES * self.notes.fontMetrics().lineSpacing())  # whole lines: no sliver of a fifth
        from wattlens.app.gui.qt_session_panel import QtSessionPanel

        self.panel = QtSessionPanel(self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.headline)
        lay.addWidget(self.notes_area)
        lay.addWidget(self.panel, 1)

    def show_session(self, stored: StoredSession, grid: float | None) -> None:
        self.stored = stored
        self.headline.setText(stored.headline())
        notes = list(stored.summary.get("notes") or [])
        notes += [e.message for e in stored.events if e.kind in ("source-unavailable", "warning")]
        self.notes.setText("\n".join(f"• {n}" for n in notes[:6]))
        self.notes_area.setVisible(bool(notes))
        self.panel.clear()
        self.panel.set_cards(stored.cards(grid))
        self.panel.set_layers(stored.layers)
        self.panel.set_ranks(stored.ranks)
        ends = np.array([(s.t_end_ns - stored.series.start_ns) / 1e9 for s in stored.steps])
        self.panel.draw(stored.series, None, ends, paused=stored.paused_spans())

    def set_theme(self, theme: str) -> None:
        self.panel.set_theme(theme)


class QtCompareView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.comparison: Comparison | None = None
        self.title = QLabel(self)
        self.title.setWordWrap(True)
        f = self.title.font()
        f.setBold(True)
        self.title.setFont(f)
        from wattlens.app.gui.qt_plots import QtTimePlot

        self.plot = QtTimePlot("power", "W", self)
        self.table = QTableWidget(0, 5, self)
        self.table.setHorizontalHeaderLabels(["Figure", "First", "Second", "Δ (first − second)", "Δ %"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        split = QSplitter(Qt.Vertical, self)
        split.addWidget(self.plot)
        split.addWidget(self.table)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.note = QLabel(self)  # each session's methods: every "(estimated)" mark has its method in view
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(split, 1)
        lay.addWidget(self.note)

    def show_comparison(self, c: Comparison) -> None:
        self.comparison = c
        self.title.setText(c.title())
        self.plot.clear()
        palette = PLOT[self.plot.theme].series
        y_max, x_max = 0.0, 0.0
        for i, s in enumerate((c.a, c.b)):
            key = s.main_power_key()
            if key is None:
                continue
            t, v = s.series.get(key)
            what = "target process power" if key == "target/power_w" else f"{key.split('/')[0]} power"
            method = s.series.infos[key].method
            self.plot.set_curve(f"{i}:{key}", f"session {s.id} ({s.session['name']}): {what} — {method}",
                                t, v, color=palette[i], width=2.0 if i == 0 else 1.5, dash=i == 1)
            if len(v):
                y_max, x_max = max(y_max, float(np.nanmax(v))), max(x_max, float(t[-1]))
        self.plot.set_ranges(0.0, x_max, y_max)
        self.table.setHorizontalHeaderLabels(["Figure", f"Session {c.a.id}", f"Session {c.b.id}",
                                              f"Δ ({c.a.id} − {c.b.id})", "Δ %"])
        self.table.setRowCount(len(c.rows))
        for r, row in enumerate(c.rows):
            tips = ("", row.this_method, row.other_method,
                    "; ".join(m for m in (row.this_method, row.other_method) if m), "")
            for col, text in enumerate((row.figure, row.this, row.other, row.delta, row.delta_pct)):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if tips[col]:
                    item.setToolTip(tips[col])
                self.table.setItem(r, col, item)
        self.note.setText(c.methods_line())

    def set_theme(self, theme: str) -> None:
        self.plot.set_theme(theme)
        if self.comparison is not None:
            self.show_comparison(self.comparison)


class QtSessionsView(QWidget):
    error_occurred = Signal(str)
    sessions_changed = Signal()

    def __init__(self, model: SessionsModel, pool, get_store: Callable[[], object],
                 get_grid: Callable[[], float | None], parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.pool = pool
        self.get_store = get_store
        self.get_grid = get_grid
        self._loading = False
        self._fingerprint: tuple | None = None  # of the listing shown
        self._polling = False
        self.poll = QTimer(self)
        self.poll.setInterval(POLL_MS)
        self.poll.timeout.connect(self._on_poll)
        self.poll.start()

        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Filter by name, target, status or host")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._on_filter_changed)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setSortingEnabled(True)
        self.table.setWordWrap(False)
        h = self.table.horizontalHeader()
        for c in range(len(COLUMNS)):
            h.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        h.setSectionResizeMode(2, QHeaderView.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)
        self.table.doubleClicked.connect(lambda _i: self.open_selected())

        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.clicked.connect(self.refresh)
        self.open_button = QPushButton("Open", self)
        self.open_button.clicked.connect(self.open_selected)
        self.compare_button = QPushButton("Compare", self)
        self.compare_button.setToolTip("Select two sessions (Ctrl+click) to compare them")
        self.compare_button.clicked.connect(self.compare_selected)
        self.rename_button = QPushButton("Rename…", self)
        self.rename_button.clicked.connect(self._on_rename_clicked)
        self.delete_button = QPushButton("Delete…", self)
        self.delete_button.clicked.connect(self._on_delete_clicked)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.status = QLabel(self)

        self.hint = QLabel("Select a session and press <b>Open</b> to see its plots, figures and layers, "
                           "or select two (Ctrl+click) and press <b>Compare</b>.", self)
        self.hint.setAlignment(Qt.AlignCenter)
        self.hint.setWordWrap(True)
        self._detail: QtSessionDetail | None = None  # built on first use (pyqtgraph, cold start)
        self._compare: QtCompareView | None = None
        self.theme = "light"
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.hint)

        buttons = QHBoxLayout()
        buttons.addWidget(self.filter, 1)
        for b in (self.refresh_button, self.open_button, self.compare_button, self.rename_button, self.delete_button):
            buttons.addWidget(b)
        top = QWidget(self)
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(buttons)
        tl.addWidget(self.table, 1)
        status_row = QHBoxLayout()
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.progress)
        tl.addLayout(status_row)
        split = QSplitter(Qt.Vertical, self)
        split.addWidget(top)
        split.addWidget(self.stack)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        split.setSizes([250, 650])  # the list shows five or six rows, the opened session the rest
        self.split = split
        lay = QVBoxLayout(self)
        lay.addWidget(split)
        model.changed.connect(self._on_model_changed)
        self._on_model_changed()

    @property
    def detail(self) -> QtSessionDetail:
        if self._detail is None:
            self._detail = QtSessionDetail(self)
            self._detail.set_theme(self.theme)
            from wattlens.app.gui.qt_advisor import QtAdvisorPanel

            self._detail.advisor = QtAdvisorPanel(self.pool, self.get_store, self._detail)
            self._detail.panel.tabs.addTab(self._detail.advisor, "Advisor")
            self.stack.addWidget(self._detail)
        return self._detail

    @property
    def compare(self) -> QtCompareView:
        if self._compare is None:
            self._compare = QtCompareView(self)
            self._compare.set_theme(self.theme)
            self.stack.addWidget(self._compare)
        return self._compare

    # ---- loading ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        store = self.get_store()
        if store is None:
            self.model.set_rows([])
            self.status.setText("no database is open — choose one in Settings")
            return
        self.status.setText("reading sessions…")
        self.pool.submit(_listing, store, on_done=self._on_rows, on_error=self._on_failed)

    def _on_poll(self) -> None:
        """Timer tick: one aggregate query in a worker; the listing is reread only when it changed."""
        store = self.get_store()
        if store is None or self._polling or not self.isVisible():
            return
        self._polling = True
        try:
            self.pool.submit(store.sessions_fingerprint, on_done=self._on_polled, on_error=self._on_poll_failed)
        except RuntimeError:  # the window is closing: its pool takes no more work
            self._polling = False
            self.poll.stop()

    def _on_polled(self, fingerprint: tuple) -> None:
        self._polling = False
        if fingerprint != self._fingerprint:
            self.refresh()

    def _on_poll_failed(self, _exc: BaseException) -> None:
        self._polling = False  # a failed poll shows nothing: Refresh shows the error

    def stop(self) -> None:
        """No more polling (the window is closing)."""
        self.poll.stop()

    def selected_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [int(self.table.item(r, 0).data(_SORT_ROLE)) for r in rows]

    def select_ids(self, ids: list[int]) -> None:
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.MultiSelection)
        for r in range(self.table.rowCount()):
            if int(self.table.item(r, 0).data(_SORT_ROLE)) in ids:
                self.table.selectRow(r)
        self.table.setSelectionMode(mode)

    def open_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.open_session(ids[0])

    def open_session(self, session_id: int) -> None:
        store = self.get_store()
        if store is None or self._loading:
            return
        self._start_progress(f"opening session {session_id}…")
        self.pool.submit(load_stored_session, store, session_id, grid_g_per_kwh=self.get_grid(),
                         on_done=self._on_loaded, on_error=self._on_failed, on_progress=self._on_progress)

    def compare_selected(self) -> None:
        ids = sorted(self.selected_ids(), reverse=True)  # newer − older
        if len(ids) == 2:
            self.compare_sessions(ids[0], ids[1])

    def compare_sessions(self, a_id: int, b_id: int) -> None:
        store = self.get_store()
        if store is None or self._loading:
            return
        self._start_progress(f"comparing sessions {a_id} and {b_id}…")
        self.pool.submit(_load_pair, store, a_id, b_id, self.get_grid(), on_done=self._on_compared,
                         on_error=self._on_failed, on_progress=self._on_progress)

    # ---- rename / delete ---------------------------------------------------------------------------
    def _on_rename_clicked(self) -> None:
        ids = self.selected_ids()
        if len(ids) != 1:
            return
        row = self.model.get(ids[0])
        name, ok = QInputDialog.getText(self, "Rename session", f"New name for session {ids[0]}:",
                                        QLineEdit.Normal, row.name if row else "")
        if ok and name.strip():
            self.rename(ids[0], name.strip())

    def rename(self, session_id: int, name: str) -> None:
        store = self.get_store()
        self.pool.submit(store.rename_session, session_id, name, on_done=lambda _r: self._changed(),
                         on_error=self._on_failed)

    def _on_delete_clicked(self) -> None:
        ids = self.selected_ids()
        if not ids:
            return
        names = ", ".join(f"{i} ({self.model.get(i).name})" if self.model.get(i) else str(i) for i in ids)
        answer = QMessageBox.question(
            self, "Delete sessions", f"Delete session(s) {names} with all their samples? This cannot be undone.",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        if answer == QMessageBox.Yes:
            self.delete(ids)

    def delete(self, ids: list[int]) -> None:
        store = self.get_store()

        def work():
            for i in ids:
                store.delete_session(i)

        shown = {self._detail.stored.id} if self._detail is not None and self._detail.stored is not None else set()
        if self._compare is not None and self._compare.comparison is not None:
            shown |= {self._compare.comparison.a.id, self._compare.comparison.b.id}
        if shown & set(ids):
            self.stack.setCurrentWidget(self.hint)
        self.pool.submit(work, on_done=lambda _r: self._changed(), on_error=self._on_failed)

    def _changed(self) -> None:
        self.refresh()
        self.sessions_changed.emit()

    # ---- handlers ----------------------------------------------------------------------------------
    def _start_progress(self, text: str) -> None:
        self._loading = True
        self.status.setText(text)
        self.progress.setValue(0)
        self.progress.show()

    def _on_progress(self, text: str, fraction: float) -> None:
        self.progress.setValue(int(fraction * 100))
        self.progress.setFormat(f"{text} %p%")

    def _on_rows(self, result) -> None:
        self._fingerprint, rows = result
        self.model.set_rows(rows)

    def _on_loaded(self, stored: StoredSession) -> None:
        self._loading = False
        self.progress.hide()
        self.status.setText(f"session {stored.id} opened")
        self.detail.show_session(stored, self.get_grid())
        self.detail.advisor.show_session(stored.id)
        self.stack.setCurrentWidget(self.detail)

    def _on_compared(self, c: Comparison) -> None:
        self._loading = False
        self.progress.hide()
        self.status.setText(f"sessions {c.a.id} and {c.b.id} compared")
        self.compare.show_comparison(c)
        self.stack.setCurrentWidget(self.compare)

    def _on_failed(self, exc: BaseException) -> None:
        self._loading = False
        self.progress.hide()
        text = error_text(exc)
        self.status.setText(text)
        self.error_occurred.emit(text)

    def _on_filter_changed(self, _text: str) -> None:
        self._on_model_changed()

    def _on_model_changed(self) -> None:
        selected = self.selected_ids() if self.table.rowCount() else []
        text = self.filter.text().strip().lower()
        rows = [r for r in self.model.rows
                if not text or any(text in f.lower() for f in (r.name, r.target, r.status, r.host))]
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = ((str(r.id), r.id), (r.name, None), (r.target, None), (r.started_text, r.started_at),
                     (r.duration_text, r.duration_s), (r.target_energy_text, r.target_energy_j),
                     (r.energy_text, r.energy_j), (r.status, None))
            for col, (text_, key) in enumerate(cells):
                item = _Item(text_)
                if key is not None:
                    item.setData(_SORT_ROLE, float(key) if col else int(key))
                if col in (0, 4, 5, 6):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                item.setToolTip(text_)
                self.table.setItem(i, col, item)
        self.table.setSortingEnabled(True)
        if selected:
            self.select_ids(selected)
        n = len(self.model.rows)
        if not self._loading:
            running = sum(r.status == "running" for r in self.model.rows)
            self.status.setText((f"{n} stored session(s)" + (
                f"; {running} still recording: n/a until it ends — Open it for its figures so far"
                if running else "")) if n else "no sessions stored yet — attach to a process to record one")
        self._on_selection_changed()

    def _on_selection_changed(self) -> None:
        n = len(self.selected_ids()) if self.table.rowCount() else 0
        self.open_button.setEnabled(n == 1)
        self.compare_button.setEnabled(n == 2)
        self.rename_button.setEnabled(n == 1)
        self.delete_button.setEnabled(n >= 1)

    def set_theme(self, theme: str) -> None:
        self.theme = theme
        if self._compare is not None:
            self._compare.set_theme(theme)
        if self._detail is not None:
            self._detail.set_theme(theme)
            if self._detail.stored is not None:
                self._detail.show_session(self._detail.stored, self.get_grid())
