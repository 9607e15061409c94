"""Following the ranks of an attached process tree: which processes are sampled, how each rank's
energy is split off the tree's, and what happens when ranks start late, exit, or cannot be read.

The trees are real processes (tests/workloads/rank_launcher.py: a launcher that starts rank
processes with RANK/LOCAL_RANK/WORLD_SIZE as torchrun does, no torch) sampled by the real py-spy.
Everything is driven by files the ranks write and wait for; loops that wait for evidence are
bounded (MAX_WAIT_S) against a hang, never a speed requirement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from wattlens.profiler.stacks.cpu_split import CpuSplit
from wattlens.profiler.stacks.follow import RankFollower
from wattlens.profiler.stacks.sampler import find_pyspy
from wattlens.profiler.stacks.workers import find_workers, is_launcher, owners

LAUNCHER = Path(__file__).parent / "workloads" / "rank_launcher.py"
PYSPY = find_pyspy()
POWER_W = 40.0
MAX_WAIT_S = 120.0  # a bound against a hang, not a speed requirement
needs_pyspy = pytest.mark.skipif(PYSPY is None, reason="py-spy is not installed")


def wait_for(cond, what: str):
    deadline = time.monotonic() + MAX_WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


class Job:
    """A launcher with ``n`` rank processes in ``folder``; stopped and reaped at the end."""

    def __init__(self, folder: Path, n: int, late: int | None = None):
        self.folder = folder
        self.n = n
        args = [sys.executable, str(LAUNCHER), str(folder), str(n)] + ([str(late)] if late is not None else [])
        self.proc = subprocess.Popen(args)
        self.root = psutil.Process(self.proc.pid)

    def rank_pid(self, rank: int) -> int:
        path = self.folder / f"rank{rank}.pid"
        wait_for(lambda: path.exists() and path.read_text(), f"rank {rank} to start")
        return int(path.read_text())

    def start_rank(self, rank: int) -> int:
        (self.folder / f"start{rank}").touch()
        return self.rank_pid(rank)

    def stop_rank(self, rank: int) -> None:
        pid = self.rank_pid(rank)
        (self.folder / f"stop{rank}").touch()
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 f"rank {rank} to exit")

    def close(self) -> None:
        for r in range(self.n):
            (self.folder / f"stop{r}").touch()
            (self.folder / f"start{r}").touch()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in self.root.children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def job(tmp_path):
    jobs: list[Job] = []

    def make(n: int = 2, late: int | None = None) -> Job:
        j = Job(tmp_path, n, late)
        jobs.append(j)
        return j

    yield make
    for j in jobs:
        j.close()


# --------------------------------------------------------------------------- which processes


def test_ranks_are_found_by_their_environment_and_a_forked_helper_is_its_ranks(job):
    j = job(2)
    pids = {r: j.rank_pid(r) for r in (0, 1)}
    wait_for(lambda: len(j.root.children(recursive=True)) >= 3, "rank 0's forked helper")
    workers = find_workers(j.root)
    # the forked helper has RANK=0 too, but its parent is rank 0: it is not a rank of its own
    assert [(w.rank, w.pid, w.local_rank, w.world_size, w.found_by) for w in workers] == [
        (0, pids[0], 0, 2, "environment"), (1, pids[1], 1, 2, "environment")]
    owner = owners(j.root, list(pids.values()))
    helper = next(c.pid for c in psutil.Process(pids[0]).children())
    assert owner[helper] == pids[0] and owner[pids[1]] == pids[1]
    assert owner[j.root.pid] is None  # the launcher's own time belongs to no rank


def test_a_plain_process_is_sampled_itself_and_a_shell_launcher_by_its_python_children(tmp_path):
    single = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "import time; time.sleep(60)" & wait'])
    try:
        assert [(w.pid, w.found_by, w.rank) for w in find_workers(psutil.Process(single.pid))] == [
            (single.pid, "root", None)]
        root = psutil.Process(shell.pid)
        wait_for(lambda: root.children(), "the shell's Python child")
        child = root.children()[0].pid
        assert [(w.pid, w.found_by) for w in find_workers(root)] == [(child, "python-child")]
    finally:
        for p in (single, shell):
            for c in psutil.Process(p.pid).children(recursive=True):
                c.kill()
            p.kill()
            p.wait()


def test_launcher_command_lines():
    assert is_launcher(["/venv/bin/torchrun", "--nproc-per-node", "2", "train.py"])
    assert is_launcher(["python", "-m", "torch.distributed.run", "train.py"])
    assert is_launcher(["/usr/bin/python3", "/venv/lib/torch/distributed/launch.py", "train.py"])
    assert not is_launcher(["python", "train.py", "--note", "torchrun"])


# --------------------------------------------------------------------------- the energy split


class FakeProc:
    def __init__(self, pid: int):
        self.pid = pid


def test_cpu_split_gives_each_worker_its_subtrees_share_and_counts_the_tree_once():
    now = [0]
    cpu = {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}  # 1 launcher, 2 rank 0, 3 its helper, 4 rank 1

    def read(proc):
        return cpu.get(proc.pid)

    split = CpuSplit(read=read, clock=lambda: now[0])
    split.set_owners({1: None, 2: 2, 3: 2, 4: 4}, {p: FakeProc(p) for p in cpu})
    split.read()
    now[0] = 1_000_000_000
    cpu.update({1: 0.1, 2: 0.5, 3: 0.2, 4: 0.2})
    split.read()
    assert split.share(2, 0, 1_000_000_000) == pytest.approx(0.7)
    assert split.share(4, 0, 1_000_000_000) == pytest.approx(0.2)
    # half-way between two readings: interpolated, so the shares stay the same
    assert split.share(2, 0, 500_000_000) == pytest.approx(0.7)
    # rank 1 exits: its last reading stays; it spent nothing after it
    del cpu[4]
    now[0] = 2_000_000_000
    cpu.update({1: 0.2, 2: 1.0, 3: 0.4})
    assert split.share(4, 1_000_000_000, 2_000_000_000) == 0.0
    assert split.share(2, 1_000_000_000, 2_000_000_000) == pytest.approx(0.7 / 0.8)
    # a span with no CPU time at all has nothing to split by
    assert split.share(2, 2_000_000_000, 2_000_000_000) is None


def test_cpu_split_of_a_worker_that_owns_the_whole_tree_is_one():
    split = CpuSplit(read=lambda p: 0.0, clock=lambda: 0)
    split.set_owners({7: 7, 8: 7}, {7: FakeProc(7), 8: FakeProc(8)})
    assert split.share(7, 0, 10) == 1.0


# --------------------------------------------------------------------------- following, live


def follow(root_pid: int, **kw) -> tuple[RankFollower, list]:
    rows: list = []
    kw.setdefault("window_s", 1.0)
    kw.setdefault("rate_hz", 100)
    f = RankFollower(root_pid, on_window=rows.extend,
                     energy_between=lambda t0, t1: POWER_W * (t1 - t0) / 1e9, **kw)
    return f, rows


def window_energy(rows) -> dict[tuple[int | None, int], float]:
    out: dict = defaultdict(float)
    for r in rows:
        out[(r.rank, r.window_start_ns, r.window_end_ns)] += r.self_energy_j
    return out


@needs_pyspy
def test_follower_samples_each_rank_picks_up_a_late_one_and_outlives_an_exited_one(job):
    j = job(2, late=1)
    pid0 = j.rank_pid(0)
    f, rows = follow(j.root.pid)
    f.start()
    try:
        assert [w.pid for w in f.workers()] == [pid0] and f.available
        wait_for(lambda: any(r.rank == 0 for r in list(rows)), "rank 0's first window")
        pid1 = j.start_rank(1)  # the launcher starts rank 1 after we attached
        wait_for(lambda: any(r.rank == 1 for r in list(rows)), "rank 1's first window")
        assert sorted(w.pid for w in f.workers()) == sorted([pid0, pid1])
        j.stop_rank(1)
        n0 = sum(r.rank == 0 for r in list(rows))
        wait_for(lambda: sum(r.rank == 0 for r in list(rows)) > n0 + 1, "rank 0 going on after rank 1 exited")
    finally:
        f.stop()
    assert {r.rank for r in rows} == {0, 1}
    # each window's rows hold that rank's share of the tree's energy over the window, never more
    for (_rank, t0, t1), energy_j in window_energy(rows).items():
        assert 0 < energy_j <= POWER_W * (t1 - t0) / 1e9 + 1e-6
    notes = f.stop_notes()
    assert any(k == "note" and "rank 1" in m and "exited during the session" in m for k, m, _ in notes)
    reads = {d["rank"]: m for k, m, d in notes if k == "stack-reads"}
    assert set(reads) == {0, 1} and reads[0].startswith(f"rank 0 (PID {pid0}): stack reads")


@needs_pyspy
def test_rank_energies_add_up_to_the_tree_once(job):
    """While both ranks run, rank 0 (itself + its forked helper: two spinning processes) gets
    about twice rank 1's share, and the two shares over one span never exceed the whole."""
    j = job(2)
    pids = {r: j.rank_pid(r) for r in (0, 1)}
    f, rows = follow(j.root.pid)
    f.start()
    try:
        wait_for(lambda: sum(r.rank == 1 for r in list(rows)) > 0 and sum(r.rank == 0 for r in list(rows)) > 0
                 and len({(r.rank, r.window_start_ns) for r in list(rows)}) >= 6, "three windows per rank")
        t0, t1 = f.cpu._times[pids[0]][0], f.cpu._last_read_ns
        s0, s1 = f.cpu.share(pids[0], t0, t1), f.cpu.share(pids[1], t0, t1)
    finally:
        f.stop()
    assert s0 + s1 <= 1.0 + 1e-9
    assert s0 > s1 > 0  # two spinning processes against one (the machine's load decides by how much)


def deny_ptrace_for(pid: int, folder: Path) -> Path:
    """A `py-spy` that is the real one, run as 'nobody' when it is pointed at ``pid``: the kernel
    refuses it ptrace for that process only."""
    folder.mkdir(exist_ok=True)
    wrapper = folder / "py-spy"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --pid {pid} "*) exec setpriv --reuid=65534 --regid=65534 --clear-groups '
        f'{PYSPY} "$@";; esac\nexec {PYSPY} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv to run py-spy as an unprivileged user")


@needs_pyspy
@needs_setpriv
def test_a_rank_py_spy_may_not_read_is_one_line_and_the_others_go_on(job, tmp_path):
    j = job(2)
    pid1 = j.rank_pid(1)
    wrapper = deny_ptrace_for(pid1, tmp_path / "bin")
    f, rows = follow(j.root.pid, pyspy_path=wrapper)
    f.start()
    try:
        notes = f.start_notes()
        assert len(notes) == 1 and "\n" not in notes[0]
        assert notes[0].startswith(f"no layer figures for rank 1 (PID {pid1}): ") and "ptrace" in notes[0]
        wait_for(lambda: any(r.rank == 0 for r in list(rows)), "rank 0's rows")
    finally:
        f.stop()
    assert {r.rank for r in rows} == {0}
    assert not any("rank 1" in m for _, m, _ in f.stop_notes())  # said once, at the start


@needs_pyspy
@needs_setpriv
def test_the_session_keeps_measuring_power_when_a_rank_cannot_be_read(job, tmp_path, monkeypatch):
    from wattlens.profiler.process import Target
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store

    j = job(2)
    pid1 = j.rank_pid(1)
    bin_dir = tmp_path / "bin"
    deny_ptrace_for(pid1, bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # found before the real one
    store = Store(tmp_path / "s.db")
    session = ProfilingSession(store, target=Target(j.root.pid), interval_s=0.1, discovery=discover(gpu=False),
                               stacks=True, stack_rate_hz=100)
    rows: list = []
    session.on_layers(rows.extend)
    try:
        session.start()
        said = [n for n in session.notes if f"rank 1 (PID {pid1})" in n]
        assert len(said) == 1 and "ptrace" in said[0]  # said at once, one line
        wait_for(lambda: any(r.rank == 0 for r in list(rows)), "rank 0's rows")
        summary = session.stop("stopped", "test")
    finally:
        if session.status == "running":
            session.stop()
        store.close()
    assert summary["status"] == "stopped"
    assert summary["target"]["energy_j"] is not None and summary["target"]["energy_j"] > 0
    assert sum(f"rank 1 (PID {pid1})" in n for n in summary["notes"]) == 1
