"""Measurement core benchmarks (issue 2): store ingest rate, sampler CPU cost at 10 Hz,
the target's throughput with and without `wattlens attach`, and `wattlens --help` start time.

    python benchmarks/bench_core.py        → benchmarks/results/core.md
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

WORKLOAD = """
import sys, time, torch
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
x = torch.randn(64, 256)
print("ready", flush=True)
for line in sys.stdin:            # each line: run for N seconds, print iterations
    end = time.perf_counter() + float(line)
    n = 0
    while time.perf_counter() < end:
        m(x); n += 1
    print(n, flush=True)
"""


def bench_ingest(n_samples: int = 400_000, db: str | None = None) -> tuple[float, float]:
    """Samples/s into ``db`` (a new SQLite file in a temporary folder when None; or an empty
    database's URL): raw batched inserts, then through the writer thread."""
    from wattlens.profiler.records import SamplePoint, SeriesSpec
    from wattlens.profiler.store import Store
    from wattlens.profiler.store.writer import StoreWriter

    with tempfile.TemporaryDirectory() as d:
        store = Store(db or Path(d) / "b.db")
        keys = [f"s{i}/power_w" for i in range(8)]
        sid, ids = store.create_session(name="bench", kind="attach", started_at=time.time(), start_ns=0,
                                        series=[SeriesSpec(k, "W", "polled") for k in keys])
        # raw Store ingest (batched executemany), then through the writer thread (the real path)
        rows = [(ids[keys[i % 8]], i, float(i)) for i in range(n_samples)]
        t0 = time.perf_counter()
        for i in range(0, n_samples, 20_000):
            store.insert_samples(rows[i:i + 20_000])
        raw_rate = n_samples / (time.perf_counter() - t0)
        w = StoreWriter(store, sid, ids)
        w.start()
        points = [SamplePoint(keys[i % 8], i, float(i)) for i in range(n_samples)]
        t0 = time.perf_counter()
        for i in range(0, n_samples, 80):  # the sampler hands ~8-80 points per tick
            w(points[i:i + 80])
        w.stop()
        writer_rate = n_samples / (time.perf_counter() - t0)
        store.close()
    return raw_rate, writer_rate


def bench_sampler_cpu(seconds: float = 20.0, target_pid: int | None = None) -> float:
    """CPU time of the sampler thread at 10 Hz as percent of one core (thread CPU clock)."""
    import threading

    from wattlens.profiler.process import Target
    from wattlens.profiler.ring import RingBuffers
    from wattlens.profiler.sampler import Sampler
    from wattlens.profiler.sources import discover

    sampler = Sampler(discover().usable, interval_s=0.1, target=Target(target_pid or os.getpid()),
                      sinks=[RingBuffers()])
    cpu_s = {}

    def run():
        t0 = time.thread_time()
        sampler._run()
        cpu_s["v"] = time.thread_time() - t0

    th = threading.Thread(target=run)
    sampler.tick()
    th.start()
    time.sleep(seconds)
    sampler._stop.set()
    th.join()
    return 100.0 * cpu_s["v"] / seconds


def bench_overhead(rounds: int = 6, seconds: float = 4.0) -> tuple[float, list[float], list[float]]:
    """Target throughput without and with `wattlens attach` (interleaved A B A B ...)."""
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"

    def measure() -> float:
        proc.stdin.write(f"{seconds}\n")
        proc.stdin.flush()
        return int(proc.stdout.readline()) / seconds

    measure()  # warm-up
    base, prof = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(rounds):
            base.append(measure())
            att = subprocess.Popen([sys.executable, "-m", "wattlens.app", "attach", str(proc.pid), "--no-stacks",
                                    "--duration", str(seconds + 3), "--db", f"{d}/o.db", "--json"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)  # let the profiler start and reach steady state
            prof.append(measure())
            att.wait()
    proc.stdin.close()
    proc.wait()
    ratio = statistics.median(p / b for p, b in zip(prof, base, strict=True))
    return ratio, base, prof


def bench_help(n: int = 7) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wattlens.app", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    raw, via_writer = bench_ingest()
    cpu_pct = bench_sampler_cpu()
    ratio, base, prof = bench_overhead()
    help_s = bench_help()
    body = f"""
| What | Result | Goal |
|---|---|---|
| Store ingest, batched executemany (samples/s) | {raw:,.0f} | ≥ 100,000 |
| Store ingest through the writer thread (samples/s) | {via_writer:,.0f} | ≥ 100,000 |
| Sampler CPU at 10 Hz, attached to a PID (% of one core, thread CPU time over 20 s) | {cpu_pct:.2f} % | < 1 % |
| Target throughput with `attach` / without (median of {len(base)} interleaved rounds) | {ratio:.3f} | ≥ 0.99 |
| `wattlens --help` wall time (median of 7, fresh interpreter) | {help_s * 1000:.0f} ms | < 500 ms |

Throughput rounds (iterations/s), without: {", ".join(f"{b:.0f}" for b in base)};
with: {", ".join(f"{p:.0f}" for p in prof)}. The machine has 2 cores, so the profiler competes
with the target for CPU: the ratio includes that.
"""
    path = write_section("core", "Measurement core (issue 2)", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
