"""Lists that keep themselves current: the attach picker rescans by itself (in a worker) with a
CPU % column and a "Python only" switch; sessions recorded by the CLI appear in the Sessions
screen without pressing Refresh. Real app offscreen, real child processes, the real CLI."""

from __future__ import annotations

import subprocess
import sys

from pytestqt.exceptions import TimeoutError

from tests.conftest import run_cli
from tests.gui_fixtures import end_process
from wattlens.app.gui import qt_sessions

pytest_plugins = ["tests.gui_fixtures"]


def test_picker_refreshes_by_itself_with_cpu_and_python_only(make_window, qtbot, gui):
    w = make_window()
    av = w.attach_view
    assert av.python_only.isChecked(), "kernel threads and shells are hidden by default"
    qtbot.waitUntil(lambda: bool(av.model.all()), timeout=20000)  # the first scan
    refresh_clicks = []
    av.refresh_button.clicked.connect(lambda: refresh_clicks.append(1))
    busy = gui.start_busy_child(120)  # a Python process that keeps a core busy, started after the scan
    shell = subprocess.Popen(["sleep", "120"])  # not Python
    try:
        qtbot.waitUntil(lambda: av.model.get(busy.pid) is not None and av.model.get(busy.pid).cpu_percent is not None
                        and av.model.get(shell.pid) is not None, timeout=30000)
        assert not refresh_clicks, "nobody pressed Refresh"
        from wattlens.app.gui.qt_attach import COLUMNS

        col = COLUMNS.index("CPU %")
        row = av.table_model.row_of(busy.pid)
        cpu = float(av.table_model.data(av.table_model.index(row, col)))
        assert 0 < cpu <= 100 * 1.05, cpu  # busy on one core (shared: the machine is loaded)
        assert av.table_model.row_of(shell.pid) is None, "'sleep' is hidden while Python only is on"
        assert all(p.is_python for p in av.table_model.rows)
        av.python_only.setChecked(False)
        assert av.table_model.row_of(shell.pid) is not None
        assert any(not p.is_python for p in av.table_model.rows)
        av.python_only.setChecked(True)
        assert av.table_model.row_of(shell.pid) is None
    finally:
        end_process(busy)
        shell.kill()
        shell.wait()
    qtbot.waitUntil(lambda: av.model.get(busy.pid) is None, timeout=30000)  # gone by itself too


def test_cli_sessions_appear_without_refresh(make_window, qtbot, tmp_path):
    db = tmp_path / "shared.db"
    w = make_window(db)
    sv = w.sessions_view
    w.tabs.setCurrentWidget(sv)
    qtbot.waitUntil(lambda: sv._fingerprint is not None, timeout=20000)
    assert sv.table.rowCount() == 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        r = run_cli("attach", str(child.pid), "--duration", "1", "--no-stacks", "--no-gpu", "--name", "from the CLI",
                    "--db", str(db))
        assert r.returncode == 0, r.stderr
    finally:
        child.kill()
        child.wait()
    qtbot.waitUntil(lambda: sv.table.rowCount() == 1, timeout=30000)
    assert sv.model.rows[0].name == "from the CLI" and sv.model.rows[0].status == "completed"
    polls = []
    sv.model.changed.connect(lambda: polls.append(1))
    qtbot.wait(2 * 3000 + 500)  # two more polls: nothing changed, so the listing is not reread
    assert polls == []


def test_sessions_list_pane_shows_many_rows(make_window, qtbot, stored_db):
    w = make_window(stored_db)
    sv = w.sessions_view
    w.tabs.setCurrentWidget(sv)
    qtbot.waitUntil(lambda: sv.table.rowCount() == 2, timeout=20000)
    w.resize(1280, 860)  # the screenshots' size
    qtbot.wait(50)
    row_h = sv.table.verticalHeader().defaultSectionSize()
    visible_rows = sv.table.viewport().height() // row_h
    assert visible_rows >= 4, f"the list shows only {visible_rows} rows (two before this fix)"
    sv.open_session(1)
    qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.detail, timeout=30000)
    qtbot.wait(50)
    assert sv.table.viewport().height() // row_h >= 4, "an opened session leaves the list four rows or more"
    d = sv.detail
    p = d.panel

    def apart() -> bool:  # the layout settles over a few event-loop passes (longer on a busy machine)
        return p.power_plot.geometry().bottom() < p.util_plot.geometry().top()

    def assert_apart() -> None:
        try:
            qtbot.waitUntil(apart, timeout=10000)
        except TimeoutError:
            pass  # the assertion below says how they overlap
        power, util = p.power_plot.geometry(), p.util_plot.geometry()
        assert power.bottom() < util.top(), f"the plots overlap: power {power}, utilisation {util}"
        assert p.power_plot.legend.geometry().bottom() <= power.height(), "the legend lies inside its own plot"

    assert_apart()
    # however many notes a session has and however they wrap, they scroll in a few lines' height
    # and leave the plots the room they need (a long note once pushed them over each other)
    stored = d.stored
    stored.summary["notes"] = [f"note {i}: " + "a long note that wraps over the width of the window " * 4
                               for i in range(8)]
    d.show_session(stored, None)
    qtbot.waitUntil(lambda: d.notes.text().count("•") == 6, timeout=10000)
    assert_apart()
    cap = qt_sessions.NOTES_LINES * d.notes.fontMetrics().lineSpacing()
    wrapped = d.notes.heightForWidth(d.notes_area.viewport().width())  # the notes' whole height
    assert d.notes_area.height() <= cap < wrapped, f"the notes scroll: {d.notes_area.height()}, {cap}, {wrapped}"


def test_the_picker_holds_still_while_the_pointer_is_over_it(make_window, qtbot, gui):
    """A process that starts moves the rows; while the pointer moves over the list (the user is
    about to click one), the automatic rescan waits, so the row under the pointer stays the same
    process. A pointer left resting there does not freeze the list."""
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    from wattlens.app.gui import qt_attach

    w = make_window()
    av = w.attach_view
    qtbot.waitUntil(lambda: bool(av.model.all()) and not av._scanning, timeout=20000)
    viewport = av.table.viewport()
    viewport.setAttribute(Qt.WA_UnderMouse, True)  # what Qt sets when the pointer enters

    def move():
        QApplication.sendEvent(viewport, QMouseEvent(QEvent.MouseMove, QPointF(20, 20), QPointF(20, 20),
                                                     Qt.NoButton, Qt.NoButton, Qt.NoModifier))

    rows_before = [p.pid for p in av.table_model.rows]
    busy = gui.start_busy_child(120)
    try:
        for _ in range(4):  # the pointer keeps moving across several of the timer's ticks
            move()
            av._on_auto_refresh()
            qtbot.wait(qt_attach.AUTO_REFRESH_MS)
        assert av.model.get(busy.pid) is None and [p.pid for p in av.table_model.rows] == rows_before
        av._pointer_moved_at -= qt_attach.POINTER_HOLD_S  # resting still, over the list
        qtbot.waitUntil(lambda: av.model.get(busy.pid) is not None, timeout=30000)
    finally:
        end_process(busy)


def test_a_session_still_recording_says_so_in_the_list_and_when_opened(make_window, qtbot, tmp_path, gui):
    # its figures are n/a in the list (its summary is written at its end) and, opened, those stored
    # so far: both said, where both read as a finished session's ("n/a" duration, no word why)
    db = tmp_path / "shared.db"
    child = gui.start_busy_child(120)
    attach = subprocess.Popen([sys.executable, "-m", "wattlens.app", "attach", str(child.pid), "--duration", "90",
                               "--no-stacks", "--no-gpu", "--name", "still going", "--db", str(db)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        w = make_window(db)
        sv = w.sessions_view
        w.tabs.setCurrentWidget(sv)
        qtbot.waitUntil(lambda: sv.table.rowCount() == 1, timeout=60000)
        assert sv.model.rows[0].status == "running"
        qtbot.waitUntil(lambda: "1 still recording" in sv.status.text(), timeout=10000)
        assert "Open it for its figures so far" in sv.status.text()
        qtbot.wait(3000)  # a few stored samples
        sv.select_ids([1])
        sv.open_button.click()
        qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.detail, timeout=30000)
        head = sv.detail.headline.text()
        assert "so far (still recording" in head and "· n/a ·" not in head, head
    finally:
        attach.terminate()
        attach.wait(timeout=30)
        end_process(child)
