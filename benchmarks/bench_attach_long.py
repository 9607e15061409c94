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
import resource
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


def _paused(wall: int, on_cpu: int, waiting: int) -> float:
    """The share of ``wall`` the target was neither running nor waiting to run (stopped)."""
    return max(0.0, (wall - on_cpu - waiting) / wall)


def _own_core_iter_s(its: tuple[int, int], wall: int, waiting: int) -> float:
    """Wall time per iteration without the share spent waiting for a CPU."""
    n, span_ns = its
    return span_ns * (wall - waiting) / wall / n / 1e9


def _finish(child, rows: list[dict]) -> list[dict]:
    """Own-core time per iteration and paused share per slice (the stamps arrive a bit late)."""
    time.sleep(1.0)
    done = []
    for r in rows:
        its = child.iterations(r["w0"], r["w1"])
        wall = r["w1"] - r["w0"]
        r["paused"] = _paused(wall, r["on_cpu"], r["waiting"])
        if its is None:
            continue
        r["own_core_iter_s"] = _own_core_iter_s(its, wall, r["waiting"])
        r["cpu_share"] = r["on_cpu"] / wall
        done.append(r)
    return done


SPIN = """
import sys, time
share, period = float(sys.argv[1]), 0.02
while True:
    t = time.monotonic()
    while time.monotonic() - t < share * period:
        pass
    time.sleep(max(0.0, (1 - share) * period))
"""


def _busy(share: float):
    """A loop that keeps ``share`` of one core busy (20-ms periods), no profiler anywhere."""
    import subprocess

    return subprocess.Popen([sys.executable, "-c", SPIN, f"{share:.4f}"])


def _cpu_s(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def measure(off_s: float, attach_s: float, slice_s: float, native_pool: int | None = None,
            busy_s: float = 0.0) -> dict:
    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    os.environ["WATTLENS_BENCH_TRAIN"] = "1"
    from bench_stacks import LoopChild, _sampler

    from wattlens.profiler.stacks.sampler import DEFAULT_WINDOW_S

    child = LoopChild(2 * off_s + attach_s + 120)
    try:
        time.sleep(5.0)  # past the first iterations (allocator warm-up)
        rows = _slices(child, off_s, slice_s, "off before")
        sampler = _sampler(child.pid, "50:nb", DEFAULT_WINDOW_S, lambda rows: None)
        if native_pool is not None:
            sampler.native_pool_reads = native_pool
        pool = sampler.native_pool_reads
        t_attach = time.monotonic()
        cpu0 = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
        sampler.start()
        if not sampler.available:
            raise RuntimeError(sampler.reason)
        rows += _slices(child, attach_s, slice_s, "attached", sampler)
        sampler.stop()
        attached_for_s = time.monotonic() - t_attach
        # py-spy's processes (all reaped by stop()) and the sampler's threads in this process
        side_share = (_cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0) / attached_for_s
        if busy_s > 0:  # the control: the same CPU use on the other core, no profiler
            spin = _busy(min(1.0, side_share))
            try:
                rows += _slices(child, busy_s, slice_s, "busy control")
            finally:
                spin.kill()
                spin.wait()
        readers = {"calibration_reads": sampler.loss.calibration_reads,
                   "native_reads": sum(sampler.backward_ops.values()) + sum(sampler.optimizer_ops.values())}
        rows += _slices(child, off_s, slice_s, "off after")
        rows = _finish(child, rows)
    finally:
        child.close()
    return {"rows": rows, "readers": readers, "attached_for_s": attached_for_s, "slice_s": slice_s,
            "native_pool": pool, "native_paused": sampler.native_paused_note,
            "side_core_share": side_share, "busy_s": busy_s,
            "off_s": off_s, "attach_s": attach_s, "load": os.getloadavg()}


PARTS = {  # condition: (sampler config, StackSampler options); None: nothing attached
    "nothing attached (A/A control)": None,
    "50 Hz --nonblocking only (no calibration, no native)": ("50:nb", {"calibration_hz": 0, "native_hz": 0}),
    "5 Hz blocking only (what the calibration reads do)": ("5", {"native_hz": 0}),
    "50 Hz --nonblocking + 5 Hz calibration (the attach once native reads pause)": ("50:nb", {"native_hz": 0}),
}


def measure_parts(rounds: int, phase_s: float = 8.0) -> dict:
    """Each part of the attach alone, taking turns with nothing attached (rotating order), on one
    training child: own-core time per iteration and the paused share per phase."""
    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    os.environ["WATTLENS_BENCH_TRAIN"] = "1"
    from bench_stacks import LoopChild, _sampler

    names = ["off", *PARTS]
    child = LoopChild(rounds * len(names) * (phase_s + 3) + 60)
    per_round = []
    try:
        time.sleep(5.0)
        for r in range(rounds):
            got = {}
            for name in names[r % len(names):] + names[:r % len(names)]:
                spec = PARTS.get(name)
                sampler = None
                if spec is not None:
                    sampler = _sampler(child.pid, spec[0], 5.0, lambda rows: None, **spec[1])
                    sampler.start()
                time.sleep(1.0)
                w0, cpu0, delay0 = child.schedstat()
                time.sleep(phase_s)
                w1, cpu1, delay1 = child.schedstat()
                if sampler is not None:
                    sampler.stop()
                time.sleep(0.5)
                its = child.iterations(w0, w1)
                if its is None:
                    continue
                wall, waiting = w1 - w0, delay1 - delay0
                got[name] = {"own_core_iter_s": _own_core_iter_s(its, wall, waiting),
                             "paused": _paused(wall, cpu1 - cpu0, waiting)}
            per_round.append(got)
    finally:
        child.close()
    return {"rounds": per_round, "phase_s": phase_s, "load": os.getloadavg()}


def render_parts(doc: dict, command: str) -> str:
    lines = [
        "Each part of the default attach alone, on one child running the Llama-style training "
        "loop (as above), taking turns with a phase of nothing attached in a rotating order: "
        f"{len(doc['rounds'])} rounds of {doc['phase_s']:.0f}-s phases (1 s after attaching). "
        f"Command: `{command}`. Load average at the end: "
        + ", ".join(f"{x:.1f}" for x in doc["load"]) + " on 2 CPUs. Slowdown = own-core time "
        "per iteration / the same round's nothing-attached phase − 1; paused = the share of the "
        "phase the target was stopped, beyond the nothing-attached phase.",
        "",
        "| condition | slowdown (own core), median [95 % CI] | per round | paused beyond nothing attached |",
        "| --- | ---: | --- | ---: |",
    ]
    for name in PARTS:
        pairs = [g for g in doc["rounds"] if "off" in g and name in g]
        slow = [g[name]["own_core_iter_s"] / g["off"]["own_core_iter_s"] - 1 for g in pairs]
        paused = statistics.fmean(g[name]["paused"] - g["off"]["paused"] for g in pairs)
        med, lo, hi = bootstrap_median_ci(slow)
        lines.append(f"| {name} | {med:+.2%} [{lo:+.2%}, {hi:+.2%}] | "
                     + " ".join(f"{x:+.1%}" for x in slow) + f" | {paused:.2%} |")
    return "\n".join(lines)


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
    busy = [1 - base / r["own_core_iter_s"] for r in rows if r["phase"] == "busy control"]
    if busy:
        med, lo, hi = bootstrap_median_ci(busy)
        out["busy"] = {"slowdown": med, "ci": (lo, hi), "slices": len(busy)}
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
        f"{_native_schedule()}; paused for a 60-s refresh every 10 min once {doc.get('native_pool', 400)} "
        "backward reads are pooled"
        + (" (default 400, ~12 min into this job: set lower here to measure the state a long "
           "attach reaches)" if doc.get("native_pool", 400) != 400 else "")
        + f") for {doc['attached_for_s']:.0f} s, then nothing again for {doc['off_s']:.0f} s; "
        f"{sl:.0f}-s slices. Command: `{command}`. Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.1f}" for x in doc["load"]) + " on 2 CPUs.",
        "",
        f"Without a profiler: {s['off_iter_s'] * 1e3:.0f} ms own-core per iteration (median of "
        f"{s['off_slices']} slices; slices spread {s['off_spread'][0]:+.1%} … {s['off_spread'][1]:+.1%}). "
        f"Readers over the attach: {doc['readers']['calibration_reads']} calibration and "
        f"{doc['readers']['native_reads']} native blocking reads"
        + (f"; {doc['native_paused']}" if doc.get("native_paused") else "")
        + (f". The attach used {doc['side_core_share']:.0%} of a core beside the target (py-spy and "
           "the sampler's threads)." if "side_core_share" in doc else "."),
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
    if "busy" in s:
        b = s["busy"]
        lines.append(f"| control: no profiler, a loop using {doc['side_core_share']:.0%} of the other "
                     f"core (what the attach used there), median of {b['slices']} slices [95 % CI] | "
                     f"{b['slowdown']:+.2%} [{b['ci'][0]:+.2%}, {b['ci'][1]:+.2%}] | n/a |")
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
    ap.add_argument("--busy", type=float, default=0.0,
                    help="seconds of a control phase after the attach: a loop using as much CPU "
                         "as the attach did, no profiler (this machine's cross-core interference)")
    ap.add_argument("--native-pool", type=int, default=None,
                    help="pooled backward reads after which native runs pause (default: the sampler's)")
    ap.add_argument("--output", type=Path, default=HERE / "results" / "attach_long_train.md")
    ap.add_argument("--parts", type=int, default=0, metavar="ROUNDS",
                    help="instead: each part of the attach alone against nothing attached, ROUNDS "
                         "rounds (writes benchmarks/results/attach_parts_train.md)")
    args = ap.parse_args(argv)
    command = "bench_attach_long.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.parts:
        doc = measure_parts(args.parts)
        (HERE / "results" / "attach_parts_train.json").write_text(json.dumps(doc, indent=1))
        body = render_parts(doc, command.strip())
        write_section("attach_parts_train", "Attach mode's parts, one at a time: Llama-style training loop", body)
        print(body)
        return 0
    doc = measure(args.off, args.attach, args.slice, args.native_pool, args.busy)
    s = summarize(doc)
    args.output.with_suffix(".json").write_text(json.dumps({"doc": doc, "summary": s}, indent=1, default=str))
    body = render(doc, s, command.strip())
    if args.output.stem == "attach_long_train":
        write_section("attach_long_train", "Attach mode's cost over one long attach: Llama-style training loop", body)
    elif args.output.parent.resolve() == (HERE / "results").resolve():
        write_section(args.output.stem, "Attach mode's cost over one long attach, native reads "
                      "paused early (the state a long attach reaches): Llama-style training loop", body)
    else:
        args.output.write_text(body + "\n")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
