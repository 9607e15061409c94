"""The Live screen on a real session: attach to a child running a torch loop and watch samples,
figures, layers (real py-spy windows through the bridge) and steps arrive; pause, window, stop,
close. The child is never ended by the app."""

from __future__ import annotations

import sys
import threading

import pytest
from PySide6.QtWidgets import QDialogButtonBox

from wattlens.app.gui.models.run_model import LaunchRequest
from wattlens.app.gui.qt_attach import QtLaunchDialog
from wattlens.profiler.records import StepRecord
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)


def _drawn(view, key="target/power_w") -> int:
    curve = view.panel.power_plot.curves.get(key)
    return 0 if curve is None or curve.xData is None else len(curve.xData)


def test_attach_shows_live_samples_and_pause_never_stops_recording(gui, make_window, qtbot, torch_loop, tmp_path):
    w = make_window()
    w.settings.update(stacks=False)  # layers are the next test's subject
    w.attach(torch_loop.pid)
    run = gui.wait_for_run(qtbot, w)
    view = w.live_view
    assert w.tabs.currentWidget() is view
    qtbot.waitUntil(lambda: _drawn(view) >= 5, timeout=15000)
    legend = view.panel.power_plot.legend_texts()
    assert "CPU (TDP model) — estimated" in legend
    assert any(t.startswith("target process — attributed (cpu-time share)") for t in legend)
    assert any("% of one core" in t for t in view.panel.util_plot.legend_texts())
    qtbot.waitUntil(lambda: "J ·" in dict((t, v) for t, v, _ in view.panel.cards.texts())
                    .get("Energy, target process", ""), timeout=5000)
    titles = [t for t, _, _ in view.panel.cards.texts()]
    assert titles[:3] == ["Energy, target process", "Energy, whole machine", "CO₂"]
    status = w.status_label.text()
    assert f"Measuring PID {torch_loop.pid}" in status and "every 0.1 s" in status and str(tmp_path) in status

    view.pause_button.click()
    assert view.paused and "still recording" in view.state.text()
    drawn = _drawn(view)
    recorded = len(run.session.rings.get("target/power_w"))
    qtbot.waitUntil(lambda: len(run.session.rings.get("target/power_w")) > recorded, timeout=60000)
    qtbot.wait(300)  # a few frames' time while paused
    assert _drawn(view) == drawn, "paused: nothing is redrawn"
    view.pause_button.click()
    assert _drawn(view) > drawn

    # time window: the last minute shows 60 s; the whole session shows all data with some
    # head-room on the right (live, the axis moves in steps, not every frame)
    assert view.panel.power_plot.item.viewRange()[0][1] >= 60
    view.window_box.setCurrentIndex(2)
    end_s = view.model.series.end_s()
    x0, x1 = view.panel.power_plot.item.viewRange()[0]
    assert x0 == pytest.approx(0.0, abs=0.01) and end_s <= x1 <= max(10.0, 1.3 * end_s + 1)

    view.stop_button.click()
    qtbot.waitUntil(lambda: w.run is None, timeout=30000)
    assert "saved (stopped)" in w.messages.text
    assert view.model.ended == ("stopped", "stopped by the user")
    assert torch_loop.poll() is None, "an attached process is never ended"
    s = Store(tmp_path / "gui.db")
    assert s.session(run.session.session_id)["status"] == "stopped"
    s.close()
    # the ended session's duration reads the same here as in the Sessions list (not a clock's 00:00:NN)
    view.frame(force_cards=True)
    sv = w.sessions_view
    sv.refresh()
    qtbot.waitUntil(lambda: bool(sv.model.rows) and sv.model.rows[0].duration_s is not None, timeout=20000)
    assert view.elapsed.text() == sv.model.rows[0].duration_text, (view.elapsed.text(), sv.model.rows[0].duration_s)


def per_step_card(view) -> str:
    """The live "Energy per step" card's value, the cards drawn afresh."""
    view.frame(force_cards=True)
    return dict((t, v) for t, v, _ in view.panel.cards.texts())["Energy per step"]


def test_layers_and_steps_arrive_from_other_threads(gui, make_window, qtbot, torch_loop, monkeypatch):
    monkeypatch.setenv("WATTLENS_NATIVE_LITE", "0")  # py-spy's native runs, shaded (lite reads unavailable)
    w = make_window()
    w.settings.update(stack_rate_hz=100)
    w.attach(torch_loop.pid)
    run = gui.wait_for_run(qtbot, w)
    view = w.live_view
    assert run.session.stack_sampler is not None, f"py-spy did not attach: {run.session.notes}"
    # a step from the agent's thread (run mode sends these): it becomes a marker and per-step figures
    # the step ends at a real sample's own time in ns, after the baseline (so it has energy to
    # show). Not t0 + int(end_s() * 1e9): float seconds times 1e9, truncated, is 1 ns short for
    # some offsets, and while the view holds only the baseline that step ended before every
    # sample, so its energy stayed unknown ("n/a") for good
    qtbot.waitUntil(lambda: len(run.session.rings.get("target/energy_j") or ()) >= 2, timeout=60000)
    t0 = run.session.start_ns
    t1 = run.session.rings.get("target/energy_j").last()[0]
    th = threading.Thread(target=run.session.add_step, args=(StepRecord(0, t0, t1, samples=32),))
    th.start()
    th.join()
    qtbot.waitUntil(lambda: len(view.model.steps) == 1, timeout=5000)
    view.redraw()
    assert len(view.panel.power_plot.markers.xvals) == 1 and "step ends" in view.panel.power_plot.note
    # the step's energy is known once the power samples have passed its end: on a busy machine
    # that can be a tick after the step arrives ("n/a" and "1 steps, 0 with energy" until then)
    try:
        qtbot.waitUntil(lambda: "J/step" in per_step_card(view), timeout=30000)
    except qtbot.TimeoutError:
        t, _ = view.model.series.get("target/energy_j")
        cards = {c: (v, why) for c, v, why in view.panel.cards.texts()}
        pytest.fail(f"no step energy: card {cards['Energy per step']}; step ends at "
                    f"{(t1 - view.model.series.start_ns) / 1e9!r} s, target energy {len(t)} samples "
                    f"{t[:2]}…{t[-2:]}; series start {view.model.series.start_ns} session start {t0}; "
                    f"ended {view.model.ended}; sampler ticks {run.session.sampler.ticks} running "
                    f"{run.session.sampler.running} error {run.session.sampler.error!r} failure "
                    f"{run.session.sampler.failure}; ring's last {run.session.rings.get('target/energy_j').last()}; "
                    f"last of each series "
                    f"{[(k, view.model.series.data[k].last()) for k in view.model.series.keys()]}")
    assert "J/sample" in per_step_card(view)
    # layer rows cross from the stack thread through the bridge: wait for the first window rather
    # than a fixed time (how many stacks py-spy reads in 1.5 s depends on the machine's load)
    qtbot.waitUntil(lambda: len(view.model.layers) > 0, timeout=120000)
    # the training loop's backward starts a native run, which stops the target: shaded from its start
    qtbot.waitUntil(lambda: bool(run.session.stack_sampler.native_run_spans()), timeout=60000)
    view.redraw()
    spans, note = view.model.paused_spans()
    shaded = [tuple(region.getRegion()) for region in view.panel.power_plot.spans]
    assert len(shaded) == len(spans) >= 1 and shaded[0][0] == pytest.approx(spans[0][0])
    assert view.panel.power_plot.span_note == note and note.startswith("shaded: native stack reads")
    view.stop_button.click()
    qtbot.waitUntil(lambda: w.run is None, timeout=120000)
    layers = view.panel.layers
    assert layers.table.topLevelItemCount() > 0 and layers.bars.bars
    assert "stack sampling" in layers.caption.text()
    assert any(r[0].startswith("Sequential") for r in layers.row_texts()), layers.row_texts()


def test_closing_the_window_finalises_the_session(gui, make_window, qtbot, torch_loop, tmp_path):
    w = make_window()
    w.settings.update(stacks=False)
    w.attach(torch_loop.pid)
    run = gui.wait_for_run(qtbot, w)
    qtbot.waitUntil(lambda: _drawn(w.live_view) >= 2, timeout=15000)
    w.close()
    assert run.session.status == "stopped"
    s = Store(tmp_path / "gui.db")
    row = s.session(run.session.session_id)
    assert row["status"] == "stopped" and row["end_reason"] == "the wattlens window was closed"
    s.close()
    assert torch_loop.poll() is None


def test_launch_dialog_validates(qtbot, tmp_path):
    dlg = QtLaunchDialog()
    qtbot.addWidget(dlg)
    dlg.command.setText("")
    dlg.findChild(QDialogButtonBox).accepted.emit()
    assert dlg.request is None and dlg.error.isVisibleTo(dlg) and "no command given" in dlg.error.text()
    dlg.command.setText("python -c 'import time; time.sleep(60)'")
    dlg.cwd.setText(str(tmp_path))
    dlg.env.setPlainText("WATTLENS_TEST=1")
    dlg.findChild(QDialogButtonBox).accepted.emit()
    assert dlg.result() == QtLaunchDialog.Accepted
    assert dlg.request.command[:2] == ["python", "-c"] and dlg.request.env == {"WATTLENS_TEST": "1"}


def test_run_mode_shows_steps_and_agent_layers_and_can_end_the_program(gui, make_window, qtbot, tmp_path):
    """Launch… runs the program with the in-process agent: steps (from optimizer.step) and
    per-module timing arrive through the agent link; ending the program is the user's choice."""
    w = make_window()
    w.launch(LaunchRequest([sys.executable, "-c", gui.TORCH_LOOP, "120"], str(tmp_path)), "launched job")
    run = gui.wait_for_run(qtbot, w, timeout_ms=60000)
    assert run.session.kind == "run" and run.session.name == "launched job"
    view = w.live_view
    assert view.end_program.isVisibleTo(view) and "Program output:" in view.log_label.text()
    qtbot.waitUntil(lambda: len(view.model.steps) >= 3 and len(view.model.layers) > 0, timeout=60000)
    qtbot.waitUntil(lambda: "J/step" in per_step_card(view), timeout=30000)  # a step with energy
    assert "J/sample" in per_step_card(view), per_step_card(view)
    plot = view.panel.power_plot
    assert len(plot.markers.xvals) >= 1 or "too dense to mark" in plot.note  # hundreds of steps a second
    assert "in-process agent" in view.panel.layers.caption.text()
    rows = view.panel.layers.row_texts()
    assert "(model root)" in {r[0] for r in rows} and "outside modules" in {r[0] for r in rows}, rows
    assert all(r[1].endswith("%") for r in rows), "agent windows carry their energy"
    view.end_program.setChecked(True)
    view.stop_button.click()
    qtbot.waitUntil(lambda: w.run is None, timeout=30000)
    assert run.launched.poll() is not None, "the user chose to end the program they launched"


def test_launch_when_ready_starts_once_the_database_is_open(make_window, qtbot, tmp_path):
    """What `run_gui(launch=...)` (and `wattlens demo`) does: launch as soon as the store is open."""
    w = make_window(wait_ready=False)
    w.settings.update(stacks=False)
    w.launch_when_ready(LaunchRequest([sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path)), "demo")
    qtbot.waitUntil(lambda: w.run is not None, timeout=60000)
    assert w.run.session.name == "demo" and w.run.session.kind == "run"
    w.live_view.end_program.setChecked(True)
    w.live_view.stop_button.click()
    qtbot.waitUntil(lambda: w.run is None, timeout=30000)
