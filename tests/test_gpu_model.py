"""The GPU path (NvmlSource + Sampler + attribution) on the faithful NVML model: each case gives
the target's energy within 5 % of the model's truth, or None with the reason. Issue 16."""

import os

import pytest

from tests import fake_nvml
from wattlens.profiler import attribution
from wattlens.profiler.pidns import PidNamespace
from wattlens.profiler.process import Target
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources import discover
from wattlens.profiler.store.models import SCHEMA_VERSION

ME = os.getpid()
OTHER = 999_999  # another process on the same GPU (our PID space)


def _setup(monkeypatch, *, known_idle_w=None, proc_root=None, binding="13", pidns=None, **gpu_kw):
    clock = fake_nvml.SimClock()
    gpu = fake_nvml.FakeGpu(clock=clock, **gpu_kw)
    fake_nvml.install(monkeypatch, [gpu], proc_root=proc_root, binding=binding)
    src = next(s for s in discover().usable if s.id == "nvml:0")
    rings = RingBuffers()
    sampler = Sampler([src], interval_s=0.1, target=Target(ME), sinks=[rings], clock_ns=clock.monotonic_ns,
                      known_idle_w={"nvml:0": known_idle_w} if known_idle_w is not None else None,
                      pidns=pidns)
    return clock, gpu, sampler, rings


def _target_j(rings):
    last = rings.get("target/nvml:0/energy_j")
    return None if last is None else last.last()[1]


def _idle_then_load(clock, gpu, sampler, *, idle_s=3.0, load_s=10.0, tick_s=0.1, jitter_s=0.02, other_w=100.0):
    sampler.tick()
    t0 = clock.now()
    fake_nvml.run_ticks(sampler, clock, idle_s, tick_s, jitter_s=jitter_s, seed=1)
    gpu.set_load({ME: 230.0, OTHER: other_w} if other_w else {ME: 230.0})
    fake_nvml.run_ticks(sampler, clock, load_s, tick_s, jitter_s=jitter_s, seed=2)
    return gpu.true_dynamic_j(ME, t0, clock.now())


@pytest.mark.parametrize("tick_s", [0.05, 0.1, 0.25])
@pytest.mark.parametrize("counter_period_s", [0.0, 0.02, 0.1, 0.2])
def test_counter_update_granularity_does_not_pull_idle_down(monkeypatch, counter_period_s, tick_s):
    """Fault 3b: 0-W ticks from a 20-200 ms counter made idle 0 W and the target +9..43 %."""
    clock, gpu, sampler, rings = _setup(monkeypatch, counter_period_s=counter_period_s, counter_phase_s=0.037)
    truth = _idle_then_load(clock, gpu, sampler, tick_s=tick_s, jitter_s=tick_s / 5)
    assert _target_j(rings) == pytest.approx(truth, rel=0.05)
    assert rings.get("nvml:0/idle_power_w").last()[1] == pytest.approx(70.0, rel=0.05)
    assert sampler.measured_idle()["nvml:0"][0] == pytest.approx(70.0, rel=0.05)


def test_busy_at_attach_uses_the_remembered_idle(monkeypatch):
    """Fault 3a: attached to a busy GPU, the session minimum made idle ≈ load (526 J for ~2,300 J)."""
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, counter_period_s=0.1)
    gpu.set_load({ME: 230.0})
    clock.advance(5.0)
    sampler.tick()
    t0 = clock.now()
    fake_nvml.run_ticks(sampler, clock, 10.0, 0.1, jitter_s=0.02)
    assert _target_j(rings) == pytest.approx(gpu.true_dynamic_j(ME, t0, clock.now()), rel=0.05)
    assert rings.get("nvml:0/idle_power_w").last()[1] == 70.0


def test_busy_at_attach_without_a_known_idle_charges_total_power_labelled(monkeypatch):
    clock, gpu, sampler, rings = _setup(monkeypatch, counter_period_s=0.1)
    gpu.set_load({ME: 230.0, OTHER: 230.0})
    clock.advance(5.0)
    spec = next(s for s in sampler.series_specs() if s.key == "target/nvml:0/energy_j")
    assert attribution.GPU_TOTAL_METHOD in spec.method
    sampler.tick()
    t0 = clock.now()
    e0 = gpu.energy_j()
    fake_nvml.run_ticks(sampler, clock, 10.0, 0.1, jitter_s=0.02)
    truth_total_share = (gpu.energy_j() - e0) / 2  # half the SMs: half of all energy, idle included
    assert _target_j(rings) == pytest.approx(truth_total_share, rel=0.05)
    assert rings.get("nvml:0/idle_power_w") is None  # never guessed
    assert gpu.true_dynamic_j(ME, t0, clock.now()) < _target_j(rings)


@pytest.mark.parametrize("sample_period_s", [1 / 6, 0.5, 1.0])
def test_per_process_samples_at_the_driver_cadence(monkeypatch, sample_period_s):
    """Fault 4: NOT_FOUND between samples read as "no kernel ran": 1,004 J for 1,610 J at 0.5 s."""
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, sample_period_s=sample_period_s,
                                        sample_phase_s=0.05)
    truth = _idle_then_load(clock, gpu, sampler, idle_s=1.0, load_s=10.0)
    assert _target_j(rings) == pytest.approx(truth, rel=0.05)


def test_no_sample_yet_is_not_idle(monkeypatch):
    """Before the driver's first sample the energy waits; the first sample shares it out."""
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, sample_period_s=1.0, sample_phase_s=0.9)
    sampler.tick()
    t0 = clock.now()
    gpu.set_load({ME: 200.0, OTHER: 200.0})
    fake_nvml.run_ticks(sampler, clock, 0.5, 0.1)
    assert _target_j(rings) in (None, 0.0)
    assert "no per-process utilisation sample" in sampler.reasons["target/nvml:0/energy_j"]
    fake_nvml.run_ticks(sampler, clock, 5.0, 0.1)
    assert _target_j(rings) == pytest.approx(gpu.true_dynamic_j(ME, t0, clock.now()), rel=0.05)


def test_container_pids_mapped_through_the_hosts_proc(monkeypatch, tmp_path):
    """Fault 1: NVML's host PIDs never matched ours in a container: 0 J / 0 B."""
    proc = fake_nvml.fake_proc(tmp_path / "proc", in_container=True, pids=[ME])
    host = tmp_path / "host"
    fake_nvml.fake_proc(tmp_path / "proc", in_container=True, pids=[ME], host_view=host, pid_offset=40_000)
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, pid_offset=40_000, proc_root=proc,
                                        pidns=PidNamespace(proc, host))
    truth = _idle_then_load(clock, gpu, sampler, idle_s=1.0)
    assert _target_j(rings) == pytest.approx(truth, rel=0.05)
    assert rings.get("target/nvml:0/mem_used_bytes").last()[1] == 2**30


def test_container_without_host_pids_is_none_with_the_fix(monkeypatch, tmp_path):
    proc = fake_nvml.fake_proc(tmp_path / "proc", in_container=True, pids=[ME])
    monkeypatch.delenv("WATTLENS_HOST_PROC", raising=False)
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, pid_offset=40_000, proc_root=proc)
    _idle_then_load(clock, gpu, sampler, idle_s=1.0, load_s=3.0)
    assert rings.get("target/nvml:0/energy_j") is None
    assert rings.get("target/nvml:0/mem_used_bytes") is None
    assert "--pid=host" in sampler.reasons["target/nvml:0/energy_j"]


@pytest.mark.parametrize("binding", ["13", "12"])
def test_driver_without_v3_symbol_falls_back_to_v2(monkeypatch, caplog, binding):
    """Fault 2: 13.x raised NVMLLibraryMismatchError (not an NVMLError) on every tick: no data."""
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, process_api="v2", binding=binding,
                                        process_util_supported=False)
    truth = _idle_then_load(clock, gpu, sampler, idle_s=1.0, other_w=0.0)
    assert sampler.error is None
    assert rings.get("nvml:0/energy_j").last()[1] > 0
    fallbacks = [r for r in caplog.records if "nvmlDeviceGetComputeRunningProcesses_v2" in r.getMessage()]
    assert len(fallbacks) == 1  # said once, not every tick
    assert _target_j(rings) == pytest.approx(truth, rel=0.05)  # sole process, from the _v2 list
    assert rings.get("target/nvml:0/mem_used_bytes").last()[1] == 2**30


def test_wide_v3_struct_is_not_read_garbled(monkeypatch):
    """A driver writing 32-byte entries: the binding's 24-byte view garbles every PID after the first."""
    from wattlens.profiler.sources import nvml

    clock, gpu, sampler, rings = _setup(monkeypatch, process_api="v3-wide")
    gpu.set_load({ME: 100.0, OTHER: 100.0, 4242: 50.0})
    procs, reason = nvml.NvmlDevice(0).running_processes()
    assert set(procs) == {ME, OTHER, 4242}, reason
    assert "32-byte" in nvml.process_struct_layout()


def test_mismatch_on_the_app_process_list_is_handled(monkeypatch):
    from wattlens.app.gui.models.process_model import gpu_processes

    clock, gpu, sampler, rings = _setup(monkeypatch, process_api="v2")
    gpu.set_load({ME: 100.0})
    state = gpu_processes()
    assert state.processes == {ME: 2**30} and state.reason is None


def test_mig_charges_no_sole_process(monkeypatch):
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, mig=True)
    _idle_then_load(clock, gpu, sampler, idle_s=0.5, load_s=2.0, other_w=0.0)
    assert rings.get("target/nvml:0/energy_j") is None
    assert "MIG" in sampler.reasons["target/nvml:0/energy_j"]


def test_mps_shares_summing_past_100_are_normalised_and_flagged(monkeypatch):
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, mps=True, w_per_sm_pct=3.0)
    truth = _idle_then_load(clock, gpu, sampler, idle_s=1.0, other_w=150.0)
    assert _target_j(rings) == pytest.approx(truth, rel=0.05)
    assert "normalised" in sampler.reasons["nvml:0/mps"]


def test_gh200_counter_covering_the_cpu_is_not_added_to_cpu_sources(monkeypatch):
    clock = fake_nvml.SimClock()
    gpu = fake_nvml.FakeGpu("NVIDIA GH200 480GB", clock=clock)
    fake_nvml.install(monkeypatch, [gpu])
    found = discover()
    srcs = [s for s in found.usable if s.id in ("nvml:0", "cpu-model")]
    assert len(srcs) == 2 and srcs[0].describe()["covers_cpu"]
    rings = RingBuffers()
    sampler = Sampler(srcs, interval_s=0.1, target=Target(ME), sinks=[rings], clock_ns=clock.monotonic_ns,
                      known_idle_w={"nvml:0": 70.0})
    gpu.set_load({ME: 100.0})
    sampler.tick()
    fake_nvml.run_ticks(sampler, clock, 2.0, 0.1)
    assert rings.get("target/energy_j").last()[1] == pytest.approx(rings.get("target/nvml:0/energy_j").last()[1])
    assert "GH200" in sampler.reasons["target/energy_j"]


def test_gpu_lost_is_none_with_reason_and_the_sampler_keeps_going(monkeypatch):
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0)
    _idle_then_load(clock, gpu, sampler, idle_s=0.5, load_s=1.0, other_w=0.0)
    gpu.lost = True
    n = sampler.ticks
    fake_nvml.run_ticks(sampler, clock, 1.0, 0.1)
    assert sampler.ticks > n and sampler.error is None
    assert "fell off the bus" in sampler.reasons["nvml:0/energy_j"]


@pytest.mark.parametrize(("arch", "name", "instant", "averaged"), [
    ("hopper", "NVIDIA H100 80GB HBM3", True, True),
    ("ampere", "NVIDIA A100-SXM4-80GB", False, False),  # GA100 does not average
    ("ampere", "NVIDIA A10", False, True),
    ("volta", "Tesla V100-SXM2-16GB", False, False),
])
def test_polled_power_says_which_reading_it_is(monkeypatch, arch, name, instant, averaged):
    from wattlens.profiler.sources import nvml

    clock = fake_nvml.SimClock()
    gpu = fake_nvml.FakeGpu(name, clock=clock, arch=arch, instant_field=instant, energy_supported=False)
    fake_nvml.install(monkeypatch, [gpu])
    src = next(s for s in discover().usable if s.id == "nvml:0")
    assert src.method == "polled"
    clock.advance(2.0)
    gpu.set_load({ME: 200.0})
    clock.advance(0.5)
    p, _ = src.device.power_w()
    reading = src.describe()["power_reading"]
    spec = next(s for s in Sampler([src]).series_specs() if s.key == "nvml:0/power_w")
    assert reading in spec.label
    if instant:
        assert reading == nvml.POWER_INSTANT and p == pytest.approx(270.0)
    else:
        assert "1-s average" in reading
        assert p == pytest.approx(170.0 if averaged else 270.0)  # half a second of load in the average


def test_idle_is_remembered_per_gpu_across_sessions(monkeypatch, tmp_path):
    """A session that sees the GPU with no process records its idle; a later one that attaches
    to the busy GPU starts from it (and says so in the idle series)."""
    import time

    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.store import Store

    gpu = fake_nvml.FakeGpu(idle_w=65.0)  # the machine's clock: the session runs its own thread
    fake_nvml.install(monkeypatch, [gpu])
    store = Store(tmp_path / "w.db")
    s1 = ProfilingSession(store, target=Target(ME), interval_s=0.1, discovery=discover(gpu=True))
    s1.start()
    time.sleep(3.0)
    s1.stop("completed", "test")
    row = store.gpu_idle("GPU-fake-0")
    assert row is not None and row["idle_power_w"] == pytest.approx(65.0, rel=0.05) and row["stretch_s"] >= 2.0

    gpu.set_load({ME: 200.0})
    s2 = ProfilingSession(store, target=Target(ME), interval_s=0.1, discovery=discover(gpu=True))
    s2.start()
    time.sleep(0.5)
    summary = s2.stop("completed", "test")
    gpu_row = next(s for s in summary["sources"] if s["id"] == "nvml:0")
    assert gpu_row["idle_power_w"] == pytest.approx(row["idle_power_w"])
    store.close()


def test_a_version_1_database_gains_the_gpu_idle_table(tmp_path):
    import sqlite3

    from wattlens.profiler.store import Store

    path = tmp_path / "old.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE gpu_idle")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.execute("DROP TABLE alembic_version")  # a file from before Alembic: stamped by meta only
    con.commit()
    con.close()
    store = Store(path)
    assert store.gpu_idle("GPU-x") is None
    store.record_gpu_idle("GPU-x", 61.0, 3.0)
    store.record_gpu_idle("GPU-x", 62.0, 4.0)  # the newest measurement wins
    assert store.gpu_idle("GPU-x")["idle_power_w"] == 62.0
    store.close()
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_gh200_session_total_does_not_add_the_cpu_twice(monkeypatch, tmp_path):
    import time

    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.store import Store

    gpu = fake_nvml.FakeGpu("NVIDIA GH200 480GB")
    fake_nvml.install(monkeypatch, [gpu])
    store = Store(tmp_path / "w.db")
    s = ProfilingSession(store, target=Target(ME), interval_s=0.1, discovery=discover(gpu=True))
    s.start()
    time.sleep(0.6)
    summary = s.stop("completed", "test")
    gpu_row = next(r for r in summary["sources"] if r["id"] == "nvml:0")
    cpu_rows = [r for r in summary["sources"] if r["kind"] != "gpu"]
    assert cpu_rows and all("GH200" in r["note"] for r in cpu_rows)
    assert summary["energy_j"] == pytest.approx(gpu_row["energy_j"])
    store.close()


def test_the_query_helper_turns_the_mismatch_error_into_a_reason(monkeypatch):
    from wattlens.profiler.sources import nvml

    clock, gpu, sampler, rings = _setup(monkeypatch, process_api="v2")
    value, reason = nvml.query("nvmlDeviceGetComputeRunningProcesses", gpu)
    assert value is None and "newer than the driver" in reason


def test_without_symbol_lookup_the_calls_are_tried_newest_first(monkeypatch):
    from wattlens.profiler.sources import nvml

    clock = fake_nvml.SimClock()
    gpu = fake_nvml.FakeGpu(clock=clock, process_api="v2")
    fake_nvml.install(monkeypatch, [gpu], missing=("_nvmlGetFunctionPointer",))
    gpu.set_load({ME: 100.0})
    assert nvml.has_symbol("nvmlDeviceGetComputeRunningProcesses_v3") is None
    assert nvml.NvmlDevice(0).running_processes() == ({ME: 2**30}, None)


def test_old_samples_in_the_drivers_buffer_do_not_dilute_the_first_share(monkeypatch):
    """The first call (timestamp 0) returns the driver's whole buffer, including processes
    that finished seconds before the attach."""
    clock, gpu, sampler, rings = _setup(monkeypatch, known_idle_w=70.0, sample_period_s=1.0, sample_phase_s=0.3)
    gpu.set_load({OTHER: 300.0})
    clock.advance(6.0)
    gpu.processes = {}
    gpu.set_load({ME: 200.0})
    clock.advance(2.0)
    sampler.tick()
    t0 = clock.now()
    fake_nvml.run_ticks(sampler, clock, 1.5, 0.1)
    assert _target_j(rings) == pytest.approx(gpu.true_dynamic_j(ME, t0, clock.now()), rel=0.05)


def test_doctor_says_per_process_gpu_figures_need_pid_host(monkeypatch, tmp_path):
    proc = fake_nvml.fake_proc(tmp_path / "proc", in_container=True, pids=[ME])
    monkeypatch.delenv("WATTLENS_HOST_PROC", raising=False)
    gpu = fake_nvml.FakeGpu(clock=fake_nvml.SimClock(), pid_offset=40_000)
    fake_nvml.install(monkeypatch, [gpu], proc_root=proc)
    found = discover()
    assert any(s.id == "nvml:0" for s in found.usable)  # the GPU itself is measured
    (u,) = [u for u in found.unavailable if u.source_id == "nvml:per-process"]
    assert "PID namespace" in u.reason and "--pid=host" in u.fix
