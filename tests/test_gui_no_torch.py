"""Process-level checks of the GUI, each in a fresh interpreter: it never imports torch or
transformers (after building the main window, running a live session with stack sampling on a
child, stopping it and opening it from the database), and it survives the installed Qt binding's
reference-count bug (see app/gui/_qt_compat.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, time, subprocess
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from wattlens.app.gui.main import build_main_window, ensure_app
    from wattlens.app.gui.models.settings_model import MemorySettings

    app = ensure_app()
    w = build_main_window(db=sys.argv[1], settings_backend=MemorySettings())
    w.show()

    def spin_until(cond, timeout_s=30.0):
        end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > end:
                raise SystemExit("timed out: " + w.messages.text)
            app.processEvents()
            time.sleep(0.01)

    spin_until(lambda: w.store is not None)
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\\nt = time.monotonic()\\nwhile time.monotonic() - t < 30: sum(range(5000))"])
    w.attach(child.pid)
    spin_until(lambda: w.run is not None)
    spin_until(lambda: len(w.live_model.series.keys()) > 0)
    time.sleep(0.5)
    w.stop_session()
    spin_until(lambda: w.run is None)
    w.tabs.setCurrentWidget(w.sessions_view)
    spin_until(lambda: w.sessions_view.table.rowCount() == 1)
    w.sessions_view.open_session(1)
    spin_until(lambda: w.sessions_view.stack.currentWidget() is w.sessions_view.detail)
    w.close()
    child.kill()
    child.wait()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    print("HEAVY=" + ",".join(heavy))
""")


def test_gui_process_never_imports_torch(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QT_LOGGING_RULES": "qt.qpa.*=false"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "gui.db")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY="))
    assert line == "HEAVY=", f"the GUI imported: {line[6:]}"


VOID_CALLS = textwrap.dedent("""
    import os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from wattlens.app.gui.main import ensure_app
    app = ensure_app()
    from PySide6.QtCore import QObject, Signal
    from PySide6.QtWidgets import QLabel

    class S(QObject):
        ping = Signal()

    s = S()
    s.ping.connect(lambda: True)
    label = QLabel()
    for _ in range(100_000):  # each call drops a reference to None / True with PySide6 6.12 on 3.11
        label.setText("x")
        s.ping.emit()
    from wattlens.app.gui._qt_compat import leaking_singletons, protect_singletons
    print("PROTECTED=" + ",".join(protect_singletons()))
""")


def test_gui_survives_many_void_qt_calls():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QT_LOGGING_RULES": "qt.qpa.*=false"}
    out = subprocess.run([sys.executable, "-c", VOID_CALLS], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, f"the interpreter aborted: {out.stderr[-1500:]}"
    assert "PROTECTED=" in out.stdout


def test_wattlens_gui_command_opens_the_window(tmp_path):
    """`wattlens gui --db PATH` (the CLI entry) paints its window and exits 0 when asked to."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QT_LOGGING_RULES": "qt.qpa.*=false",
           "WATTLENS_GUI_EXIT_AFTER_PAINT": "1", "WATTLENS_SETTINGS": str(tmp_path / "settings.ini")}
    out = subprocess.run([sys.executable, "-m", "wattlens.app", "gui", "--db", str(tmp_path / "gui.db")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "first-paint-monotonic=" in out.stderr
