"""What one real `wattlens attach` of a few minutes costs a training job (issue 14), start-up included.

bench_stacks.py --overhead-only re-attaches for every short phase, so each phase pays the native
py-spy's start-up stop (it loads torch's symbols with the target stopped) and its figure is a
worst case no user sees. Here one child runs the Llama-style training loop (bench_stacks'
worker, WATTLENS_BENCH_TRAIN=1) the whole time; the timeline is: ``--off`` seconds with nothing
attached, then ONE default StackSampler (50 Hz --nonblocking, 5 Hz blocking calibration, native
reads once a backward is seen) for ``--attach`` seconds, then ``--off`` seconds without it again.
Every phase is cut into ``--slice`` second slices; per slice, from the target thread's
/proc/PID/task/PID/schedstat and its iteration time stamps:

- *own-core iteration time*: the wall time per iteration minus the share of it the target sat
  runnable but waiting for a CPU (other jobs' load drops out; py-spy's pauses stay in);
- *paused*: the share of the slice the target was neither running nor waiting to run (stopped by
  a blocking py-spy read, or by a native py-spy loading symbols).

Slowdown over the first N seconds of the attach = 1 - (own-core time per iteration with nothing
attached, median of the off slices) / (the same over those N seconds): the figure for an attach
of that length. The confidence interval resamples the slices (bootstrap of their medians).

Run:  .venv/bin/python benchmarks/bench_attach_long.py   (about 5 minutes: 60 + 180 + 60 s)
Writes benchmarks/results/attach_long_train.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import bootstrap_median_ci, write_section  # noqa: E402


def _slices(child, seconds: float, slice_s: float, label: str, sampler=None) -> list[dict]:
    out = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end - 0.5 * slice_s:
        w0, cpu0, delay0 = child.schedstat()
        time.sleep(slice_s)
        w1, cpu1, delay1 = child.schedstat()
        out.append({"phase": label, "w0": w0, "w1": w1, "on_cpu": cpu1 - cpu0,
                    "waiting": delay1 - delay0,
                    "native_started": bool(sampler is not None and sampler._native_thread is not None)})
    return out


def _finish(child, rows: list[dict]) -> list[dict]:
    """Own-core time per iteration and paused share per slice (the stamps arrive a bit late)."""
    time.sleep(1.0)
    done = []
    for r in rows:
        its = child.iterations(r["w0"], r["w1"])
        wall = r["w1"] - r["w0"]
        r["paused"] = max(0.0, (wall - r["on_cpu"] - r["waiting"]) / wall)
        if its is None:
            continue
        n, span_ns = its
        r["own_core_iter_s"] = span_ns * (wall - r["waiting"]) / wall / n / 1e9
        r["cpu_share"] = r["on_cpu"] / wall
        done.append(r)
    return done


def measure(off_s: float, attach_s: float, slice_s: float) -> dict:
    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    os.environ["WATTLENS_BENCH_TRAIN"] = "1"
    from bench_stacks import LoopChild, _sampler

    from wattlens.profiler.stacks.sampler import DEFAULT_WINDOW_S

    child = LoopChild(2 * off_s + attach_s + 120)
    try:
        time.sleep(5.0)  # past the first iterations (allocator warm-up)
        rows = _slices(child, off_s, slice_s, "off before")
        sampler = _sampler(child.pid, "50:nb", DEFAULT_WINDOW_S, lambda rows: None)
        t_attach = time.monotonic()
        sampler.start()
        if not sampler.available:
            raise RuntimeError(sampler.reason)
        rows += _slices(child, attach_s, slice_s, "attached", sampler)
        sampler.stop()
        attached_for_s = time.monotonic() - t_attach
        readers = {"calibration_reads": sampler.loss.calibration_reads,
                   "native_reads": sum(sampler.backward_ops.values()) + sum(sampler.optimizer_ops.values())}
        rows += _slices(child, off_s, slice_s, "off after")
        rows = _finish(child, rows)
    finally:
        child.close()
    return {"rows": rows, "readers": readers, "attached_for_s": attached_for_s, "slice_s": slice_s,
            "off_s": off_s, "attach_s": attach_s, "load": os.getloadavg()}


def summarize(doc: dict) -> dict:
    rows = doc["rows"]
    off = [r["own_core_iter_s"] for r in rows if r["phase"].startswith("off")]
    att = [r for r in rows if r["phase"] == "attached"]
    base = statistics.median(off)
    out = {"off_slices": len(off), "off_iter_s": base,
           "off_spread": (min(off) / base - 1, max(off) / base - 1)}
    spans = {}
    for first_s in (60, 120, len(att) * doc["slice_s"]):
        k = max(1, round(first_s / doc["slice_s"]))
        part = att[:k]
        if len(part) < k:
            continue
        slow = [1 - base / r["own_core_iter_s"] for r in part]
        # the span's own figure: total own-core time over total iterations is the mean per
        # iteration; slices are equal in length, so the mean of slice slowdowns is close to it
        mean_slow = statistics.fmean(slow)
        paused = statistics.fmean(r["paused"] for r in part)
        off_paused = statistics.fmean(r["paused"] for r in rows if r["phase"].startswith("off"))
        # noise: the same statistic over the off slices (each against the median of the others)
        spans[int(first_s)] = {"slowdown": mean_slow, "paused_beyond_off": paused - off_paused,
                               "slices": len(part)}
    steady = att[max(1, round(30 / doc["slice_s"])):]  # past the first native runs' start-up
    if steady:
        med, lo, hi = bootstrap_median_ci([1 - base / r["own_core_iter_s"] for r in steady])
        out["steady"] = {"slowdown": med, "ci": (lo, hi), "slices": len(steady),
                         "paused": statistics.fmean(r["paused"] for r in steady)}
    noise = [1 - base / x for x in off]
    out["off_noise"] = bootstrap_median_ci(noise)
    out["spans"] = spans
    return out


def _native_schedule() -> str:
    from wattlens.profiler.stacks.native import NATIVE_RUNS, native_run

    return ", ".join(f"{native_run(n)[0]} s at {native_run(n)[1]} Hz" for n in range(len(NATIVE_RUNS))) + ", ..."


def render(doc: dict, s: dict, command: str) -> str:
    sl = doc["slice_s"]
    lines = [
        "One child runs the Llama-style training loop (4 blocks, d=256, batch 2 x 128, forward + "
        "backward + AdamW, CPU, 1 intra-op thread) throughout; nothing attached for "
        f"{doc['off_s']:.0f} s, then ONE default `wattlens attach` StackSampler (50 Hz --nonblocking, "
        "5 Hz blocking calibration, native reads once a backward is seen: "
        f"{_native_schedule()}) for {doc['attached_for_s']:.0f} s, then nothing again for {doc['off_s']:.0f} s; "
        f"{sl:.0f}-s slices. Command: `{command}`. Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.1f}" for x in doc["load"]) + " on 2 CPUs.",
        "",
        f"Without a profiler: {s['off_iter_s'] * 1e3:.0f} ms own-core per iteration (median of "
        f"{s['off_slices']} slices; slices spread {s['off_spread'][0]:+.1%} … {s['off_spread'][1]:+.1%}). "
        f"Readers over the attach: {doc['readers']['calibration_reads']} calibration and "
        f"{doc['readers']['native_reads']} native blocking reads.",
        "",
        "| attach of | slowdown (own core) | paused beyond no profiler |",
        "| --- | ---: | ---: |",
    ]
    for first_s, v in s["spans"].items():
        lines.append(f"| first {first_s} s | {v['slowdown']:+.2%} | {v['paused_beyond_off']:.2%} |")
    if "steady" in s:
        st = s["steady"]
        lines.append(f"| after the first 30 s (median of {st['slices']} slices [95 % CI]) | "
                     f"{st['slowdown']:+.2%} [{st['ci'][0]:+.2%}, {st['ci'][1]:+.2%}] | {st['paused']:.2%} |")
    lo, hi = s["off_noise"][1], s["off_noise"][2]
    lines += ["", f"The off slices against their own median (the method's noise): "
                  f"{s['off_noise'][0]:+.2%} [{lo:+.2%}, {hi:+.2%}].", "",
              "Per slice (attached): paused share and own-core slowdown: "
              + ", ".join(f"{r['paused']:.1%}/{1 - s['off_iter_s'] / r['own_core_iter_s']:+.1%}"
                          for r in doc["rows"] if r["phase"] == "attached")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--off", type=float, default=60.0)
    ap.add_argument("--attach", type=float, default=180.0)
    ap.add_argument("--slice", type=float, default=10.0)
    ap.add_argument("--output", type=Path, default=HERE / "results" / "attach_long_train.md")
    args = ap.parse_args(argv)
    doc = measure(args.off, args.attach, args.slice)
    s = summarize(doc)
    args.output.with_suffix(".json").write_text(json.dumps({"doc": doc, "summary": s}, indent=1, default=str))
    command = "bench_attach_long.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = render(doc, s, command.strip())
    if args.output.stem == "attach_long_train":
        write_section("attach_long_train", "Attach mode's cost over one long attach: Llama-style training loop", body)
    else:
        args.output.write_text(body + "\n")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
