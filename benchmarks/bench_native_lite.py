"""Lite native reads (profiler/stacks/native_lite.py) against py-spy's native reads (issue 14).

One child runs the Llama-style training loop (bench_stacks' worker, WATTLENS_BENCH_TRAIN=1):

1. *Stops*: ``--lite-s`` seconds of lite reads alone at ``--hz``: each read's stop of the main
   thread (PTRACE_SEIZE to PTRACE_DETACH, measured by the reader itself), as a distribution.
2. *Same run*: ``--same-s`` seconds with a ``py-spy record --native`` at ``--hz`` and the lite
   reader at ``--hz`` reading the same child at the same time: the backward's op shares of each
   (py-spy's as native.backward_ops labels them, the lite reader's as native_lite does), per op
   the difference in percentage points with its binomial standard error
   (sqrt(se_lite² + se_pyspy²)). py-spy leaves reads inside BLAS kernels unnamed ("matmul grad
   (BLAS kernel; node not unwound)") where the lite reader names their node, so the matrix
   products' nodes are also compared as one family.

Run:  .venv/bin/python benchmarks/bench_native_lite.py   (about 4 minutes)
Writes benchmarks/results/native_lite.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import RESULTS_DIR, write_section  # noqa: E402

MATMUL_NODES = ("MmBackward0", "AddmmBackward0", "BmmBackward0", "BaddbmmBackward0", "MvBackward0",
                "LinearBackward0", "matmul grad (BLAS kernel; node not unwound)")


def _lite_reads(reader, seconds: float, hz: float) -> tuple[Counter, list[float], int]:
    """(backward reads per op, each read's stop in ms, reads put off as busy)."""
    from wattlens.profiler.stacks.native_lite import ThreadBusy

    ops: Counter = Counter()
    stops_ms: list[float] = []
    busy = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        try:
            read = reader.read()
        except ThreadBusy:
            busy += 1
        else:
            stops_ms.append(read.stop_ns / 1e6)
            ops[read.op] += 1
        time.sleep(1.0 / hz)
    return ops, stops_ms, busy


def _quantiles(values: list[float]) -> dict:
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    return {"n": len(v), "median": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[-1],
            "mean": sum(v) / len(v)}


def measure(lite_s: float, same_s: float, hz: int) -> dict:
    import subprocess

    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    os.environ["WATTLENS_BENCH_TRAIN"] = "1"
    from bench_stacks import LoopChild

    from wattlens.profiler.stacks.native import backward_ops
    from wattlens.profiler.stacks.native_lite import LiteReader
    from wattlens.profiler.stacks.sampler import find_pyspy, native_command

    load_before = os.getloadavg()
    child = LoopChild(lite_s + same_s + 120)
    try:
        time.sleep(5.0)  # past the first iterations
        reader = LiteReader(child.pid)
        reader.load()
        alone_ops, alone_stops, alone_busy = _lite_reads(reader, lite_s, hz)
        exe = find_pyspy()
        if exe is None:
            raise SystemExit("py-spy is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "native.txt")
            spy = subprocess.Popen(native_command(exe, child.pid, hz, int(same_s), out),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            same_ops, same_stops, same_busy = _lite_reads(reader, same_s, hz)
            spy.wait(60)
            spy_ops = backward_ops(Path(out).read_text())
    finally:
        child.close()
    return {"hz": hz, "lite_s": lite_s, "same_s": same_s, "symbols": reader.symbols,
            "load_s": reader.load_s, "load_before": load_before, "load_after": os.getloadavg(),
            "alone": {"ops": {str(k): v for k, v in alone_ops.items()}, "stops_ms": alone_stops,
                      "busy": alone_busy},
            "same": {"lite_ops": {str(k): v for k, v in same_ops.items()}, "stops_ms": same_stops,
                     "busy": same_busy, "pyspy_ops": dict(spy_ops)}}


def compare(lite: dict, spy: dict) -> list[dict]:
    """Per op: each reader's share of its backward reads, the difference and its standard error."""
    lite = {k: v for k, v in lite.items() if k != "None"}
    n_l, n_s = sum(lite.values()), sum(spy.values())

    def row(name: str, k_l: int, k_s: int) -> dict:
        p_l, p_s = k_l / n_l, k_s / n_s
        se = math.sqrt(p_l * (1 - p_l) / n_l + p_s * (1 - p_s) / n_s)
        return {"op": name, "lite": p_l, "pyspy": p_s, "diff_pp": 100 * (p_l - p_s), "se_pp": 100 * se}

    rows = [row(op, lite.get(op, 0), spy.get(op, 0))
            for op in sorted(set(lite) | set(spy), key=lambda o: -(lite.get(o, 0) + spy.get(o, 0)))]
    rows.append(row("(all matrix-product nodes + BLAS unnamed)",
                    sum(lite.get(o, 0) for o in MATMUL_NODES), sum(spy.get(o, 0) for o in MATMUL_NODES)))
    return rows


def render(doc: dict, command: str) -> str:
    alone, same = doc["alone"], doc["same"]
    qa, qs = _quantiles(alone["stops_ms"]), _quantiles(same["stops_ms"])
    n_bw_alone = sum(v for k, v in alone["ops"].items() if k != "None")
    lines = [
        f"`{command}`",
        "",
        f"Llama-style training loop (bench_stacks' worker), lite reads at {doc['hz']} Hz. Load average "
        f"{doc['load_before'][0]:.1f} before, {doc['load_after'][0]:.1f} after (2 cores; others' tests ran).",
        f"Symbols: {doc['symbols']} labelled autograd functions loaded in {doc['load_s']:.2f} s, in "
        "wattlens, the target running.",
        "",
        "**Stop of the main thread per lite read (ms, measured seize to detach)**",
        "",
        "| phase | reads | median | mean | p90 | p99 | max | busy (put off) |",
        "|---|---|---|---|---|---|---|---|",
        f"| lite alone, {doc['lite_s']:.0f} s | {qa['n']} | {qa['median']:.2f} | {qa['mean']:.2f} | "
        f"{qa['p90']:.2f} | {qa['p99']:.2f} | {qa['max']:.2f} | {alone['busy']} |",
        f"| beside py-spy --native, {doc['same_s']:.0f} s | {qs['n']} | {qs['median']:.2f} | "
        f"{qs['mean']:.2f} | {qs['p90']:.2f} | {qs['p99']:.2f} | {qs['max']:.2f} | {same['busy']} |",
        "",
        f"At {doc['hz']} Hz the mean stop is {qa['mean'] * doc['hz'] / 10:.3f} % of the target's time "
        f"(lite alone); {n_bw_alone} of {qa['n']} reads were in the backward.",
        "",
        f"**Same run: backward op shares, lite vs py-spy --native ({doc['same_s']:.0f} s, both at "
        f"{doc['hz']} Hz; {sum(v for k, v in same['lite_ops'].items() if k != 'None')} lite and "
        f"{sum(same['pyspy_ops'].values())} py-spy backward reads)**",
        "",
        "| op | lite | py-spy | lite − py-spy (pp) | SE (pp) |",
        "|---|---|---|---|---|",
    ]
    for r in compare(same["lite_ops"], same["pyspy_ops"]):
        lines.append(f"| {r['op']} | {r['lite']:.1%} | {r['pyspy']:.1%} | {r['diff_pp']:+.1f} | {r['se_pp']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lite-s", type=float, default=60.0)
    parser.add_argument("--same-s", type=float, default=120.0)
    parser.add_argument("--hz", type=int, default=5)
    args = parser.parse_args()
    doc = measure(args.lite_s, args.same_s, args.hz)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "native_lite.json").write_text(json.dumps(doc, indent=1))
    command = "python benchmarks/bench_native_lite.py" + "".join(
        f" --{k.replace('_', '-')} {v:g}" for k, v in vars(args).items())
    path = write_section("native_lite", "Lite native reads: stop per read, op shares vs py-spy --native",
                         render(doc, command))
    print(path.read_text())


if __name__ == "__main__":
    main()
