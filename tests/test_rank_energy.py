"""Per-rank energy by the target's attribution rules (issue 12): CPU by each rank's CPU time, GPU
by the device each rank uses (per-process share), the rest "other"; ranks + other = the job.
Real 2-rank gloo jobs on CPU, and the GPU mapping on the fake NVML."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import fake_nvml
from tests.conftest import run_cli
from wattlens.app.report.data import build_report
from wattlens.app.report.ranks import rank_rows
from wattlens.profiler import rank_energy
from wattlens.profiler.process import Target
from wattlens.profiler.rank_energy import GpuTick, RankSplit, series_key
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store

pytest_plugins = ["tests.ranks_jobs"]


def _last(series, key):
    return float(series[key][1][-1])


@pytest.mark.slow
def test_the_rank_that_burns_more_cpu_gets_the_larger_share_and_ranks_add_up_to_the_job(heavy_rank0_job):
    db, sid = heavy_rank0_job
    store = Store(db, create=False)
    try:
        series = store.series_data(sid)
        steps = store.steps(sid)
        events = store.events(sid)
        report = build_report(store, sid)
    finally:
        store.close()
    job_j = _last(series, "target/energy_j")
    ranks_j = {r: _last(series, series_key(r)) for r in (0, 1)}
    other_j = _last(series, series_key(rank_energy.OTHER))
    assert job_j > 0 and all(v > 0 for v in ranks_j.values()) and other_j >= 0
    assert sum(ranks_j.values()) + other_j == pytest.approx(job_j, rel=1e-9)  # conservation
    # over the steps (where rank 0 does its extra matmuls and rank 1 waits) rank 0 costs far more
    step_j = {r: sum(s.energy_j for s in steps if s.rank == r) for r in (0, 1)}
    assert all(s.energy_j is not None for s in steps)
    assert step_j[0] > 3 * step_j[1], step_j
    assert ranks_j[0] > ranks_j[1]  # over the whole run too (start-up is the same for both)
    methods = {(e.data["rank"], e.data["method"]) for e in events if e.kind == "rank-energy"}
    assert methods == {(0, rank_energy.CPU_BY_TIME), (1, rank_energy.CPU_BY_TIME)}  # no fallback
    job = report["ranks"]
    assert job["energy_method"] == rank_energy.METHOD and job["energy_fallback_reason"] is None
    assert job["job_energy_j"] == pytest.approx(job_j)
    assert {r["rank"]: r["energy_j"] for r in job["ranks"]} == pytest.approx(ranks_j)
    assert all(r["energy_method"] == rank_energy.CPU_BY_TIME for r in job["ranks"])
    # `show` prints the rows the reports and the app render, from the same function
    shown = run_cli("show", str(sid), "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    for row in rank_rows(job):
        assert " ".join(x for x in row if x) in " ".join(shown.stdout.split()), row


@pytest.mark.slow
def test_idle_rank_names_the_waiting_rank_and_its_idle_energy(heavy_rank0_job):
    db, sid = heavy_rank0_job
    a = run_cli("advise", str(sid), "--db", str(db), "--json")
    assert a.returncode == 0, a.stderr
    recs = [r for r in json.loads(a.stdout)["recommendations"] if r["rule"] == "idle-rank"]
    assert len(recs) == 1 and recs[0]["title"].startswith("Rank 1 is mostly idle")
    ev = {e["what"]: e["value"] for e in recs[0]["evidence"]}
    assert ev["rank 1 share of its step in collectives"] > 0.5
    assert ev["rank 1 energy spent waiting over the run (estimated)"] > 0
    fewer = [r for r in json.loads(a.stdout)["recommendations"] if r["rule"] == "fewer-ranks"]
    assert fewer == []  # rank 0 is busy most of its step: the job is not waiting-bound


@pytest.mark.slow
def test_fewer_ranks_fires_on_a_communication_bound_job(comm_bound_job):
    db, sid = comm_bound_job
    a = run_cli("advise", str(sid), "--db", str(db), "--json")
    assert a.returncode == 0, a.stderr
    recs = {r["rule"]: r for r in json.loads(a.stdout)["recommendations"]}
    assert "idle-rank" not in recs  # both ranks wait alike: nobody is idle relative to the others
    rec = recs["fewer-ranks"]
    assert rec["title"].startswith("Run the same work on 1 rank instead of 2")
    saving = rec["predicted_saving"]
    assert 0 < saving["low"] <= saving["fraction"] <= saving["high"] <= 1
    assert any("assumes" in n for n in rec["notes"])
    ev = {e["what"]: e for e in rec["evidence"]}
    assert all(ev[f"share of rank {r}'s step in collectives"]["value"] >= 0.5 for r in (0, 1))
    assert ev["energy per step, all 2 ranks"]["value"] > 0


# ---- the GPU mapping on the fake NVML ----------------------------------------------------------------
@pytest.fixture
def two_ranks():
    """A launcher process with two children (the ranks), as torchrun has."""
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "ps = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n"
        "print(' '.join(str(p.pid) for p in ps), flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in launcher.stdout.readline().split()]
    yield launcher.pid, pids
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.kill()
    launcher.wait()
    launcher.stdout.close()


def _gpu_job(monkeypatch, launcher_pid, *, util: bool):
    clock = fake_nvml.SimClock()
    gpus = [fake_nvml.FakeGpu(clock=clock, idle_w=70.0, process_util_supported=util) for _ in range(2)]
    fake_nvml.install(monkeypatch, gpus)
    srcs = [s for s in discover().usable if s.kind == "gpu"]
    assert [s.id for s in srcs] == ["nvml:0", "nvml:1"]
    rings = RingBuffers()
    target = Target(launcher_pid, rescan_s=0.0)
    sampler = Sampler(srcs, interval_s=0.1, target=target, sinks=[rings], clock_ns=clock.monotonic_ns,
                      known_idle_w={"nvml:0": 70.0, "nvml:1": 70.0})
    split = RankSplit(clock_ns=clock.monotonic_ns)
    sampler.rank_split = split
    return clock, gpus, sampler, rings, split


@pytest.mark.parametrize("util", [True, False], ids=["per-process-utilisation", "device-map"])
def test_each_rank_is_charged_its_own_devices_energy(monkeypatch, two_ranks, util):
    launcher, (pid0, pid1) = two_ranks
    clock, gpus, sampler, rings, split = _gpu_job(monkeypatch, launcher, util=util)
    split.register(pid0, 0, device=0)
    split.register(pid1, 1, device=1)
    sampler.tick()
    # rank r on GPU r; the driver reports different use: rank 0 draws 200 W above idle, rank 1 50 W
    gpus[0].set_load({pid0: 200.0})
    gpus[1].set_load({pid1: 50.0})
    if not util:  # no per-process utilisation: both ranks hold a context on both GPUs
        for g in gpus:
            g.processes = {pid0: 2**30, pid1: 2**30}
    fake_nvml.run_ticks(sampler, clock, 5.0, 0.1)
    dev_j = [rings.get(f"target/nvml:{i}/energy_j").last()[1] for i in (0, 1)]
    rank_j = [rings.get(series_key(r)).last()[1] for r in (0, 1)]
    other_j = rings.get(series_key("other")).last()[1]
    assert dev_j[0] > 3 * dev_j[1] > 0
    assert rank_j[0] == pytest.approx(dev_j[0], rel=0.02)  # its device's attributed energy
    assert rank_j[1] == pytest.approx(dev_j[1], rel=0.02)
    assert sum(rank_j) + other_j == pytest.approx(rings.get("target/energy_j").last()[1], rel=1e-9)
    expected = rank_energy.GPU_BY_PROCESS if util else rank_energy.GPU_BY_DEVICE_MAP
    assert all(expected in ms for ms in split.methods().values()), split.methods()


# ---- the split's own rules ----------------------------------------------------------------------------
def test_cpu_energy_is_split_by_each_ranks_cpu_time_with_children_counted_to_their_rank():
    split, events = RankSplit(clock_ns=lambda: 0), []
    split.on_event = events.append
    split.register(10, 0)
    split.register(20, 1)
    parents = {1: None, 10: 1, 20: 1, 11: 10}  # 11: a DataLoader worker of rank 0
    cpu = {1: 0.0, 10: 0.0, 20: 0.0, 11: 0.0}
    split.tick(1, cpu_s_by_pid=cpu, parents=parents, cpu_j=None, gpus=[], target_total_j=5.0)
    cpu = {1: 0.1, 10: 0.5, 20: 0.2, 11: 0.2}  # 1.0 CPU-s: rank 0 owns 0.7 (its worker included)
    pts = {p.key: p.value for p in split.tick(2, cpu_s_by_pid=cpu, parents=parents, cpu_j=10.0, gpus=[],
                                               target_total_j=15.0)}
    assert pts[series_key(0)] == pytest.approx(7.0) and pts[series_key(1)] == pytest.approx(2.0)
    assert pts[series_key("other")] == pytest.approx(5.0 + 1.0)  # before the ranks + the launcher's 0.1
    assert sum(pts.values()) == pytest.approx(15.0)
    assert [e.data["method"] for e in events] == [rank_energy.CPU_BY_TIME] * 2


def test_a_ranks_cpu_share_follows_what_it_does_now_not_a_span_that_ended_earlier():
    """Rank 0 computes for 1 s, then rank 1 for 1 s (ticks every 50 ms): once the window of
    ``min_span_s`` lies inside a phase, every tick's CPU energy is the busy rank's alone."""
    split = RankSplit(clock_ns=lambda: 0, min_span_s=0.3)
    split.register(10, 0)
    split.register(20, 1)
    parents, cpu = {1: None, 10: 1, 20: 1}, {1: 0.0, 10: 0.0, 20: 0.0}
    last = {0: 0.0, 1: 0.0}
    by_phase: dict[int, list[dict[int, float]]] = {0: [], 1: []}
    for i in range(1, 41):
        t_ns, busy = i * 50_000_000, (0 if i <= 20 else 1)
        cpu[10 if busy == 0 else 20] += 0.05
        pts = {p.key: p.value for p in split.tick(t_ns, cpu_s_by_pid=dict(cpu), parents=parents, cpu_j=1.0,
                                                   gpus=[], target_total_j=float(i))}
        got = {r: pts[series_key(r)] - last[r] for r in (0, 1)}
        last = {r: pts[series_key(r)] for r in (0, 1)}
        since_phase_s = (i - (1 if busy == 0 else 21)) * 0.05
        if since_phase_s >= 0.3:
            by_phase[busy].append(got)
    for busy in (0, 1):
        assert by_phase[busy], "no tick had a window inside its phase"
        assert all(g[busy] == pytest.approx(1.0) and g[1 - busy] == pytest.approx(0.0) for g in by_phase[busy])


def test_equal_split_is_a_labelled_fallback_when_a_rank_pid_is_not_in_the_tree():
    now = [0]
    split, events = RankSplit(clock_ns=lambda: now[0]), []
    split.on_event = events.append
    split.register(10, 0)
    split.register(99, 1)  # never appears in the tree (another PID namespace)
    now[0] = int((rank_energy.NOT_IN_TREE_AFTER_S + 1) * 1e9)
    pts = {p.key: p.value for p in split.tick(now[0], cpu_s_by_pid={10: 1.0}, parents={10: None},
                                               cpu_j=8.0, gpus=[GpuTick("nvml:0", 0, 2.0, None, None)],
                                               target_total_j=10.0)}
    assert pts[series_key(0)] == pytest.approx(5.0) and pts[series_key(1)] == pytest.approx(5.0)
    reasons = [e.data["reason"] for e in events if e.data["method"] == rank_energy.CPU_EQUAL]
    assert reasons and "not in the target's process tree" in reasons[0]
    gpu = [e for e in events if e.data["method"] == rank_energy.GPU_EQUAL]
    assert gpu and "no rank reports it as its device" in gpu[0].data["reason"]


def test_a_session_without_rank_series_says_its_energy_is_an_equal_split():
    import numpy as np

    from wattlens.profiler.ranks import NO_SERIES_REASON, per_rank
    from wattlens.profiler.records import StepRecord

    steps = [StepRecord(i, i * 10, i * 10 + 10, energy_j=1.0, rank=r, world_size=2) for r in (0, 1) for i in range(3)]
    job = per_rank(steps, [], {"target/energy_j": (np.array([0, 100]), np.array([0.0, 12.0]))})
    assert [r["energy_j"] for r in job["ranks"]] == [6.0, 6.0]
    assert job["energy_method"] == rank_energy.EQUAL_METHOD and job["energy_fallback_reason"] == NO_SERIES_REASON
    # the equal split puts the launcher's part inside the ranks: "other" is not measured, so not 0 J
    assert job["other_energy_j"] is None


def test_a_ranks_device_comes_from_its_model_else_its_local_rank():
    from wattlens.profiler.runmode import _rank_device

    assert _rank_device({"device": "cuda:3", "local_rank": 1}) == 3
    assert _rank_device({"device": None, "local_rank": 1}) == 1  # not reported yet: LOCAL_RANK
    assert _rank_device({"device": "cpu", "local_rank": 1}) is None
    split = RankSplit(clock_ns=lambda: 0)
    split.register(10, 0, 1)
    split.register(10, 0, None)  # its model turned out to be on the CPU
    gpu = GpuTick("nvml:1", 1, 4.0, None, None)
    split.register(20, 1, None)
    pts = {p.key: p.value for p in split.tick(1, cpu_s_by_pid={10: 0.0, 20: 0.0}, parents={}, cpu_j=None,
                                               gpus=[gpu], target_total_j=4.0)}
    assert pts[series_key(0)] == pts[series_key(1)] == 2.0  # no rank claims GPU 1: the labelled equal split


def test_a_restarted_rank_keeps_its_energy_and_the_sum_holds():
    split = RankSplit(clock_ns=lambda: 0)
    split.register(10, 0)
    split.tick(1, cpu_s_by_pid={10: 0.0}, parents={}, cpu_j=None, gpus=[], target_total_j=0.0)
    split.tick(2, cpu_s_by_pid={10: 1.0}, parents={}, cpu_j=3.0, gpus=[], target_total_j=3.0)
    split.register(11, 0)  # torchrun --max-restarts: rank 0 is a new process
    pts = {p.key: p.value for p in split.tick(3, cpu_s_by_pid={11: 1.0}, parents={}, cpu_j=2.0, gpus=[],
                                               target_total_j=5.0)}
    assert pts[series_key(0)] == pytest.approx(5.0)  # cumulative: never goes back
    assert pts[series_key(0)] + pts[series_key("other")] == pytest.approx(5.0)
