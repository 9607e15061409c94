"""What wattlens costs on a node, under a real Prometheus server (issue 12, docs/scale.md).

1. **Cost per node.** One workload process (a GPT-2-style forward loop, one thread) runs throughout.
   ``wattlens attach`` measures it in three configurations, interleaved round by round:
   power only (``--no-stacks``), power + stack sampling (the default: py-spy at 50 Hz
   --nonblocking, 5 Hz blocking calibration), and the default plus ``--metrics-port`` with a real
   Prometheus (Debian's ``prometheus`` package) scraping it every second. The figure is the CPU
   time of wattlens and the py-spy processes it starts, per second of wall time, in steady state
   (from 10 s after the start to 2 s before the end, so imports and the summary are left out),
   read from /proc via psutil (the wattlens process, its reaped children and its live children).
2. **Dashboard.** A 2-rank gloo DDP job (tests/workloads/ddp_llama.py) under
   ``wattlens run --metrics-port``, scraped every second; then scripts/render_dashboard.py draws
   packaging/grafana-dashboard.json's panels from that Prometheus' data into
   docs/img/dashboard.png (Grafana itself is not packaged by Debian).

Needs ``prometheus`` on PATH (``apt-get install prometheus``); says so and exits otherwise.
Results: benchmarks/results/node.md (``--dashboard-only``: redraw the picture, write no results).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from common import write_section  # noqa: E402
from render_dashboard import render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.set_num_threads(1)
m = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=2048)).eval()
x = torch.randint(0, 2048, (2, 64))
print("ready", flush=True)
with torch.no_grad():
    while True:
        m(x)
"""
CONFIGS = {
    "power only (--no-stacks)": ["--no-stacks"],
    "power + stacks (default)": [],
    "power + stacks + metrics, scraped every 1 s": ["--metrics-port", "{port}"],
}
DURATION_S = 40
ROUNDS = 2
WINDOW = (10.0, DURATION_S - 2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_s(p: psutil.Process) -> float:
    """CPU seconds of ``p``, its reaped children and its live children (py-spy windows)."""
    with p.oneshot():
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
    for c in p.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = c.cpu_times()
            total += ct.user + ct.system
    return total


class Prometheus:
    def __init__(self, targets: list[str], folder: Path):
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        cfg = folder / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wattlens\n"
                       f"    static_configs:\n      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def scrapes(self, job: str = "wattlens") -> int:
        from render_dashboard import query
        r = query(self.url, "/api/v1/query", query=f'sum(count_over_time(up{{job="{job}"}}[1h]))')
        return int(float(r[0]["value"][1])) if r else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(pid: int, args: list[str], db: Path) -> float:
    """One attach of DURATION_S; returns CPU s per wall s over the steady window."""
    cmd = [sys.executable, "-m", "wattlens.app", "attach", str(pid), "--duration", str(DURATION_S),
           "--db", str(db), "--name", "bench-node", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = psutil.Process(proc.pid)
    t0 = time.monotonic()
    time.sleep(WINDOW[0])
    c0, w0 = tree_cpu_s(p), time.monotonic()
    time.sleep(WINDOW[1] - (w0 - t0))
    c1, w1 = tree_cpu_s(p), time.monotonic()
    if proc.wait(timeout=DURATION_S * 3) != 0:
        raise RuntimeError(f"attach failed: {cmd}")
    return (c1 - c0) / (w1 - w0)


def bench_cost(folder: Path) -> tuple[list[str], int]:
    work = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE, text=True)
    port = free_port()
    results: dict[str, list[float]] = {k: [] for k in CONFIGS}
    loads = []
    prom = None
    try:  # the workload never outlives the benchmark, whatever fails
        assert work.stdout.readline().strip() == "ready"
        prom = Prometheus([f"127.0.0.1:{port}"], folder / "prom-cost")
        for _ in range(ROUNDS):
            for name, args in CONFIGS.items():
                loads.append(os.getloadavg()[0])
                results[name].append(measure(work.pid, [a.format(port=port) for a in args],
                                             folder / "cost.db"))
        scrapes = prom.scrapes()
    finally:
        if prom is not None:
            prom.stop()
        work.kill()
        work.wait()
    base = statistics.median(results["power only (--no-stacks)"])
    rows = ["| Configuration | CPU of wattlens + py-spy, % of one core (per round) | median | vs power only |",
            "|---|---|---|---|"]
    for name, vals in results.items():
        med = statistics.median(vals)
        rows.append(f"| {name} | {', '.join(f'{v * 100:.1f}' for v in vals)} | {med * 100:.1f} % | "
                    f"{'—' if name.startswith('power only') else f'+{(med - base) * 100:.1f} pp'} |")
    rows += ["", f"Load average (1 min) at the start of each attach: "
             f"{', '.join(f'{v:.1f}' for v in loads)}; Prometheus took {scrapes} scrapes of the "
             "metrics endpoint (it is down between attaches)."]
    return rows, scrapes


def bench_dashboard(folder: Path, duration_s: float = 150.0) -> list[str]:
    port = free_port()
    prom = Prometheus([f"127.0.0.1:{port}"], folder / "prom-dash")
    cmd = [sys.executable, "-m", "wattlens.app", "run", "--metrics-port", str(port), "--duration",
           str(duration_s), "--db", str(folder / "dash.db"), "--name", "bench-node-ddp", "--",
           sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           str(ROOT / "tests" / "workloads" / "ddp_llama.py"), "1000000", "1"]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(duration_s - 5)
        end = time.time()
        out = ROOT / "docs" / "img" / "dashboard.png"
        counts = render(prom.url, start, end, out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        prom.stop()
    rows = [f"Dashboard: `{out.relative_to(ROOT)}`, {end - start:.0f} s of a 2-rank gloo DDP job "
            "(rank 1 runs extra matrix products each step) under `wattlens run --metrics-port`, scraped every 1 s by "
            "Prometheus; series per panel:", ""]
    rows += [f"- {title}: {n}" for title, n in counts.items()]
    return rows


def main() -> None:
    if shutil.which("prometheus") is None:
        print("bench_node: no `prometheus` on PATH (apt-get install prometheus); nothing measured")
        return
    with tempfile.TemporaryDirectory(prefix="wattlens-bench-node-") as tmp:
        folder = Path(tmp)
        cost_rows = [] if "--dashboard-only" in sys.argv else bench_cost(folder)[0]
        dash_rows = bench_dashboard(folder)
    if not cost_rows:
        print("\n".join(dash_rows))
        return
    body = "\n".join([
        f"### Cost per node: `wattlens attach` on a GPT-2-style forward loop, {ROUNDS} interleaved rounds "
        f"of {DURATION_S} s, steady window {WINDOW[0]:.0f}–{WINDOW[1]:.0f} s", "",
        *cost_rows, "", "### Dashboard fed by a real scrape", "", *dash_rows])
    print(write_section("node", "wattlens on a node under Prometheus (issue 12)", body))


if __name__ == "__main__":
    main()
