"""No tick stores a physically impossible value.

The OS boundary (psutil's process tree, /proc/stat) is faked; Target, Sampler and the checks run
for real. A process tree whose children appear and vanish between readings, found by rescans that
lag behind, must never add more CPU time to an interval than the tree spent in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattlens.profiler import invariants
from wattlens.profiler.process import Target
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources.base import Reading


# ---- a fake process tree at the psutil boundary -------------------------------------------------
@dataclass
class _Times:
    user: float
    system: float


@dataclass
class FakeProc:
    pid: int
    clock: FakeClock
    created_s: float
    cores: float  # how many cores it keeps busy while alive
    died_s: float | None = None
    visible_after_s: float = 0.0  # children(): when a rescan first lists it
    kids: list[FakeProc] = field(default_factory=list)

    def cpu_s_at(self, t: float) -> float:
        end = t if self.died_s is None else min(t, self.died_s)
        return max(end - self.created_s, 0.0) * self.cores

    def alive(self) -> bool:
        return self.died_s is None or self.clock.now < self.died_s

    # the psutil.Process surface Target uses
    def cpu_times(self) -> _Times:
        if not self.alive():
            raise psutil.NoSuchProcess(self.pid)
        return _Times(self.cpu_s_at(self.clock.now) * 0.75, self.cpu_s_at(self.clock.now) * 0.25)

    def create_time(self) -> float:
        return self.created_s

    def children(self, recursive: bool = False) -> list[FakeProc]:
        return [k for k in self.kids if k.alive() and self.clock.now >= k.visible_after_s]

    def cmdline(self) -> list[str]:
        return ["python", "train.py"]

    def name(self) -> str:
        return "python"

    def is_running(self) -> bool:
        return self.alive()

    def status(self) -> str:
        return psutil.STATUS_RUNNING


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


_child = st.tuples(
    st.floats(0.0, 5.0),  # created, seconds after the root
    st.floats(0.05, 2.0),  # lifetime
    st.floats(0.0, 2.0),  # cores busy
    st.floats(0.0, 1.5),  # how long until a rescan lists it
)


@settings(max_examples=150, deadline=None)
@given(children=st.lists(_child, max_size=6),
       reads=st.lists(st.floats(0.001, 0.5), min_size=3, max_size=40))
def test_tree_cpu_per_interval_never_exceeds_what_the_tree_spent(children, reads):
    clock = FakeClock()
    t0 = clock.now
    root = FakeProc(100, clock, t0, 1.0)
    for i, (created, life, cores, lag) in enumerate(children):
        root.kids.append(FakeProc(200 + i, clock, t0 + created, cores, died_s=t0 + created + life,
                                  visible_after_s=t0 + created + lag))

    def spent(a: float, b: float) -> float:  # what the tree really ran in (a, b]
        procs = [root, *root.kids]
        return sum(p.cpu_s_at(b) - p.cpu_s_at(a) for p in procs)

    target = Target(100, rescan_s=0.0, process=root, wall_clock=clock)
    prev_t, prev_cpu = clock.now, target.cpu_time_s()
    for dt in reads:
        clock.now += dt
        cpu = target.cpu_time_s()
        d = cpu - prev_cpu
        assert d >= -1e-9, "the tree's CPU time went down"
        assert d <= spent(prev_t, clock.now) + 1e-9, (
            f"{d:.3f} CPU-s counted in an interval in which the tree ran {spent(prev_t, clock.now):.3f}")
        prev_t, prev_cpu = clock.now, cpu


def test_a_child_found_late_is_counted_from_when_it_was_seen_and_reported():
    clock = FakeClock()
    root = FakeProc(100, clock, clock.now, 0.0)
    worker = FakeProc(101, clock, clock.now + 0.05, 1.0, visible_after_s=clock.now + 0.95)
    root.kids.append(worker)
    target = Target(100, rescan_s=0.0, process=root, wall_clock=clock)
    assert target.cpu_time_s() == 0.0
    clock.now += 0.9
    assert target.cpu_time_s() == 0.0  # not listed yet
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.0)  # found now: 0.95 s it ran unseen are not this tick's
    assert target.unobserved_cpu_s == pytest.approx(0.95)
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.1)


def test_a_child_born_in_the_interval_is_counted_whole():
    clock = FakeClock()
    root = FakeProc(100, clock, clock.now, 0.0)
    target = Target(100, rescan_s=0.0, process=root, wall_clock=clock)
    target.cpu_time_s()
    root.kids.append(FakeProc(101, clock, clock.now + 0.02, 1.0))
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.08)
    assert target.unobserved_cpu_s == 0.0


def test_a_child_that_exits_keeps_its_share_and_is_not_counted_twice():
    clock = FakeClock()
    root = FakeProc(100, clock, clock.now, 0.0)
    kid = FakeProc(101, clock, clock.now, 1.0, died_s=clock.now + 0.15)
    root.kids.append(kid)
    target = Target(100, rescan_s=0.0, process=root, wall_clock=clock)
    target.cpu_time_s()
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.1)
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.1)  # exited unread: its last reading stays
    kid.died_s = None  # listed again (a zombie still in children())
    clock.now += 0.1
    assert target.cpu_time_s() == pytest.approx(0.1)


# ---- the sampler: ticks a millisecond apart, checks on every tick -------------------------------
class FakeTarget:
    """Target's surface as the sampler sees it, with CPU seconds set by the test."""

    def __init__(self, cpu_s: list[float]):
        self._cpu = list(cpu_s)
        self.unobserved_cpu_s = 0.0

    def pids(self) -> set[int]:
        return {1}

    def cpu_time_s(self) -> float:
        return self._cpu.pop(0) if len(self._cpu) > 1 else self._cpu[0]


class FakeCpuSource:
    id, kind, method, label = "rapl:package-0", "cpu", "counter", "CPU package"

    def __init__(self, energies: list[float]):
        self._e = list(energies)

    def read(self, t_ns: int) -> Reading:
        e = self._e.pop(0) if len(self._e) > 1 else self._e[0]
        return Reading(t_ns, e, None)

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass


@pytest.fixture
def busy(monkeypatch):
    """/proc/stat's busy time: advances 0.01 s (one clock tick) per read."""
    state = {"busy": 50.0}

    def fake_system_cpu_s():
        state["busy"] += 0.01
        return state["busy"], state["busy"] * 4

    monkeypatch.setattr("wattlens.profiler.sampler.system_cpu_s", fake_system_cpu_s)
    return state


def test_ticks_a_millisecond_apart_store_no_cpu_rate_and_keep_the_last_share(busy):
    # one clock tick (10 ms) of CPU seen between two ticks asked for back to back: the old code
    # stored 10 ms / ~1 ms = ~1000 % and gave the target the whole machine's energy
    rings, events = RingBuffers(), []
    sampler = Sampler([FakeCpuSource([0.0, 1.0, 2.0])], interval_s=10.0,
                      target=FakeTarget([0.0, 0.01, 0.02]), sinks=[rings], on_event=events.append,
                      n_logical_cpus=2)
    for _ in range(3):
        sampler.tick()
    assert rings.get("target/cpu_pct") is None or len(rings.get("target/cpu_pct").snapshot()[0]) == 0
    assert events == []


def test_an_impossible_cpu_rate_is_not_stored_but_recorded(busy):
    rings, events = RingBuffers(), []
    sampler = Sampler([FakeCpuSource([0.0, 1.0])], interval_s=0.1, min_cpu_span_s=0.0,
                      target=FakeTarget([0.0, 1e6]), sinks=[rings], on_event=events.append,
                      n_logical_cpus=2)
    sampler.tick()
    sampler.tick()
    buf = rings.get("target/cpu_pct")
    assert buf is None or len(buf.snapshot()[0]) == 0
    assert [e.data["check"] for e in events] == ["cpu-pct-limit"]
    assert "exceeds 200 %" in events[0].message
    assert sampler.violations == {"cpu-pct-limit": 1}


def test_an_energy_counter_that_goes_down_is_not_stored_but_recorded(busy):
    rings, events = RingBuffers(), []
    sampler = Sampler([FakeCpuSource([5.0, 6.0, 4.0, 7.0])], interval_s=0.1, sinks=[rings],
                      on_event=events.append)
    for _ in range(4):
        sampler.tick()
    _, values = rings.get("rapl:package-0/energy_j").snapshot()
    assert list(values) == [5.0, 6.0, 7.0]
    assert [e.data["check"] for e in events] == ["energy-monotonic"]


def test_violations_are_recorded_at_1_10_100_not_every_tick(busy):
    events = []
    sampler = Sampler([FakeCpuSource([0.0])], interval_s=0.1, on_event=events.append)
    for _ in range(120):
        sampler._violation("cpu-pct-limit", "x", 0, "target/cpu_pct")
    assert [e.data["count"] for e in events] == [1, 10, 100]


@pytest.mark.parametrize("pct, ok", [(0.0, True), (199.9, True), (200.0, True), (200.5, False), (-1.0, False)])
def test_cpu_pct_limit_is_100_per_logical_cpu(pct, ok):
    assert (invariants.check_cpu_pct(pct, 2) is None) == ok


def test_target_energy_within_the_source():
    assert invariants.check_target_within("rapl:0", 1.0, 1.0) is None
    assert "exceeds" in invariants.check_target_within("rapl:0", 1.5, 1.0)
    assert "negative" in invariants.check_target_within("rapl:0", -0.1, 1.0)


def test_every_key_the_sampler_produces_is_declared_with_its_unit(monkeypatch):
    # the store writer no longer guesses units from key suffixes: the sampler must declare them
    import os
    import time

    from tests import fake_nvml
    from wattlens.profiler.sources import discover

    gpu = fake_nvml.FakeGpu(power_w=100.0)
    gpu.sm_util = {os.getpid(): 50}
    gpu.processes = {os.getpid(): 2**30}
    fake_nvml.install(monkeypatch, [gpu])
    sources = [s for s in discover().usable if s.id in ("nvml:0", "cpu-model")]
    assert {s.id for s in sources} == {"nvml:0", "cpu-model"}
    produced: set[str] = set()
    sampler = Sampler(sources, interval_s=0.01, target=Target(os.getpid()),
                      sinks=[lambda pts: produced.update(p.key for p in pts)])
    for _ in range(4):
        time.sleep(0.02)
        gpu.power_w += 20.0
        sampler.tick()
    specs = {s.key: s for s in sampler.series_specs()}
    assert produced and produced <= set(specs), sorted(produced - set(specs))
    assert all(specs[k].unit for k in produced)


class _FakeTime:
    """The sampler's clock (``time.monotonic_ns`` / ``time.time``), moved by the test."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def monotonic_ns(self) -> int:
        return int(self.clock.now * 1e9)

    def time(self) -> float:
        return self.clock.now


class _ModelCpuSource:
    """A CPU energy counter at 10 W per busy core over the fake clock (the hardware boundary)."""

    id, kind, method, label = "rapl:package-0", "cpu", "counter", "CPU package"

    def __init__(self, busy_cores):
        self.busy_cores = busy_cores
        self.energy_j = 0.0
        self.last: float | None = None

    def read(self, t_ns: int) -> Reading:
        t = t_ns / 1e9
        if self.last is not None:
            self.energy_j += 10.0 * self.busy_cores(self.last, t) + 5.0 * (t - self.last)
        self.last = t
        return Reading(t_ns, self.energy_j, None)

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass


@settings(max_examples=60, deadline=None)
@given(children=st.lists(_child, max_size=5),
       gaps=st.lists(st.one_of(st.floats(0.0005, 0.004), st.floats(0.08, 0.3)), min_size=5, max_size=60))
def test_sampler_over_appearing_and_vanishing_trees_stores_only_possible_ticks(children, gaps):
    # regular ticks and ticks a few ms apart (step ends), a tree whose children appear, are found
    # late and exit between ticks, on a 2-CPU machine the tree never oversubscribes
    clock = FakeClock()
    t0 = clock.now
    n_cpus = 2
    share = n_cpus / (len(children) + 1)
    root = FakeProc(100, clock, t0, min(1.0, share))
    for i, (created, life, cores, lag) in enumerate(children):
        root.kids.append(FakeProc(200 + i, clock, t0 + created, min(cores, share), died_s=t0 + created + life,
                                  visible_after_s=t0 + created + lag))
    procs = [root, *root.kids]

    def tree_cpu(a: float, b: float) -> float:
        return sum(p.cpu_s_at(b) - p.cpu_s_at(a) for p in procs)

    def busy_s() -> tuple[float, float]:  # /proc/stat: the tree plus a quarter core of others
        b = tree_cpu(t0, clock.now) + 0.25 * (clock.now - t0) + 50.0
        return b, b + 100.0

    src = _ModelCpuSource(lambda a, b: tree_cpu(a, b) + 0.25 * (b - a))
    rings, events = RingBuffers(), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wattlens.profiler.sampler.time", _FakeTime(clock))
        mp.setattr("wattlens.profiler.sampler.system_cpu_s", busy_s)
        sampler = Sampler([src], interval_s=0.1, sinks=[rings], on_event=events.append, n_logical_cpus=n_cpus,
                          target=Target(100, rescan_s=0.0, process=root, wall_clock=clock))
        sampler.tick()
        for gap in gaps:
            clock.now += gap
            sampler.tick()
    assert events == [], [e.message for e in events]
    pct = rings.get("target/cpu_pct")
    if pct is not None:
        # (the fake clock is read in whole ns: rates carry ~1e-8 relative rounding)
        assert pct.snapshot()[1].max(initial=0.0) <= 100.0 * n_cpus * (1 + 1e-6)
    tt, te = rings.get("target/energy_j").snapshot()
    mt, me = rings.get("rapl:package-0/energy_j").snapshot()
    machine = dict(zip(mt.tolist(), me.tolist(), strict=True))
    assert all(b >= a for a, b in zip(te, te[1:], strict=False))
    for (ta, ea), (tb, eb) in zip(zip(tt, te, strict=True), list(zip(tt, te, strict=True))[1:], strict=False):
        assert eb - ea <= machine[int(tb)] - machine[int(ta)] + 1e-9


def test_a_saturated_tree_read_a_clock_tick_high_is_measured_over_a_longer_span(busy, monkeypatch):
    # 2 CPUs, a tree using both fully: CPU times read in 10 ms ticks can show 0.21 s over a 0.1 s
    # span; that is the counters' resolution, not a fault: the span is extended, nothing flagged
    clock = FakeClock()
    monkeypatch.setattr("wattlens.profiler.sampler.time", _FakeTime(clock))
    rings, events = RingBuffers(), []
    sampler = Sampler([FakeCpuSource([0.0, 1.0, 2.0, 3.0])], interval_s=0.1, sinks=[rings], on_event=events.append,
                      target=FakeTarget([0.0, 0.21, 0.40, 0.60]), n_logical_cpus=2)
    for _ in range(4):
        sampler.tick()
        clock.now += 0.1
    assert events == []
    _, pct = rings.get("target/cpu_pct").snapshot()
    assert list(np.round(pct, 6)) == [200.0, 200.0]  # 0.40 s over 0.2 s, then 0.20 s over 0.1 s
    assert np.all(pct <= 200.0)
