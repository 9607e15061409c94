"""Benchmark `attach` following ranks: what sampling every rank costs, one py-spy sampler per rank
(what wattlens does) against one `py-spy record --subprocesses` for the whole tree.

Workload: tests/workloads/ddp_attach.py under `python -m torch.distributed.run --nproc-per-node 2`
(a 2-rank gloo DDP job of a tiny Llama-style model from a config, CPU, one thread per rank),
attached by the launcher's PID, as `wattlens attach` is.

Phases alternate within each round, each ``--seconds`` long:
  per-rank     RankFollower as `wattlens attach` runs it (50 Hz --nonblocking + 5 Hz blocking
               calibration per rank, 5 s windows) with the native backward reader off
  per-rank+native  the same with its 1 Hz `--native` reader per rank (the attach default for
               a training job)
  subprocesses one `py-spy record --subprocesses` at 50 Hz --nonblocking on the launcher plus one
               at 5 Hz blocking, restarted every 5 s window the same way
Per phase: CPU seconds of the py-spy processes (this process's reaped children, os.times()) and of
this process (parsing, the follower thread), per wall second and per rank (÷ 2); the job's DDP
steps per second while it runs (the ranks count their steps into DIR/stepsR). Medians over rounds.

Run:  .venv/bin/python benchmarks/bench_attach_ranks.py [--rounds 2 --seconds 30]
Writes benchmarks/results/attach_ranks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.common import write_section  # noqa: E402

JOB = HERE.parent / "tests" / "workloads" / "ddp_attach.py"
RANKS = 2


def cpu_s() -> tuple[float, float]:
    """(this process's CPU s, its reaped children's CPU s)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def steps(folder: Path) -> int:
    total = 0
    for r in range(RANKS):
        try:
            total += int((folder / f"steps{r}").read_text() or 0)
        except (FileNotFoundError, ValueError):
            pass
    return total


def phase_follower(root_pid: int, seconds: float, native: bool) -> Counter:
    from wattlens.profiler.stacks.follow import RankFollower

    rows: list = []
    f = RankFollower(root_pid, on_window=rows.extend, energy_between=lambda a, b: None,
                     **({} if native else {"native_hz": 0}))
    f.start()
    time.sleep(seconds)
    f.stop()
    return Counter(r.rank for r in rows)


def _pyspy(exe: str, root_pid: int, rate: int, out: str, nonblocking: bool) -> subprocess.Popen:
    cmd = [exe, "record", "--pid", str(root_pid), "--subprocesses", "--rate", str(rate), "--format", "raw",
           "--idle", "--threads", "--full-filenames", "--output", out] + (["--nonblocking"] if nonblocking else [])
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def phase_subprocesses(root_pid: int, seconds: float, window_s: float = 5.0) -> Counter:
    """Whole windows of py-spy --subprocesses; counts samples per process by the frames
    ``process PID:"cmdline"`` py-spy puts at the bottom of every stack of a --subprocesses run
    (one per process from the attached one down: a rank's stack starts with the launcher's frame,
    then the rank's)."""
    from wattlens.profiler.stacks.sampler import find_pyspy

    exe = find_pyspy()
    per_pid: Counter = Counter()
    t_end = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        while time.monotonic() < t_end:
            out, cal_out = os.path.join(tmp, "w.txt"), os.path.join(tmp, "c.txt")
            procs = [_pyspy(exe, root_pid, 50, out, True), _pyspy(exe, root_pid, 5, cal_out, False)]
            for p in procs:
                for line in p.stdout:
                    if "Sampling process" in line:
                        break
            time.sleep(min(window_s, max(0.05, t_end - time.monotonic())))
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.communicate(timeout=30)
            with open(out, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    head, _, count = line.rstrip().rpartition(" ")
                    pids = re.findall(r"(?:^|;)process (\d+):", head)
                    if pids:
                        per_pid[f"process {pids[-1]}"] += int(count)
    return per_pid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-attach-ranks-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(RANKS), str(JOB), str(folder)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    while not all((folder / f"rank{r}.pid").exists() for r in range(RANKS)):
        assert job.poll() is None, "the DDP job ended before it started training"
        time.sleep(0.2)
    phases = {"none": lambda: Counter(), "per-rank": lambda: phase_follower(job.pid, args.seconds, False),
              "per-rank+native": lambda: phase_follower(job.pid, args.seconds, True),
              "subprocesses": lambda: phase_subprocesses(job.pid, args.seconds)}
    results: dict[str, list[dict]] = {k: [] for k in phases}
    try:
        for rnd in range(args.rounds):
            order = list(phases)[rnd % len(phases):] + list(phases)[:rnd % len(phases)]
            for name in order:
                print(f"round {rnd + 1}: {name} ...", file=sys.stderr, flush=True)
                own0, kids0 = cpu_s()
                s0, t0 = steps(folder), time.monotonic()
                if name == "none":
                    time.sleep(args.seconds)
                    seen = Counter()
                else:
                    seen = phases[name]()
                wall = time.monotonic() - t0
                own1, kids1 = cpu_s()
                results[name].append({"wall_s": wall, "pyspy_cpu_s": kids1 - kids0, "own_cpu_s": own1 - own0,
                                      "steps_per_s": (steps(folder) - s0) / wall, "seen": dict(seen)})
    finally:
        (folder / "stop1").touch()
        (folder / "stop0").touch()
        try:
            job.wait(timeout=120)
        except subprocess.TimeoutExpired:
            job.kill()
    path = write_section("attach_ranks", "attach following ranks: py-spy per rank vs --subprocesses (issue 12)",
                         markdown(results, args))
    print(path.read_text())
    return 0


def markdown(results: dict[str, list[dict]], args) -> str:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] / (r["wall_s"] if key != "steps_per_s" else 1.0) for r in results[name])

    base_steps = med("none", "steps_per_s")
    lines = [f"2-rank gloo DDP job (tests/workloads/ddp_attach.py, tiny Llama, 1 thread per rank) under "
             f"`python -m torch.distributed.run`, attached by the launcher PID; {args.rounds} rounds of "
             f"{args.seconds:g} s per phase, phases interleaved, medians.", "",
             "| Phase | py-spy CPU (s per s) | per rank | wattlens CPU (s per s) | job steps/s | vs none |",
             "|---|---|---|---|---|---|"]
    for name in results:
        pys, own, sps = med(name, "pyspy_cpu_s"), med(name, "own_cpu_s"), med(name, "steps_per_s")
        lines.append(f"| {name} | {pys:.3f} | {pys / RANKS:.3f} | {own:.3f} | {sps:.1f} | "
                     f"{sps / base_steps:.3f} |" if base_steps else f"| {name} | {pys:.3f} | {pys / RANKS:.3f} | "
                     f"{own:.3f} | {sps:.1f} | n/a |")
    lines += ["", "Rows per rank / samples per process seen in the last round: "
              + "; ".join(f"{k}: {results[k][-1]['seen']}" for k in results if k != "none"), "",
              "py-spy CPU is the CPU time of the py-spy processes (reaped children of the benchmark) "
              "per wall second; 'wattlens CPU' is the benchmark process itself (the follower thread, "
              "parsing the windows). On this 2-core machine shared with other jobs, step rates move "
              "with the load; read them side by side within the table."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
