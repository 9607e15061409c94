"""Errors appear as one clear line in the window, never a traceback: a dead PID, a corrupt or
unusable database, a target that exits, a command that does not exist."""

from __future__ import annotations

import subprocess
import sys

from PySide6.QtWidgets import QApplication

from wattlens.app.gui.models.run_model import LaunchRequest
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)


def test_dead_pid_is_one_line_in_the_window(gui, make_window, qtbot):
    child = gui.start_busy_child(0)
    child.wait()
    w = make_window()
    w.attach(child.pid)
    qtbot.waitUntil(lambda: not w.live.starting, timeout=10000)
    assert w.run is None and w.messages.level == "error" and w.messages.isVisible()
    assert f"no process with PID {child.pid}" in w.messages.text and "ps aux" in w.messages.text
    gui.assert_one_line(w.messages.text)
    assert w.live_view.model is None


def test_corrupt_database_is_refused_and_left_untouched(gui, make_window, qtbot, tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are my notes, not a database\n" * 10)
    before = bad.read_bytes()
    w = make_window(bad)
    assert w.store is None
    assert "is not a wattlens database" in w.messages.text and "--db" in w.messages.text
    gui.assert_one_line(w.messages.text)
    assert "not open" in w.status_label.text()
    assert "no database" in w.sessions_view.status.text()
    child = gui.start_busy_child(10)
    try:
        w.attach(child.pid)
        assert "no database is open" in w.messages.text
        gui.assert_one_line(w.messages.text)
    finally:
        child.kill()
        child.wait()
    assert bad.read_bytes() == before


def test_choosing_a_folder_as_database_in_settings(gui, make_window, qtbot, tmp_path):
    w = make_window(cli_db=False)  # no --db: the setting decides
    assert w.store is not None
    w.settings_view.db.setText(str(tmp_path))
    w.settings_view.apply_button.click()
    qtbot.waitUntil(lambda: w.store is None, timeout=10000)
    assert "is a folder, not a database file" in w.messages.text
    gui.assert_one_line(w.messages.text)


def test_target_exit_ends_the_session_with_a_notice(gui, make_window, qtbot, tmp_path):
    w = make_window()
    w.settings.update(stacks=False, interval_s=0.05)
    # the child exits when told (stdin closed), once the session runs: a fixed lifetime raced start-up
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        w.attach(child.pid)
        run = gui.wait_for_run(qtbot, w)
        child.stdin.close()
        qtbot.waitUntil(lambda: w.run is None, timeout=60000)
    finally:
        if child.poll() is None and not child.stdin.closed:
            child.stdin.close()
        child.wait(timeout=30)
    assert w.messages.level == "info"
    assert f"the target process {child.pid} exited with exit code 0" in w.messages.text
    gui.assert_one_line(w.messages.text)
    assert w.live_view.model.ended[0] == "target-exited"
    assert "target-exited" in w.live_view.state.text()
    s = Store(tmp_path / "gui.db")
    assert s.session(run.session.session_id)["status"] == "target-exited"
    s.close()


def test_launching_a_missing_command(gui, make_window, qtbot):
    w = make_window()
    w.launch(LaunchRequest(["/no/such/program", "--flag"]))
    qtbot.waitUntil(lambda: not w.live.starting, timeout=10000)
    assert w.run is None
    assert "command not found: /no/such/program" in w.messages.text
    gui.assert_one_line(w.messages.text)


def test_an_internal_error_is_one_line_too(gui, make_window, qtbot):
    """A bug (not a WattlensError) is named as an internal error, still without a traceback."""
    w = make_window()

    def broken():
        raise KeyError("series")

    w.pool.submit(broken, on_error=w.show_error)
    qtbot.waitUntil(lambda: w.messages.isVisible(), timeout=5000)
    assert w.messages.text.startswith("⚠ internal error: KeyError")
    gui.assert_one_line(w.messages.text)
    w.messages.close_button.click()
    assert not w.messages.isVisible()
    QApplication.processEvents()
