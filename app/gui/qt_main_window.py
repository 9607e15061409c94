"""The main window: six screens in tabs, a one-line message bar, and a status bar that says what
is being measured, how often, and into which database.

Everything slow runs in the window's worker pool: opening the database, discovering sources,
starting a session (py-spy may take seconds to attach), stopping it (threads join, last writes),
loading and exporting sessions. Closing the window finishes a running session as "stopped" and
waits for the workers; a program the user launched is ended only if they chose so.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget, QVBoxLayout, QWidget

from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.live_model import LiveModel
from wattlens.app.gui.models.live_session import LiveSession
from wattlens.app.gui.models.process_model import ProcessListModel
from wattlens.app.gui.models.run_model import LaunchRequest, LiveRun
from wattlens.app.gui.models.series_model import short_source
from wattlens.app.gui.models.sessions_model import SessionsModel
from wattlens.app.gui.models.settings_model import SettingsModel
from wattlens.app.gui.qt_attach import QtAttachView
from wattlens.app.gui.qt_export import QtExportView
from wattlens.app.gui.qt_live import QtLiveView
from wattlens.app.gui.qt_sessions import QtSessionsView
from wattlens.app.gui.qt_settings import QtDoctorView, QtSettingsView
from wattlens.app.gui.qt_widgets import QtMessageBar
from wattlens.app.gui.qt_workers import QtWorkerPool

WATCH_MS = 500  # how often the window checks whether a session ended by itself


def _open_store(db):
    from wattlens.profiler.store import Store

    return Store(db)


def _preload_plotting() -> None:
    """Import pyqtgraph and the plot views off the GUI thread (module code only, no widgets), so
    the first plot does not freeze the window; the import is about a second of CPU."""
    import wattlens.app.gui.qt_session_panel  # noqa: F401


def _discover(tdp_w):
    from wattlens.profiler.sources import discover

    found = discover(cpu_tdp_w=tdp_w)
    for s in found.usable:  # only for the status line and the TDP hint; sessions discover anew
        s.close()
    return found


class QtMainWindow(QMainWindow):
    TABS = ("Attach", "Live", "Sessions", "Export", "Settings", "Doctor")

    def __init__(self, settings_backend, *, db: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("wattlens — energy profiler")
        self.settings = SettingsModel(settings_backend)
        self.db_override = db
        self.pool = QtWorkerPool(self)
        self.store = None
        self.store_error: str | None = None
        self.discovery = None
        self.live = LiveSession()  # the running session's state and start/stop/watch logic
        self._closed = False
        self._launch_when_ready: tuple[LaunchRequest, str] | None = None

        self.processes = ProcessListModel()
        self.sessions_model = SessionsModel()
        self.messages = QtMessageBar(self)
        self.attach_view = QtAttachView(self.processes, self.pool, self)
        self.live_view = QtLiveView(self)
        self.sessions_view = QtSessionsView(self.sessions_model, self.pool, lambda: self.store,
                                            lambda: self.settings.values.grid_g_per_kwh, self)
        self.export_view = QtExportView(self.sessions_model, self.pool, lambda: self.store,
                                        lambda: self.settings.values.grid_g_per_kwh, self)
        self.settings_view = QtSettingsView(self.settings, db_override=db, tdp_hint=self._tdp_hint, parent=self)
        self.doctor_view = QtDoctorView(self.pool, self.db, self)
        self.tabs = QTabWidget(self)
        for view, name in zip((self.attach_view, self.live_view, self.sessions_view, self.export_view,
                               self.settings_view, self.doctor_view), self.TABS, strict=True):
            self.tabs.addTab(view, name)
        central = QWidget(self)
        lay = QVBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 0)
        lay.addWidget(self.messages)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.status_label = QLabel(self)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.statusBar().addWidget(self.status_label, 1)

        self.attach_view.attach_requested.connect(self.attach)
        self.attach_view.launch_requested.connect(self.launch)
        self.live_view.stop_requested.connect(self.stop_session)
        for v in (self.sessions_view, self.export_view, self.settings_view):
            v.error_occurred.connect(self.show_error)
        self.sessions_view.sessions_changed.connect(self.sessions_view.refresh)
        self.export_view.exported.connect(lambda p: self.messages.show_info(f"Report saved to {p}"))
        self.settings.changed.connect(self._on_settings_changed)
        self.tabs.currentChanged.connect(self._on_tab_changed)
        self.watch = QTimer(self)
        self.watch.setInterval(WATCH_MS)
        self.watch.timeout.connect(self._on_watch)

        self.resize(1280, 860)
        self._apply_theme(self.settings.values.theme)
        self._update_status()
        # the slow start-up work waits for the first paint: the window appears first
        self._background_started = False
        self.installEventFilter(self)

    # ---- start-up ---------------------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if obj is self and event.type() == QEvent.Paint and not self._background_started:
            self.removeEventFilter(self)
            QTimer.singleShot(0, self.start_background)
        return False

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        QTimer.singleShot(1000, self.start_background)  # in case no paint event comes

    def start_background(self) -> None:
        """Open the database, discover sources, list processes, and import the plotting code —
        all in workers. Runs once, after the first paint (or call it for a window never shown)."""
        if self._background_started or self._closed:
            return
        self._background_started = True
        self.open_database()
        self.pool.submit(_discover, self.settings.values.effective_tdp_w(),
                         on_done=self._on_discovered, on_error=lambda e: None)
        self.attach_view.refresh()
        self.pool.submit(_preload_plotting, on_error=lambda e: None)

    # ---- database ---------------------------------------------------------------------------------
    def db(self) -> str | None:
        return self.settings.values.effective_db(self.db_override)

    def open_database(self) -> None:
        self.pool.submit(_open_store, self.db(), on_done=self._on_store_opened, on_error=self._on_store_failed)

    def _on_store_opened(self, store) -> None:
        old = self.store
        self.store, self.store_error = store, None
        if old is not None and (self.run is None or self.run.session.store is not old):
            old.close()
        self._update_status()
        self.sessions_view.refresh()
        if self._launch_when_ready is not None:
            req, name = self._launch_when_ready
            self._launch_when_ready = None
            self.launch(req, name)

    def _on_store_failed(self, exc: BaseException) -> None:
        self.store = None
        self.store_error = error_text(exc)
        self.show_error(self.store_error)
        self.sessions_model.set_rows([])
        self.sessions_view.status.setText(f"no database: {self.store_error}")
        self._update_status()

    def _on_discovered(self, found) -> None:
        self.discovery = found
        self.settings_view.tdp_note.setText(self._tdp_hint())
        self._update_status()

    def _tdp_hint(self) -> str:
        if self.discovery is None:
            return ""
        for s in self.discovery.usable:
            if s.id == "cpu-model":
                return f"Now: {s.describe().get('tdp_source', '')}. CPU power is an estimate (TDP × load)."
        return "A CPU energy counter (RAPL) is used here; the TDP model is not needed."

    # ---- sessions -----------------------------------------------------------------------------------
    def attach(self, pid: int) -> None:
        if not self._may_start():
            return
        store, settings = self.store, self.settings.values
        self.messages.show_info(f"attaching to PID {pid}…")
        self._begin_start(lambda: LiveRun.attach(store, settings, pid))

    def launch(self, req: LaunchRequest, name: str = "") -> None:
        if not self._may_start():
            return
        store, settings = self.store, self.settings.values
        self.messages.show_info(f"launching {' '.join(req.command)[:200]}…")
        self._begin_start(lambda: LiveRun.launch(store, settings, req, name=name or None))

    def launch_when_ready(self, req: LaunchRequest, name: str = "") -> None:
        """Launch as soon as the database is open (``run_gui(launch=...)``, ``wattlens demo``)."""
        if self.store is not None:
            self.launch(req, name)
        else:
            self._launch_when_ready = (req, name)

    @property
    def run(self) -> LiveRun | None:
        return self.live.run

    @property
    def live_model(self) -> LiveModel | None:
        return self.live.model

    def _may_start(self) -> bool:
        why = self.live.refuse_start(self.store, self.store_error)
        if why:
            self.show_error(why)
        return why is None

    def _begin_start(self, factory) -> None:
        self.attach_view.attach_button.setEnabled(False)
        self.pool.submit(self.live.start_work(factory), on_done=self._on_started, on_error=self._on_start_failed)

    def _on_started(self, run: LiveRun) -> None:
        self.live_view.set_model(self.live.started(run, self.settings.values.grid_g_per_kwh))
        self.tabs.setCurrentWidget(self.live_view)
        notes = "; ".join(run.session.notes)
        if notes:
            self.messages.show_info(f"session {run.session.session_id} started — {notes}")
        else:
            self.messages.hide()
        self.watch.start()
        self.attach_view.update_buttons()
        self._update_status()

    def _on_start_failed(self, exc: BaseException) -> None:
        text = self.live.start_failed(exc)
        self.attach_view.update_buttons()
        self.show_error(text)

    def stop_session(self, end_program: bool = False, status: str = "stopped",
                     reason: str = "stopped by the user") -> None:
        work = self.live.stop_work(end_program, status, reason)
        if work is None:
            return
        self.watch.stop()
        self.pool.submit(work, on_done=lambda summary, s=status, r=reason: self._on_stopped(s, r),
                         on_error=self._on_stop_failed)

    def _on_stopped(self, status: str, reason: str) -> None:
        text, is_error = self.live.stopped(status, reason)
        (self.show_error if is_error else self.messages.show_info)(text)
        self.sessions_view.refresh()
        self.attach_view.update_buttons()
        self._update_status()

    def _on_stop_failed(self, exc: BaseException) -> None:
        self.show_error(self.live.stop_failed(exc))
        self.sessions_view.refresh()
        self._update_status()

    def _on_watch(self) -> None:
        result = self.live.watch()
        if result.writer_error:
            self.show_error(result.writer_error)
        if result.end is not None:
            self.stop_session(False, *result.end)

    # ---- messages, status, settings ---------------------------------------------------------------------
    def show_error(self, text: str | BaseException) -> None:
        self.messages.show_error(text if isinstance(text, str) else error_text(text))

    def _update_status(self) -> None:
        db = self.store.display_name if self.store is not None else (self.db() or "default database")
        db_text = f"database: {db}" if self.store is not None else f"database: {db} (not open)"
        if self.run is not None and self.live_model is not None:
            t = self.run.session.target
            who = f"PID {t.pid} ({t.name})" if t else "the whole machine"
            text = f"● Measuring {who}: {self.live_model.measuring_text()} → session {self.run.session.session_id} · {db_text}"
        else:
            can = ""
            if self.discovery is not None:
                srcs = ", ".join(f"{short_source(s.id, s.label)} [{s.method}]" for s in self.discovery.usable)
                cannot = ", ".join(u.source_id for u in self.discovery.unavailable)
                can = f"Can measure: {srcs or 'nothing'}" + (f" (not: {cannot} — see Doctor)" if cannot else "") + " · "
            text = f"Not measuring · {can}{db_text}"
        self.status_label.setText(text)

    def _on_settings_changed(self, new, old) -> None:
        if new.theme != old.theme:
            self._apply_theme(new.theme)
        if new.db != old.db and not self.db_override:
            self.open_database()
        if new.cpu_tdp_w != old.cpu_tdp_w:
            self.pool.submit(_discover, new.effective_tdp_w(), on_done=self._on_discovered,
                             on_error=lambda e: None)
        self.live.set_grid(new.grid_g_per_kwh)

    def _apply_theme(self, theme: str) -> None:
        from PySide6.QtWidgets import QApplication

        from wattlens.app.gui.theme import apply_theme

        app = QApplication.instance()
        if app is not None:
            apply_theme(app, theme)
        self.messages.set_theme(theme)
        self.live_view.set_theme(theme)
        self.sessions_view.set_theme(theme)
        self.attach_view.table.viewport().update()

    def _on_tab_changed(self, index: int) -> None:
        view = self.tabs.widget(index)
        if view is self.doctor_view and not self.doctor_view.rows:
            self.doctor_view.refresh()
        elif view is self.attach_view:
            self.attach_view.refresh()

    # ---- closing --------------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Finish any running session as "stopped", wait for the workers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.watch.stop()
        self.attach_view.stop()
        self.sessions_view.stop()
        self.live_view.shutdown()
        self.pool.shutdown()
        self.live.shutdown()
        if self.store is not None:
            self.store.close()
