"""The live session's start / stop / watch logic without Qt: a real attach session on a real
child process, driven the way QtMainWindow drives it (work functions run here inline)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wattlens.app.gui.models.live_session import LiveSession
from wattlens.app.gui.models.run_model import LiveRun
from wattlens.app.gui.models.settings_model import GuiSettings
from wattlens.profiler.errors import TargetNotFoundError
from wattlens.profiler.store import Store


@pytest.fixture
def child():
    code = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: sum(range(5000))"
    p = subprocess.Popen([sys.executable, "-c", code])
    yield p
    p.kill()
    p.wait(timeout=10)


def test_start_watch_stop_a_real_session(tmp_path, child):
    store = Store(tmp_path / "w.db")
    live, changes = LiveSession(), []
    live.changed.connect(lambda *a: changes.append(1))
    assert live.refuse_start(None, "disk full").startswith("no database is open: disk full")
    assert live.refuse_start(store, None) is None
    settings = GuiSettings(stacks=False)
    work = live.start_work(lambda: LiveRun.attach(store, settings, child.pid))
    assert live.busy and "already running" in live.refuse_start(store, None)
    model = live.started(work(), 400.0)
    assert live.run is not None and model.session.status == "running"
    assert live.watch().end is None  # the child is alive, no duration: keep measuring
    stop = live.stop_work(False, "stopped", "stopped by the user")
    assert stop is not None and live.stop_work(False, "stopped", "twice") is None  # one stop at a time
    stop()
    text, is_error = live.stopped("stopped", "stopped by the user")
    assert text.startswith(f"Session {model.session.session_id} saved (stopped)") and not is_error
    assert live.run is None and not live.busy and model.ended == ("stopped", "stopped by the user")
    assert store.session(model.session.session_id)["status"] == "stopped"
    assert child.poll() is None  # an attached target is never ended
    assert len(changes) >= 3


def test_a_target_that_exits_is_seen_by_watch(tmp_path):
    store = Store(tmp_path / "w.db")
    live = LiveSession()
    # the child exits when told (stdin closed), after the attach: a fixed lifetime raced start-up
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    live.started(live.start_work(lambda: LiveRun.attach(store, GuiSettings(stacks=False), p.pid))(), None)
    p.stdin.close()
    p.wait(timeout=30)
    end = live.watch().end
    assert end is not None and end[0] == "target-exited"
    live.shutdown()
    assert live.run is None


def test_a_failed_start_frees_the_slot_with_one_line(tmp_path):
    live = LiveSession()
    work = live.start_work(lambda: LiveRun.attach(Store(tmp_path / "w.db"), GuiSettings(), 2**22 + 12345))
    with pytest.raises(TargetNotFoundError) as err:
        work()
    text = live.start_failed(err.value)
    assert not live.busy and "\n" not in text and "PID" in text


def test_once_ended_the_live_layers_read_as_the_stored_session(tmp_path, torch_child):
    """A training job's windows are split by the native reads pooled as each closed; at the end
    the stored rows are split by the whole pool. The live view then shows the stored figures,
    the same as the Sessions view that loads them."""
    import time

    from wattlens.app.gui.models.layers_model import LayerTree

    child = torch_child(60)
    store = Store(tmp_path / "w.db")
    live = LiveSession()
    work = live.start_work(lambda: LiveRun.attach(store, GuiSettings(stacks=True), child.pid))
    model = live.started(work(), None)
    model.session.on_layers(lambda rows: model.add_layers(rows))  # the bridge's job, inline
    deadline = time.monotonic() + 120  # a bound against a hang, not a speed requirement
    while not any(k.startswith("backward/") for k in _paths(model.layers)) and time.monotonic() < deadline:
        time.sleep(0.2)
        model.pull()
    live.stop_work(False, "stopped", "stopped by the user")()
    live.stopped("stopped", "stopped by the user")
    sid = model.session.session_id
    rows = store.layer_costs(sid)
    events = [e for e in store.events(sid) if e.kind == "backward-ops"]
    store.close()
    if not events or not events[-1].data["classes"]:
        pytest.skip("no native read reached the backward in time on this machine (busy)")
    # stored: every window's backward split by the whole pool, as the session's note says
    classes = events[-1].data["classes"]
    for bucket in (r for r in rows if r.path == "backward"):
        kids = {r.path.removeprefix("backward/"): r for r in rows
                if r.window_start_ns == bucket.window_start_ns and r.path.startswith("backward/")}
        for path, (share, _se) in classes.items():
            assert kids[path].time_s == pytest.approx(bucket.time_s * share)
    # live, once ended: the same figures
    stored = LayerTree()
    stored.add(rows, model.series.energy_between_ns)
    assert len(stored) > 0 and _figures(model.layers) == _figures(stored)


def _nodes(tree):
    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    return list(walk(tree.roots()))


def _paths(tree) -> set[str]:
    return {n.path for n in _nodes(tree)}


def _figures(tree) -> dict:
    return {(n.path, n.granularity, n.phase): (round(n.time_s, 9), n.energy_j and round(n.energy_j, 9))
            for n in _nodes(tree)}
