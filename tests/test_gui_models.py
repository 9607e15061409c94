"""The GUI's plain-Python models, without Qt: settings, process picker, layer tree, live figures,
stored sessions and comparisons, export formats, launch requests."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from wattlens.app.gui.models.export_model import available_formats, default_path, run_export
from wattlens.app.gui.models.layers_model import LayerTree
from wattlens.app.gui.models.live_model import LiveModel
from wattlens.app.gui.models.process_model import (
    GpuState,
    ProcessListModel,
    gpu_processes,
    scan_processes,
    torch_loaded,
)
from wattlens.app.gui.models.run_model import LaunchRequest, LiveRun
from wattlens.app.gui.models.series_model import SeriesInfo, SeriesSet, legend_label, power_curves
from wattlens.app.gui.models.sessions_model import (
    compare_sessions,
    load_stored_session,
    session_rows,
)
from wattlens.app.gui.models.settings_model import GuiSettings, MemorySettings, SettingsModel
from wattlens.profiler.errors import BadInputError, TargetNotFoundError
from wattlens.profiler.records import LayerCost, StepRecord
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)

# ---- settings -------------------------------------------------------------------------------------


def test_settings_round_trip_and_validation():
    backend = MemorySettings()
    m = SettingsModel(backend)
    assert m.values == GuiSettings()
    seen = []
    m.changed.connect(lambda new, old: seen.append((new, old)))
    m.update(interval_s=0.25, grid_g_per_kwh=56.0, cpu_tdp_w=95.0, theme="dark", stacks=False)
    again = SettingsModel(backend)  # what the next start reads
    assert again.values.interval_s == 0.25 and again.values.grid_g_per_kwh == 56.0
    assert again.values.cpu_tdp_w == 95.0 and again.values.theme == "dark" and again.values.stacks is False
    assert len(seen) == 1
    with pytest.raises(BadInputError, match="sampling interval"):
        m.update(interval_s=0)
    with pytest.raises(BadInputError, match="theme"):
        m.update(theme="purple")
    assert m.values.interval_s == 0.25  # a rejected update changes nothing


def test_settings_ignore_broken_stored_values():
    backend = MemorySettings({"settings/interval_s": "fast", "settings/grid_g_per_kwh": "-4",
                              "settings/stacks": "false", "settings/cpu_tdp_w": ""})
    v = SettingsModel(backend).values
    assert v.interval_s == GuiSettings().interval_s  # unparsable → default
    assert v.grid_g_per_kwh == GuiSettings().grid_g_per_kwh  # out of range → default
    assert v.stacks is False and v.cpu_tdp_w is None


def test_cpu_tdp_override_reaches_the_power_model(gui, tmp_path):
    settings = GuiSettings(cpu_tdp_w=77.0)
    child = gui.start_busy_child(5)
    try:
        run = LiveRun.attach(Store(tmp_path / "x.db"), settings, child.pid)
        cpu = next(s for s in run.session.discovery.usable if s.id == "cpu-model")
        assert cpu.model.tdp_w == 77.0 and "override" in cpu.model.tdp_source
    finally:
        child.kill()
        child.wait()


# ---- processes ------------------------------------------------------------------------------------


def test_process_list_puts_python_and_torch_first(torch_loop):
    m = ProcessListModel()
    m.set_processes(scan_processes({os.getpid()}), GpuState(None, "GPU use unknown: NVML unavailable"))
    rows = m.all()
    me = next(p for p in rows if p.pid == torch_loop.pid)
    assert me.is_python and me.torch is None and me.torch_note == "checking…"
    assert torch_loop.pid in m.pending_torch_checks()
    assert os.getpid() not in {p.pid for p in rows}
    first_non_python = next(i for i, p in enumerate(rows) if not p.is_python)
    assert all(p.is_python for p in rows[:first_non_python])
    m.set_torch_many({torch_loop.pid: torch_loaded(torch_loop.pid)})
    assert m.get(torch_loop.pid).torch is True
    assert m.all()[0].torch is True  # torch processes lead the list
    # filtering by PID or name
    m.set_filter(str(torch_loop.pid))
    assert [p.pid for p in m.visible()] == [torch_loop.pid]
    m.set_filter("import torch")  # a word of its command line
    assert torch_loop.pid in {p.pid for p in m.visible()}
    assert "unknown" in m.gpu_note


def test_torch_detection_reads_maps_honestly(gui, tmp_path):
    child = gui.start_busy_child(5)
    try:
        assert torch_loaded(child.pid) == (False, "")
    finally:
        child.kill()
        child.wait()
    assert torch_loaded(child.pid)[0] is None  # gone: unknown, not False
    assert torch_loaded(os.getpid(), proc_root=str(tmp_path))[0] is None


def test_gpu_state_without_nvml_says_why():
    state = gpu_processes()  # no NVIDIA driver on this machine
    assert state.processes is None and "NVML" in state.reason


# ---- layers -------------------------------------------------------------------------------------


def _window(t0, t1, energy):
    rows = [("M", 1.0, 0.0), ("M/Block", 0.8, 0.1), ("M/Block/Linear", 0.5, 0.5), ("M/Block/ReLU", 0.2, 0.2),
            ("M/Head", 0.2, 0.2)]
    out = [LayerCost(t0, t1, p, "class", "stack-sampling", share, share,
                     energy * share if energy is not None else None, self_share,
                     energy * self_share if energy is not None else None) for p, share, self_share in rows]
    out.append(LayerCost(t0, t1, "optimizer", "bucket", "stack-sampling", 0.0, 0.0, None, 0.0, None))
    return out


def test_layer_tree_shares_and_bars_conserve_energy():
    tree = LayerTree()
    events = []
    tree.changed.connect(lambda: events.append(1))
    tree.add(_window(0, 10**9, 10.0))
    tree.add(_window(10**9, 2 * 10**9, 30.0))
    assert events == [1, 1]
    (root,) = [r for r in tree.roots() if r.granularity == "class"]
    assert root.path == "M" and root.energy_j == pytest.approx(40.0) and root.energy_share == pytest.approx(1.0)
    block = root.children[0]
    assert block.path == "M/Block" and block.energy_share == pytest.approx(0.8)
    assert [c.name for c in block.children] == ["Linear", "ReLU"]  # sorted by share
    bars = tree.bars()
    assert sum(b.share for b in bars) == pytest.approx(1.0)  # self energies add up to the total
    assert bars[0].label == "Block/Linear" and bars[0].unit == "J" and bars[0].value == pytest.approx(20.0)
    assert "2 window(s)" in tree.describe() and "shares by energy" in tree.describe()


def test_layer_tree_without_energy_uses_time():
    tree = LayerTree()
    tree.add(_window(0, 10**9, None))
    assert not tree.energy_known
    assert tree.bars()[0].unit == "s"
    assert tree.roots()[0].energy_share is None and tree.roots()[0].time_share == pytest.approx(1.0)
    assert "energy not known yet" in tree.describe()


def test_windows_without_energy_get_it_when_the_series_has_it():
    """The stack sampler asks for a window's energy at its end, before the power sampler has
    passed it; the tree counts such windows by time and adds their energy once it is known."""
    s = SeriesSet(0, [SeriesInfo("target/energy_j", "J", "attributed (estimated)")])
    s.extend_ns("target/energy_j", np.array([10**8, 10**9]), np.array([1.0, 9.0]))
    tree = LayerTree()
    tree.add(_window(10**9, 2 * 10**9, None), energy_between=s.energy_between_ns)
    assert len(tree.pending) == 1 and not tree.energy_known
    s.extend_ns("target/energy_j", np.array([2 * 10**9]), np.array([17.0]))
    assert tree.resolve(s.energy_between_ns) == 1 and not tree.pending
    # 17 − 9 J over the window; shares as stack sampling defines them
    assert tree.total_energy_j == pytest.approx(8.0)
    (root,) = [r for r in tree.roots() if r.granularity == "class"]
    assert root.energy_j == pytest.approx(8.0) and root.children[0].energy_j == pytest.approx(6.4)
    assert sum(b.value for b in tree.bars()) == pytest.approx(8.0)


def test_a_rank_window_without_energy_is_never_given_the_whole_targets_energy():
    """A window sampled from one rank of a job covers that rank only: the whole target's energy
    over its span belongs to every rank at once, so giving it to one rank's window would count the
    job's energy once per rank. Such a window stays counted by time."""
    from dataclasses import replace

    s = SeriesSet(0, [SeriesInfo("target/energy_j", "J", "attributed (estimated)")])
    s.extend_ns("target/energy_j", np.array([10**8, 2 * 10**9]), np.array([1.0, 17.0]))
    tree = LayerTree()
    tree.add([replace(r, rank=0) for r in _window(10**9, 2 * 10**9, None)], energy_between=s.energy_between_ns)
    tree.add([replace(r, rank=1) for r in _window(10**9 + 1, 2 * 10**9, 4.0)], energy_between=s.energy_between_ns)
    assert tree.resolve(s.energy_between_ns) == 0
    assert tree.total_energy_j == pytest.approx(4.0)  # rank 1's own energy; rank 0's window: time only


def test_agent_instance_paths_form_a_tree():
    rows = [LayerCost(0, 10**9, p, "instance", "agent-timing", t, t, t, st, st, phase=ph)
            for p, t, st, ph in (("", 0.8, 0.1, "forward"), ("0", 0.5, 0.5, "forward"),
                                 ("0", 0.1, 0.1, "backward"), ("@CrossEntropyLoss", 0.05, 0.05, "forward"))]
    rows.append(LayerCost(0, 10**9, "outside modules", "bucket", "agent-timing", 0.25, 0.25, 0.25, 0.25, 0.25, phase=""))
    tree = LayerTree()
    tree.add(rows)
    roots = {r.name: r for r in tree.roots()}
    assert set(roots) == {"(model root)", "@CrossEntropyLoss", "outside modules"}
    assert {c.name for c in roots["(model root)"].children} == {"0", "0 (backward)"}
    assert "in-process agent" in tree.describe()


# ---- series and live figures --------------------------------------------------------------------------


def test_legend_labels_carry_the_method():
    assert legend_label(SeriesInfo("cpu-model/power_w", "W", "estimated", source_id="cpu-model")) == \
        "CPU (TDP model) — estimated"
    info = SeriesInfo("target/nvml:0/power_w", "W", "attributed: sm share of dynamic power × counter",
                      source_id="nvml:0", source_label="NVIDIA H100 (GPU 0)")
    assert legend_label(info) == "target's share of NVIDIA H100 (GPU 0) — attributed (sm share of dynamic power) × counter"


def test_long_series_are_drawn_from_min_max_blocks_that_keep_peaks():
    from wattlens.app.gui.models.series_model import GrowingSeries

    g = GrowingSeries()
    t = np.arange(100_000) * 0.1
    v = np.sin(t / 50.0)
    v[54_321] = 7.0  # one spike among 100k samples
    g.extend(t[:70_000], v[:70_000])
    x, y = g.display(None, None, 1000)
    assert 2 * 1000 <= len(x) <= 4 * 1000 + 2 * 64 and y.max() == 7.0 and x[0] == 0.0
    g.extend(t[70_000:], v[70_000:])  # blocks are extended as samples arrive
    x, y = g.display(None, None, 1000)
    assert y.max() == 7.0 and x[-1] == t[-1] and np.all(np.diff(x) >= 0)
    assert np.all(np.isin(y, v)), "every drawn point is a sample"
    x, y = g.display(5000.0, 5010.0, 1000)  # a short window: the samples themselves
    assert np.array_equal(x, t[50_000:50_101])


def test_power_curves_with_two_sources_show_shares_dashed():
    infos = [SeriesInfo("nvml:0/power_w", "W", "counter", source_id="nvml:0", source_label="GPU 0"),
             SeriesInfo("cpu-model/power_w", "W", "estimated", source_id="cpu-model"),
             SeriesInfo("target/nvml:0/power_w", "W", "attributed: sm share × counter", source_id="nvml:0"),
             SeriesInfo("target/cpu-model/power_w", "W", "attributed: cpu-time share × estimated",
                        source_id="cpu-model"),
             SeriesInfo("target/power_w", "W", "attributed (counter+estimated)")]
    s = SeriesSet(0, infos)
    for i in infos:
        s.extend_ns(i.key, np.array([0, 10**8]), np.array([1.0, 2.0]))
    curves = power_curves(s)
    assert [c.key for c in curves][-1] == "target/power_w" and curves[-1].width > 1
    dashed = [c for c in curves if c.dash]
    assert {c.key for c in dashed} == {"target/nvml:0/power_w", "target/cpu-model/power_w"}
    assert "cpu-time share" in curves[-1].label and "sm share" in curves[-1].label


def test_live_model_from_a_real_session(tmp_path, torch_loop):
    store = Store(tmp_path / "live.db")
    run = LiveRun.attach(store, GuiSettings(interval_s=0.05, stacks=False), torch_loop.pid)
    run.start()
    try:
        m = LiveModel(run.session, grid_g_per_kwh=400.0)
        deadline = time.monotonic() + 120  # a bound against a hang, not a speed requirement
        while m.series.last("target/energy_j") is None and time.monotonic() < deadline:
            time.sleep(0.1)
            m.pull()
        t, v = m.series.get("cpu-model/power_w")
        assert len(t) >= 2 and np.all(np.diff(t) > 0) and np.all(v > 0)
        n_before = len(t)
        pulled = 0
        while pulled == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            pulled = m.pull()
        assert pulled > 0 and len(m.series.get("cpu-model/power_w")[0]) > n_before  # only new points
        cards = {c.title: c for c in m.cards()}
        assert "J ·" in cards["Energy, target process"].value and "Wh" in cards["Energy, target process"].value
        assert "cpu-time share" in cards["Energy, target process"].detail
        assert "400 gCO₂/kWh" in cards["CO₂"].detail
        assert cards["GPU"].value == "not measured" and "NVML" in cards["GPU"].detail
        assert cards["Energy per step"].value == "n/a"
        # steps from the agent (run mode): energy per step/sample/token from the attributed energy
        t0 = run.session.start_ns
        t_last = int(t0 + m.series.end_s() * 1e9)
        m.add_step(StepRecord(0, t0 + 10**6, t_last, samples=32, tokens=2048))
        step_card = {c.title: c for c in m.cards()}["Energy per step"]
        assert "/step" in step_card.value and "n/a/step" not in step_card.value and "/token" in step_card.value
        assert "cpu-model" not in m.measuring_text() and "every 0.05 s" in m.measuring_text()
    finally:
        run.stop()
        store.close()


# ---- stored sessions ------------------------------------------------------------------------------


def test_load_and_compare_stored_sessions(stored_db):
    store = Store(stored_db)
    rows = session_rows(store)
    assert [r.name for r in rows] == ["baseline", "with layers"]
    assert all(r.energy_j and r.energy_j > 0 and r.status == "completed" for r in rows)
    steps = []
    a = load_stored_session(store, rows[1].id, grid_g_per_kwh=475.0, progress=lambda t, f: steps.append(f))
    assert steps[-1] == 1.0 and steps == sorted(steps)
    assert a.has_target and len(a.series.get("target/power_w")[0]) > 5
    assert len(a.layers) > 0, "the stack-sampled session has layer rows"
    b = load_stored_session(store, rows[0].id)
    c = compare_sessions(a, b)
    by = {r.figure: r for r in c.rows}
    est = "estimated" in (a.summary["target"].get("method") or "")  # the CPU model where no meter is
    assert by["Energy, target"].this.endswith("J (estimated)" if est else "J")
    assert by["Energy, target"].delta_pct.endswith("%")
    assert by["Energy per step"].delta == "n/a"  # no steps in attach mode: not 0
    assert c.deltas["duration_s"]["delta"] == pytest.approx(a.session["duration_s"] - b.session["duration_s"])
    store.close()


def test_export_formats_and_paths(stored_db, tmp_path):
    names = {f.name: f for f in available_formats()}
    assert names["md"].available and names["json"].available and names["csv"].available
    if not names["html"].available:
        assert "rich" in names["html"].reason
    assert default_path(tmp_path, 3, "md", 4).name == "wattlens-session-3-vs-4.md"
    store = Store(stored_db)
    out = run_export(store, 1, "md", tmp_path / "r.md", compare_id=2, grid_g_per_kwh=100.0)
    text = out.read_text()
    assert "wattlens report" in text and "Compared with session 2" in text and "100 gCO2/kWh" in text
    store.close()


# ---- launch requests --------------------------------------------------------------------------------


def test_launch_request_parsing(tmp_path):
    req = LaunchRequest.parse("python 'my script.py' --lr 0.1", str(tmp_path), "A=1\n# comment\nB = two words\n")
    assert req.command == ["python", "my script.py", "--lr", "0.1"]
    assert req.cwd == str(tmp_path) and req.env == {"A": "1", "B": " two words"}
    with pytest.raises(BadInputError, match="no command"):
        LaunchRequest.parse("   ")
    with pytest.raises(BadInputError, match="does not exist"):
        LaunchRequest.parse("python x.py", str(tmp_path / "nope"))
    with pytest.raises(BadInputError, match="NAME=VALUE"):
        LaunchRequest.parse("python x.py", "", "JUSTANAME")
    with pytest.raises(BadInputError, match="quotes"):
        LaunchRequest.parse("python 'unclosed")


def test_launch_runs_the_command_and_ends_it_only_when_asked(tmp_path):
    store = Store(tmp_path / "run.db")
    req = LaunchRequest([sys.executable, "-c", "import os, time; print(os.environ['WL_X'], flush=True); time.sleep(30)"],
                        str(tmp_path), {"WL_X": "hello"})
    run = LiveRun.launch(store, GuiSettings(interval_s=0.05, stacks=False), req)
    run.start()
    try:
        assert run.session.kind == "run" and run.launched.poll() is None and run.runner is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "hello" not in open(run.log_path).read():
            time.sleep(0.05)
        run.stop(end_program=False)
        assert run.launched.poll() is None, "the program keeps running unless the user chose to end it"
        run.end_launched()
        assert run.launched.poll() is not None
        with open(run.log_path) as f:
            assert f.read().splitlines()[0] == "hello"  # the program's own output, in the log
    finally:
        run.end_launched()
        os.unlink(run.log_path)
        store.close()


def test_attach_to_a_dead_pid_is_one_clear_error(gui, tmp_path):
    child = gui.start_busy_child(0)
    child.wait()
    with pytest.raises(TargetNotFoundError, match=f"no process with PID {child.pid}"):
        LiveRun.attach(Store(tmp_path / "d.db"), GuiSettings(), child.pid)


def test_layer_caption_says_what_the_layers_add_up_to():
    """The Layers caption gives the layers' energy against the target's (the shares are of the
    layers' energy), worded as show and the reports word it (profiler.summary.layer_coverage)."""
    from wattlens.profiler.summary import layer_coverage

    s = SeriesSet(0, [SeriesInfo("target/energy_j", "J", "attributed (estimated)")])
    s.extend_ns("target/energy_j", np.array([10**8, 2 * 10**9, 3 * 10**9]), np.array([1.0, 17.0, 20.0]))
    tree = LayerTree()
    tree.set_target(s.target_energy_j, estimated=s.target_estimated)
    tree.add(_window(10**9, 2 * 10**9, 8.0), energy_between=s.energy_between_ns)
    text = layer_coverage(8.0, 20.0, {"stack-sampling"}, estimated=True)["text"]
    assert text.startswith("layers: 8 J of the target's 20.0 J (estimated, 40 %)")
    assert text.endswith("the rest: between the sampling windows")
    assert tree.describe().endswith(text)
    tree.reset([*_window(10**9, 2 * 10**9, 8.0)], s.energy_between_ns)  # as stored, at the end: still said
    assert tree.describe().endswith(text)


def test_layer_caption_says_the_backward_by_op_is_an_estimate_from_native_reads():
    """A training attach's backward rows by op (lite reads: op rows only for its first minutes)
    were shown with only 'stack sampling (py-spy): CPU-side time share …' above them."""
    from collections import Counter

    from wattlens.profiler.stacks.native import OP_SPLIT_TEXT, split_backward

    bucket = LayerCost(0, 10**9, "backward", "bucket", "stack-sampling", 0.5, 0.5, 4.0, 0.5, 4.0)
    tree = LayerTree()
    tree.add(_window(0, 10**9, 4.0) + split_backward([bucket], Counter({"MmBackward0": 3, "AddmmBackward0": 1})))
    assert f"backward {OP_SPLIT_TEXT}" in tree.describe()
    plain = LayerTree()
    plain.add(_window(0, 10**9, 4.0) + [bucket])  # one bucket, not split: nothing to say
    assert OP_SPLIT_TEXT not in plain.describe()
