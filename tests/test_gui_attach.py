"""The Attach screen: the process picker lists Python first, marks torch (read lazily from
/proc/PID/maps in a worker) and GPU use (NVML; faked only at the driver boundary), filters, and
attaches on Attach or a double click."""

from __future__ import annotations

import os

from tests.fake_nvml import FakeGpu, install

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)


def _row(view, pid):
    m = view.table_model
    r = m.row_of(pid)
    assert r is not None, f"PID {pid} not listed"
    return [m.data(m.index(r, c)) for c in range(m.columnCount())]


def test_picker_marks_torch_and_filters(make_window, qtbot, torch_loop):
    w = make_window()
    av = w.attach_view
    qtbot.waitUntil(lambda: av.table_model.row_of(torch_loop.pid) is not None
                    and av.model.get(torch_loop.pid).torch is not None, timeout=20000)
    row = _row(av, torch_loop.pid)
    assert row[0] == str(torch_loop.pid) and row[2] == "yes" and row[3] == "torch"
    assert row[5] == "unknown", "no NVML here: GPU use is unknown, not 'none'"
    assert "GPU use unknown" in av.gpu_label.text() and "NVML" in av.gpu_label.text()
    assert av.table_model.row_of(os.getpid()) is None, "wattlens does not list itself"
    visible = av.table_model.rows
    assert visible[0].is_python and visible[0].torch
    av.filter.setText(str(torch_loop.pid))
    assert [p.pid for p in av.table_model.rows] == [torch_loop.pid]
    assert not av.attach_button.isEnabled()
    av.select_pid(torch_loop.pid)
    assert av.attach_button.isEnabled()
    av.filter.setText("no-such-process-name")
    assert av.table_model.rowCount() == 0


def test_attach_button_starts_a_session(gui, make_window, qtbot, torch_loop):
    w = make_window()
    w.settings.update(stacks=False)
    av = w.attach_view
    qtbot.waitUntil(lambda: av.table_model.row_of(torch_loop.pid) is not None, timeout=20000)
    av.filter.setText(str(torch_loop.pid))
    av.select_pid(torch_loop.pid)
    av.attach_button.click()
    run = gui.wait_for_run(qtbot, w)
    assert run.session.target.pid == torch_loop.pid
    w.attach(torch_loop.pid)
    assert "already running" in w.messages.text


def test_gpu_memory_column_with_nvml(make_window, qtbot, torch_loop, monkeypatch):
    gpu = FakeGpu()
    gpu.processes = {torch_loop.pid: 3 * 2**30}
    install(monkeypatch, [gpu])
    w = make_window()
    av = w.attach_view
    av.python_only.setChecked(False)  # rows besides the torch child whatever else runs on the machine
    qtbot.waitUntil(lambda: av.table_model.row_of(torch_loop.pid) is not None
                    and av.model.get(torch_loop.pid).on_gpu
                    and any(p.pid != torch_loop.pid for p in av.table_model.rows), timeout=20000)
    assert _row(av, torch_loop.pid)[5] == "3.22 GB"
    assert "1 process(es) on a GPU" in av.gpu_label.text()
    other = next(p for p in av.table_model.rows if p.pid != torch_loop.pid)
    assert _row(av, other.pid)[5] == ""
