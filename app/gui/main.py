"""Start the desktop app: ``run_gui(db=...)`` (what ``wattlens gui`` calls) and
``build_main_window`` (tests, scripts, benchmarks).

Settings persist with QSettings in the user's config folder (INI format), or in the file named by
``WATTLENS_SETTINGS`` (an INI path: tests and scripts use a temporary one).

``WATTLENS_GUI_EXIT_AFTER_PAINT=1`` makes the app print ``first-paint-monotonic=<time.monotonic()>``
on stderr once the window has painted, then quit: a smoke test of the whole start-up path
(benchmarks/bench_gui.py measures cold start with it: CLOCK_MONOTONIC is shared by all processes,
so the parent subtracts its own reading taken just before it started the process).
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("wattlens.gui")


def _import_qt():
    try:
        import PySide6  # noqa: F401
    except ImportError as exc:  # a missing binding says what to install
        from wattlens.profiler.errors import WattlensError

        raise WattlensError(f"the GUI needs PySide6 and pyqtgraph ({exc})",
                            hint="pip install 'PySide6-Essentials>=6.6' 'pyqtgraph>=0.13.7'") from None
    from wattlens.app.gui._qt_compat import protect_singletons

    protect_singletons()  # before the first few thousand Qt calls (see _qt_compat)
    try:
        import pyqtgraph  # noqa: F401
    except ImportError as exc:
        from wattlens.profiler.errors import WattlensError

        raise WattlensError(f"the GUI needs pyqtgraph ({exc})", hint="pip install 'pyqtgraph>=0.13.7'") from None


def has_display() -> bool:
    """Whether Qt can open a window here (or was told to draw offscreen)."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return True  # an explicit platform (offscreen, wayland, vnc ...): Qt was told what to use
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def check_qt_can_start(environ=None, has=None, not_found=None) -> None:
    """Before a QApplication exists: on X11, raise one line naming the missing system libraries and
    the apt/dnf line, where Qt would abort with a page that blames ``xcb-cursor0`` whatever is missing."""
    from wattlens.app.syslibs import missing_qt_libraries, uses_xcb

    if not uses_xcb(environ):
        return
    found = missing_qt_libraries(has, not_found)
    if found.ok:
        return
    from wattlens.profiler.errors import WattlensError

    raise WattlensError(f"the app cannot open a window: Qt's X11 plugin needs {', '.join(found.sonames)}",
                        hint=found.install_line() + " (`wattlens doctor` lists the system libraries)")


def make_settings_backend(path: str | None = None):
    """QSettings in INI format: ``path`` / WATTLENS_SETTINGS, else the user's config folder."""
    from PySide6.QtCore import QSettings

    path = path or os.environ.get("WATTLENS_SETTINGS")
    if path:
        return QSettings(path, QSettings.IniFormat)
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "wattlens", "wattlens")


def ensure_app(argv: list[str] | None = None):
    _import_qt()
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else [sys.argv[0]])
        app.setOrganizationName("wattlens")
        app.setApplicationName("wattlens")
    return app


def build_main_window(db: str | None = None, settings_path: str | None = None, settings_backend=None):
    """A ready QtMainWindow (not shown). The QApplication must exist (``ensure_app``)."""
    _import_qt()
    from wattlens.app.gui.qt_main_window import QtMainWindow

    backend = settings_backend if settings_backend is not None else make_settings_backend(settings_path)
    return QtMainWindow(backend, db=db)


class _FirstPaint:
    """Event filter: note the first paint of the window; optionally quit right after."""

    def __init__(self, window, quit_after: bool):
        from PySide6.QtCore import QEvent, QObject

        class Filter(QObject):
            def eventFilter(inner, obj, event):  # noqa: N802, N805
                if event.type() == QEvent.Paint and not self.done:
                    self.done = True
                    self.on_paint()
                return False

        self.done = False
        self.quit_after = quit_after
        self.filter = Filter(window)
        window.installEventFilter(self.filter)

    def on_paint(self) -> None:
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication

        if self.quit_after:
            print(f"first-paint-monotonic={time.monotonic():.6f} cpu-s={time.process_time():.3f}",
                  file=sys.stderr, flush=True)
            QTimer.singleShot(0, QApplication.instance().quit)


def run_gui(db: str | None = None, *, settings_path: str | None = None, launch: list[str] | None = None,
            launch_name: str | None = None, cwd: str | None = None) -> int:
    """Open the window and run until it is closed. Returns the exit code.

    ``launch``: a command to start in run mode as soon as the database is open (what
    ``wattlens demo`` uses to open the app on its bundled workload)."""
    _import_qt()
    if not has_display():  # Qt would abort the process with a page of plugin messages
        from wattlens.profiler.errors import BadInputError

        raise BadInputError("no display to open the app on (DISPLAY and WAYLAND_DISPLAY are unset)",
                            hint="run it in a desktop session, or use the CLI: `wattlens attach PID`, "
                                 "`wattlens demo --headless`")
    check_qt_can_start()
    app = ensure_app()
    window = build_main_window(db=db, settings_path=settings_path)
    if launch:
        from wattlens.app.gui.models.run_model import LaunchRequest

        window.launch_when_ready(LaunchRequest(list(launch), cwd), launch_name or "")
    quit_after = bool(os.environ.get("WATTLENS_GUI_EXIT_AFTER_PAINT"))
    _paint = _FirstPaint(window, quit_after)  # noqa: F841 - kept alive for the event filter

    def excepthook(kind, value, tb):  # an exception in a slot: one line in the window, not a crash
        from wattlens.app.gui.models.errors import error_text

        log.error("unhandled exception", exc_info=(kind, value, tb))
        try:
            window.show_error(error_text(value))
        except RuntimeError:
            sys.__excepthook__(kind, value, tb)

    sys.excepthook = excepthook
    window.show()
    try:
        code = app.exec()
    finally:
        window.shutdown()
        sys.excepthook = sys.__excepthook__
    return int(code or 0)
