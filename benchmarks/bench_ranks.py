"""Multi-rank and metrics benchmarks (issue 12).

1. The agent's overhead per rank on the 2-rank gloo DDP job (tests/workloads/ddp_llama.py, a tiny
   Llama from a config): each rank's training-loop time, plain ``torchrun`` vs the same command
   under ``launch()`` with a live AgentServer (what ``wattlens run`` does), interleaved rounds.
2. The Prometheus exporter's cost: the sampler-thread sink per tick, and one scrape (building the
   families and rendering the text) — in-process, many repetitions.

3. The per-rank energy split's cost on the sampler thread (``split``): one sampler tick on a
   real process tree of 8 "ranks" (sleeping children, 2 workers each), without and with the
   RankSplit, interleaved, side by side.

    python benchmarks/bench_ranks.py         → benchmarks/results/ranks.md and rank_split.md
    python benchmarks/bench_ranks.py split   → benchmarks/results/rank_split.md only
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

JOB = Path(__file__).parent.parent / "tests" / "workloads" / "ddp_llama.py"
STEPS = 30


def _loop_times(out: str) -> dict[int, float]:
    times = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "rank" and parts[2] == "done":
            times[int(parts[1])] = float(parts[3])
    return times


def run_job(with_agent: bool) -> dict[int, float]:
    from wattlens.profiler.agentlink import AgentServer
    from wattlens.profiler.launch import launch

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(JOB), str(STEPS)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not with_agent:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return _loop_times(out)
    with AgentServer(energy_between=lambda t0, t1: (t1 - t0) * 1e-9 * 20.0) as server:
        proc = launch(cmd, server=server, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, _err = proc.communicate(timeout=600)
    return _loop_times(out)


def bench_overhead(rounds: int = 3) -> list[str]:
    plain: dict[int, list[float]] = {0: [], 1: []}
    agent: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):  # interleaved: load changes hit both sides alike
        for rank, t in run_job(False).items():
            plain[rank].append(t)
        for rank, t in run_job(True).items():
            agent[rank].append(t)
    rows = []
    for rank in (0, 1):
        p, a = statistics.median(plain[rank]), statistics.median(agent[rank])
        rows.append(f"| {rank} | {p / STEPS * 1e3:.1f} ms | {a / STEPS * 1e3:.1f} ms | {a / p:.3f} |")
    return rows


def bench_exporter(ticks: int = 20000, scrapes: int = 300) -> tuple[float, float]:
    from prometheus_client import CollectorRegistry, generate_latest

    from wattlens.profiler.metrics import MetricsExporter
    from wattlens.profiler.records import SamplePoint, StepRecord

    ex = MetricsExporter(0)
    ex._sources = {"rapl:0": "counter", "rapl:1": "counter", "nvml:0": "polled", "cpu-model": "estimated"}
    keys = [f"{p}{s}/{k}" for s in ex._sources for p in ("", "target/") for k in ("power_w", "energy_j")]
    points = [SamplePoint(k, 0, 1.0) for k in keys]
    t0 = time.perf_counter()
    for _ in range(ticks):
        ex(points)
    sink_us = (time.perf_counter() - t0) / ticks * 1e6
    for i in range(1000):
        ex.add_step(StepRecord(i, 0, 1, energy_j=1.0, rank=i % 2))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ex)
    t0 = time.perf_counter()
    for _ in range(scrapes):
        generate_latest(registry)
    scrape_ms = (time.perf_counter() - t0) / scrapes * 1e3
    return sink_us, scrape_ms


def bench_split(ranks: int = 8, workers: int = 2, ticks: int = 400) -> tuple[float, float, int]:
    """(µs per sampler tick without the split, with it, members of the tree)."""
    from wattlens.profiler.process import Target
    from wattlens.profiler.rank_energy import RankSplit
    from wattlens.profiler.sampler import Sampler
    from wattlens.profiler.sources.cpu_model import CpuModelSource

    code = ("import subprocess, sys, time\n"
            f"ws = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']) for _ in range({workers})]\n"
            "print('ready', flush=True)\ntime.sleep(600)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(ranks)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        target = Target(os.getpid())
        plain = Sampler([CpuModelSource()], interval_s=0.1, target=target)
        split = RankSplit()
        for r, p in enumerate(procs):
            split.register(p.pid, r)
        with_split = Sampler([CpuModelSource()], interval_s=0.1, target=Target(os.getpid()))
        with_split.rank_split = split
        for s in (plain, with_split):
            s.tick()
            s.tick()
        times: dict[str, list[float]] = {"plain": [], "split": []}
        for _ in range(ticks // 20):  # interleaved batches: load changes hit both alike
            for name, s in (("plain", plain), ("split", with_split)):
                t0 = time.perf_counter()
                for _ in range(20):
                    s.tick()
                times[name].append((time.perf_counter() - t0) / 20 * 1e6)
        return statistics.median(times["plain"]), statistics.median(times["split"]), len(target.pids())
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()


def main_split() -> None:
    plain_us, split_us, members = bench_split()
    body = "\n".join([
        f"### Sampler tick on a real process tree of {members} processes (8 ranks × 2 workers), CPU model source", "",
        "| Sampler tick without the rank split | with the rank split (8 ranks) | Ratio |", "|---|---|---|",
        f"| {plain_us:.0f} µs | {split_us:.0f} µs | {split_us / plain_us:.3f} |", "",
        "Medians of 20 interleaved batches of 20 ticks each on a shared machine; the tick reads every "
        "member's CPU time (its process CPU-time clock, process.process_cpu_s) in both, the split adds the grouping and the shares (children rescanned once a second, as in a session).",
    ])
    print(write_section("rank_split", "Per-rank energy split on the sampler thread (issue 12)", body))


def main() -> None:
    rows = bench_overhead()
    sink_us, scrape_ms = bench_exporter()
    body = "\n".join([
        f"### Agent overhead per rank: 2-rank gloo DDP, tiny Llama, {STEPS} steps, 3 interleaved rounds "
        "(median)", "",
        "| Rank | Step time, plain torchrun | Step time, under launch() + AgentServer | Ratio |",
        "|---|---|---|---|", *rows, "",
        "Medians of interleaved rounds on a shared machine; a ratio below 1 means the agent's cost "
        "is within the run-to-run noise of this job.", "",
        "### Prometheus exporter", "",
        f"- sampler sink per tick (16 series): {sink_us:.2f} µs",
        f"- one scrape (4 sources × 2 scopes, 2 ranks; families built and rendered): {scrape_ms:.3f} ms",
    ])
    print(write_section("ranks", "Multi-rank jobs and metrics (issue 12)", body))
    main_split()


if __name__ == "__main__":
    main_split() if sys.argv[1:] == ["split"] else main()
