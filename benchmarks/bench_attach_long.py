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
      .venv/bin/python benchmarks/bench_attach_long.py --alternate 20 --aa-every 5 --amplify 20
      (short attached / nothing-attached phases taking turns, some amplified 20x: the own-core
      cost once native reads pause, to a few tenths of a percent; 20 minutes;
      writes benchmarks/results/attach_alternate_train.md)
      .venv/bin/python benchmarks/bench_attach_long.py --alternate 20 --arch gpt2 --infer --amplify 20 --aa-every 5
      (the same on an inference loop, where the attach never starts native reads:
      writes benchmarks/results/attach_alternate_gpt2_infer.md; --arch bert likewise)
Writes benchmarks/results/attach_long_train.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import bootstrap_median_ci, write_section  # noqa: E402


def _loop_env(arch: str, train: bool) -> None:
    """Which loop bench_stacks' worker child runs: ``arch``'s model, training or inference."""
    os.environ["WATTLENS_BENCH_ARCH"] = arch
    if train:
        os.environ["WATTLENS_BENCH_TRAIN"] = "1"
    else:
        os.environ.pop("WATTLENS_BENCH_TRAIN", None)


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


def _beside_cpu_s() -> float:
    """CPU seconds used so far beside the target: this process (the sampler's threads) and its
    reaped children (py-spy's processes)."""
    return _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)


def measure(off_s: float, attach_s: float, slice_s: float, native_pool: int | None = None,
            busy_s: float = 0.0) -> dict:
    _loop_env("llama", train=True)
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
        cpu0 = _beside_cpu_s()
        sampler.start()
        if not sampler.available:
            raise RuntimeError(sampler.reason)
        rows += _slices(child, attach_s, slice_s, "attached", sampler)
        sampler.stop()
        attached_for_s = time.monotonic() - t_attach
        # py-spy's processes (all reaped by stop()) and the sampler's threads in this process
        side_share = (_beside_cpu_s() - cpu0) / attached_for_s
        if busy_s > 0:  # the control: the same CPU use on the other core, no profiler
            spin = _busy(min(1.0, side_share))
            try:
                rows += _slices(child, busy_s, slice_s, "busy control")
            finally:
                spin.kill()
                spin.wait()
        readers = {"calibration_reads": sampler.loss.calibration_reads,
                   "native_reads": sum(sampler.pyspy_backward_ops.values()) + sum(sampler.optimizer_ops.values()),
                   # lite native reads (stacks/native_lite.py): one thread stopped per read, measured
                   "lite_reads": sampler.lite_reads, "lite_stop_s": sampler.lite_stop_ns / 1e9,
                   "lite_note": sampler.lite_note}
        rows += _slices(child, off_s, slice_s, "off after")
        rows = _finish(child, rows)
    finally:
        child.close()
    return {"rows": rows, "readers": readers, "attached_for_s": attached_for_s, "slice_s": slice_s,
            "native_pool": pool, "native_paused": sampler.native_paused_note,
            "native_runs": sampler.native_runs, "native_budget": sampler.native_budget,
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
    _loop_env("llama", train=True)
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


def _trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """The mean of ``values`` without the lowest and highest ``cut`` share."""
    v = sorted(values)
    k = int(len(v) * cut)
    return statistics.fmean(v[k:len(v) - k] if len(v) > 2 * k else v)


def _phase(child, w0: int, w1: int, s0: tuple[int, int, int], s1: tuple[int, int, int]) -> dict | None:
    """One phase's figures: per iteration (inside [w0, w1]) own-core time, main-thread CPU time
    (mean and 10 % trimmed mean), and the share of the phase the target was stopped."""
    its = child.per_iteration(w0, w1)
    if len(its) < 5:
        return None
    wall, on_cpu, waiting = s1[0] - s0[0], s1[1] - s0[1], s1[2] - s0[2]
    cpu = [c / 1e9 for _, c in its]
    return {"n": len(its), "own_core_iter_s": _own_core_iter_s((len(its), sum(w for w, _ in its)), wall, waiting),
            "cpu_iter_s": statistics.fmean(cpu), "cpu_iter_trim_s": _trimmed_mean(cpu),
            "paused": _paused(wall, on_cpu, waiting)}


def measure_alternate(seconds: float, phase_s: float, aa_every: int, amplify: int = 1,
                      arch: str = "llama", train: bool = True) -> dict:
    """Short phases taking turns: nothing attached, then one attach window, then nothing, then
    another window ... (every ``aa_every``-th of those a second nothing-attached phase: the A/A
    control). Each attached phase spans one whole window's life: py-spy's start (the phase begins
    before it), ``phase_s`` of sampling (50 Hz --nonblocking + 5 Hz calibration: the attach once
    its native reads pause), its stop and the parse of what it read. The target's drift (its
    speed wanders by ~10 % over tens of seconds here, on its own) is slower than a phase, so each
    attached phase is compared with the mean of the nothing-attached phases on either side.

    ``amplify`` K > 1 turns three attached phases in four into ones where every part of the
    attach's work is multiplied by K — both read rates, and the number of windows (each K times
    shorter: K py-spy starts and stops per phase) — so that an effect too small to see through
    the target's drift at 1x becomes about K times larger. The CPU the attach used beside the
    target (py-spy's processes, the sampler's threads) is counted per phase, so the scaling back
    to 1x rests on a measured ratio rather than on K.

    ``arch`` and ``train`` choose the child's loop (bench_stacks' worker). An inference loop never
    shows a backward, so the default attach never starts native reads there: its attached phases
    are then the whole attach, first seconds included."""
    _loop_env(arch, train)
    from bench_stacks import LoopChild, _sampler

    from wattlens.profiler.stacks.sampler import DEFAULT_WINDOW_S

    guard_s = 0.5  # after each phase: a stopped py-spy's exit is not counted in the next phase
    child = LoopChild(seconds + 120)
    phases: list[dict] = []
    marks: list[tuple[str, int, int, tuple, tuple, float]] = []
    stop_s: list[float] = [0.3]
    try:
        time.sleep(10.0)  # past the first iterations (allocator warm-up)
        t_end = time.monotonic() + seconds
        # three amplified phases to each 1x one: the 1x ones need only their paused share and
        # the CPU used beside the target (both steady), the amplified ones carry the on-CPU part
        cycle = ["on", "amp", "amp", "amp"] if amplify > 1 else ["on"]
        k = n_x = 0
        while time.monotonic() < t_end:
            kind = "off"
            if k % 2:
                if aa_every and (k // 2) % aa_every == aa_every - 1:
                    kind = "aa"
                else:
                    kind, n_x = cycle[n_x % len(cycle)], n_x + 1
            k += 1
            side0 = _beside_cpu_s()
            s0 = child.schedstat()
            if kind in ("on", "amp"):
                x = amplify if kind == "amp" else 1
                window_s = DEFAULT_WINDOW_S / x if x > 1 else max(DEFAULT_WINDOW_S, phase_s + 1.0)
                sampler = _sampler(child.pid, f"{50 * x}:nb", window_s, lambda rows: None,
                                   native_hz=0, calibration_hz=5 * x)
                sampler.start()
                if not sampler.available:
                    raise RuntimeError(sampler.reason)
                time.sleep(max(0.0, phase_s - (time.monotonic_ns() - s0[0]) / 1e9))
                t_stop = time.monotonic()
                sampler.stop()
                stop_s.append(time.monotonic() - t_stop)
            else:  # as long as an attached phase: its sampling and its (median) stop
                time.sleep(phase_s + statistics.median(stop_s))
            s1 = child.schedstat()
            side_s = _beside_cpu_s() - side0
            marks.append((kind, s0[0], s1[0], s0, s1, side_s))
            time.sleep(guard_s)
        time.sleep(1.0)  # the last stamps arrive
        for kind, w0, w1, s0, s1, side_s in marks:
            got = _phase(child, w0, w1, s0, s1)
            phases.append({"kind": kind, "side_cpu_share": side_s / ((w1 - w0) / 1e9), **(got or {"n": 0})})
    finally:
        child.close()
    return {"phases": phases, "phase_s": phase_s, "aa_every": aa_every, "seconds": seconds, "amplify": amplify,
            "arch": arch, "train": train,
            "stop_s": statistics.median(stop_s[1:]) if len(stop_s) > 1 else None,
            "load": os.getloadavg()}


def measure_native_runs(seconds: float, aa_every: int = 5, run_s: int = 5, hz: int = 10) -> dict:
    """What one native py-spy run costs the training target, against what the sampler's budget
    counts for it (the run's py-spy CPU time, from ``wait4``). Phases take turns as in
    :func:`measure_alternate`: nothing attached, then one native run of the first run's shape
    (``run_s`` s at ``hz`` Hz, ``record --native``: its start's symbol loading, its reads, its
    output), then nothing ... (every ``aa_every``-th an A/A control). Per native phase: the
    target's own-core time and stopped time lost against the mean of its neighbours, in seconds,
    and the py-spy's CPU seconds."""
    import subprocess
    import tempfile

    _loop_env("llama", train=True)
    from bench_stacks import LoopChild

    from wattlens.profiler.stacks.sampler import find_pyspy, native_command

    exe = find_pyspy()
    if exe is None:
        raise RuntimeError("py-spy not found")
    child = LoopChild(seconds + 120)
    marks: list[tuple[str, int, int, tuple, tuple, float]] = []
    lengths: list[float] = [run_s + 1.0]
    phases: list[dict] = []
    out = tempfile.mkdtemp(prefix="wattlens-bench-native-")
    try:
        time.sleep(10.0)  # past the first iterations (allocator warm-up)
        t_end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < t_end:
            kind = "off"
            if k % 2:
                kind = "aa" if aa_every and (k // 2) % aa_every == aa_every - 1 else "on"
            k += 1
            s0 = child.schedstat()
            cpu_s = 0.0
            if kind == "on":
                proc = subprocess.Popen(native_command(exe, child.pid, hz, run_s, os.path.join(out, "native.txt")),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                _, _, usage = os.wait4(proc.pid, 0)
                proc.returncode = 0
                cpu_s = usage.ru_utime + usage.ru_stime
                lengths.append((time.monotonic_ns() - s0[0]) / 1e9)
            else:  # as long as a native phase (median so far)
                time.sleep(statistics.median(lengths))
            s1 = child.schedstat()
            marks.append((kind, s0[0], s1[0], s0, s1, cpu_s))
            time.sleep(0.5)
        time.sleep(1.0)  # the last stamps arrive
        for kind, w0, w1, s0, s1, cpu_s in marks:
            got = _phase(child, w0, w1, s0, s1)
            phases.append({"kind": kind, "wall_s": (w1 - w0) / 1e9, "pyspy_cpu_s": cpu_s, **(got or {"n": 0})})
    finally:
        child.close()
    return {"phases": phases, "run_s": run_s, "hz": hz, "aa_every": aa_every, "seconds": seconds,
            "load": os.getloadavg()}


def summarize_native_runs(doc: dict) -> dict:
    """Per native phase (and A/A phase), in seconds against the mean of its two neighbours: the
    own-core time lost, the stopped time, and the py-spy's CPU; means with 95 % intervals from
    batch means."""
    ph = doc["phases"]
    out: dict = {}
    for kind in ("on", "aa"):
        idx = _between_neighbours(ph, kind)
        figs = {
            "own_core_lost_s": [(ph[i]["own_core_iter_s"] / ((ph[i - 1]["own_core_iter_s"]
                                 + ph[i + 1]["own_core_iter_s"]) / 2) - 1) * ph[i]["wall_s"] for i in idx],
            "stopped_s": [(ph[i]["paused"] - (ph[i - 1]["paused"] + ph[i + 1]["paused"]) / 2)
                          * ph[i]["wall_s"] for i in idx],
            "pyspy_cpu_s": [ph[i]["pyspy_cpu_s"] for i in idx],
        }
        out[kind] = {key: _interval(d) for key, d in figs.items() if len(d) >= 2 * BATCHES}
    return out


def _cell_s(v: dict | None) -> str:
    return f"{v['mean']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" if v else "n/a"


def render_native_runs(doc: dict, s: dict, command: str) -> str:
    count = {k: sum(p["kind"] == k for p in doc["phases"]) for k in ("on", "aa")}
    lines = [
        "One child runs the Llama-style training loop (4 blocks, d=256, batch 2 x 128, forward + "
        "backward + AdamW, CPU, 1 intra-op thread) throughout. Phases take turns: nothing attached, "
        f"then one native py-spy run of the sampler's first-run shape ({doc['run_s']} s at {doc['hz']} Hz, "
        "`record --native`: its start's symbol loading with the target stopped, its blocking reads, "
        f"its output), then nothing, ... Every {doc['aa_every']}th native slot is a third nothing-"
        f"attached phase instead (A/A). {count['on']} native and {count['aa']} A/A phases in "
        f"{doc['seconds'] / 60:.0f} minutes. Command: `{command}`. Load average (1, 5, 15 min) at the "
        "end: " + ", ".join(f"{x:.1f}" for x in doc["load"]) + " on 2 CPUs.",
        "",
        "Per phase, in seconds, against the mean of the nothing-attached phases on either side; "
        f"95 % intervals from {BATCHES} batch means (Student's t). The sampler's budget "
        "(`native.NATIVE_BUDGET`) counts a run's py-spy CPU time.",
        "",
        "| figure (seconds per run) | native run [95 % CI] | A/A control [95 % CI] |",
        "| --- | ---: | ---: |",
    ]
    names = {"pyspy_cpu_s": "py-spy's CPU time (what the budget counts)",
             "stopped_s": "target stopped, beyond its neighbours",
             "own_core_lost_s": "target's own-core time lost (stopped + slower on-CPU work)"}
    for key, label in names.items():
        on, aa = s.get("on", {}).get(key), s.get("aa", {}).get(key)
        lines.append(f"| {label} | {_cell_s(on)} | {_cell_s(aa)} |")
    on = s.get("on", {})
    if "own_core_lost_s" in on and "pyspy_cpu_s" in on:
        r = on["own_core_lost_s"]["mean"] / on["pyspy_cpu_s"]["mean"]
        lines += ["", f"Own-core time lost per second of py-spy CPU: {r:.2f} (upper end of the "
                      f"interval: {on['own_core_lost_s']['ci'][1] / on['pyspy_cpu_s']['mean']:.2f})."]
    return "\n".join(lines)


WORKLOADS = {  # --arch: the child's model (bench_stacks._build_model)
    "llama": "a Llama-style decoder (4 blocks, d=256, batch 2 x 128)",
    "gpt2": "GPT-2 (6 layers, d=384, batch 2 x 128)",
    "bert": "a BERT-style encoder (4 layers, d=256, batch 2 x 128)",
}


def alternate_name(arch: str, train: bool) -> str:
    """The result file's stem for ``--alternate`` on this loop."""
    return "attach_alternate_train" if (arch, train) == ("llama", True) else \
        f"attach_alternate_{arch}{'_train' if train else '_infer'}"


ALT_METRICS = {  # phase key: what it says
    "own_core_iter_s": "own-core time per iteration (the goal's figure: on-CPU + stopped)",
    "cpu_iter_s": "main-thread CPU time per iteration (mean)",
    "cpu_iter_trim_s": "main-thread CPU time per iteration (10 % trimmed mean)",
}


BATCHES = 10  # batch means per figure
T95 = 2.262  # Student's t for a 95 % interval, BATCHES - 1 = 9 degrees of freedom


def _batch_mean(d: list[float]) -> tuple[float, float]:
    """(mean, standard error) of ``d`` from the means of :data:`BATCHES` runs of consecutive
    values (neighbouring phases share a nothing-attached neighbour, so they are not independent;
    runs of them are)."""
    size = len(d) // BATCHES
    means = [statistics.fmean(d[b * size:(b + 1) * size]) for b in range(BATCHES)]
    return statistics.fmean(d), statistics.stdev(means) / math.sqrt(BATCHES)


def _between_neighbours(ph: list[dict], kind: str) -> list[int]:
    """Indices of the ``kind`` phases with iterations, whose neighbours on both sides have some."""
    return [i for i in range(1, len(ph) - 1) if ph[i]["kind"] == kind and ph[i]["n"]
            and ph[i - 1]["n"] and ph[i + 1]["n"]]


def _interval(d: list[float]) -> dict:
    """Mean of ``d`` with its standard error and 95 % interval (batch means, Student's t)."""
    est, se = _batch_mean(d)
    return {"mean": est, "se": se, "ci": (est - T95 * se, est + T95 * se), "phases": len(d)}


def summarize_alternate(doc: dict) -> dict:
    """Per condition (on, amp, aa) and figure: each phase against the mean of the
    nothing-attached phases on either side, − 1 (points for shares); their mean with a 95 %
    interval from batch means; and the 1x cost scaled from the amplified phases."""
    ph = doc["phases"]
    out: dict = {}
    for kind in ("on", "amp", "aa"):
        res = {}
        idx = _between_neighbours(ph, kind)
        for key in (*ALT_METRICS, "paused", "side_cpu_share"):
            if key in ("paused", "side_cpu_share"):
                d = [ph[i][key] - (ph[i - 1][key] + ph[i + 1][key]) / 2 for i in idx]
            else:
                d = [ph[i][key] / ((ph[i - 1][key] + ph[i + 1][key]) / 2) - 1 for i in idx]
            if len(d) < 2 * BATCHES:
                continue
            res[key] = {**_interval(d), "sd_phase": statistics.stdev(d)}
        out[kind] = res
    on, amp = out.get("on", {}), out.get("amp", {})
    if all(k in on for k in ("paused", "side_cpu_share")) and "cpu_iter_s" in amp:
        # the on-CPU part at 1x, from the amplified phases scaled by the measured ratio of the
        # CPU the attach used beside the target; the paused part at 1x is measured directly
        ratio = on["side_cpu_share"]["mean"] / amp["side_cpu_share"]["mean"]
        cpu = amp["cpu_iter_s"]
        est = on["paused"]["mean"] + ratio * cpu["mean"]
        se = math.hypot(on["paused"]["se"], ratio * cpu["se"])
        out["scaled"] = {"ratio": ratio, "on_cpu": ratio * cpu["mean"], "on_cpu_se": ratio * cpu["se"],
                         "own_core": est, "se": se, "ci": (est - T95 * se, est + T95 * se)}
    return out


def _cell(v: dict | None) -> str:
    return f"{v['mean']:+.2%} [{v['ci'][0]:+.2%}, {v['ci'][1]:+.2%}]" if v else "n/a"


def render_alternate(doc: dict, s: dict, command: str) -> str:
    count = {k: sum(p["kind"] == k for p in doc["phases"]) for k in ("on", "amp", "aa")}
    k = doc.get("amplify", 1)
    arch, train = doc.get("arch", "llama"), doc.get("train", True)
    state = ("once its native reads have paused (the state a long attach reaches)" if train else
             "as it is from its first second: an inference loop shows no backward, so no native "
             "reads start")
    lines = [
        f"One child runs {WORKLOADS[arch]}: {'forward + backward + AdamW' if train else 'forward only, no_grad'}, "
        "CPU, 1 intra-op thread, throughout. Short phases take turns: nothing "
        "attached, then an attached phase, then nothing, ... Each attached phase is one whole "
        f"window of the default `wattlens attach` sampler {state}: py-spy's start (the phase begins before it), "
        f"{doc['phase_s']:.1f} s of 50 Hz --nonblocking and 5 Hz blocking calibration reads, "
        f"their stop and parse (median {doc['stop_s'] or 0:.2f} s)."
        + (f" Three attached phases in four are amplified {k}x instead: {50 * k} Hz and {5 * k} Hz "
           f"reads in {k} windows of {5 / k:.1f} s (a py-spy start and stop each)." if k > 1 else "")
        + f" Every {doc['aa_every']}th phase between two nothing-attached ones is a third "
        f"nothing-attached phase instead: the A/A control. {count['on']} attached, {count['amp']} "
        f"amplified and {count['aa']} A/A phases in {doc['seconds'] / 60:.0f} minutes. "
        f"Command: `{command}`. Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.1f}" for x in doc["load"]) + " on 2 CPUs.",
        "",
        "Each phase is compared with the mean of the nothing-attached phases on either side, so "
        "drift slower than a phase cancels. Figures per iteration come from the target's own "
        "stamps (end time and main-thread CPU time of each iteration); *own core* = wall time per "
        "iteration less the share the target sat runnable but waiting for a CPU "
        "(/proc/PID/task/PID/schedstat); *paused* = the share of the phase the target was "
        "stopped; *beside* = CPU used by the attach (py-spy's processes and the sampler's "
        f"threads) per second, beyond the neighbours. 95 % intervals from {BATCHES} batch means of "
        "consecutive phases (Student's t).",
        "",
        "| figure | attached (1x) − 1 [95 % CI] | " + (f"amplified {k}x − 1 [95 % CI] | " if k > 1 else "")
        + "A/A control − 1 [95 % CI] | SD of one phase (1x) |",
        "| --- | ---: | " + ("---: | " if k > 1 else "") + "---: | ---: |",
    ]
    names = {**ALT_METRICS, "paused": "paused share (points)",
             "side_cpu_share": "CPU beside the target (share of a core, points)"}
    for key, label in names.items():
        on = s.get("on", {}).get(key)
        if on is None:
            continue
        amp = f"{_cell(s.get('amp', {}).get(key))} | " if k > 1 else ""
        lines.append(f"| {label} | {_cell(on)} | {amp}{_cell(s.get('aa', {}).get(key))} | {on['sd_phase']:.2%} |")
    own = s.get("on", {}).get("own_core_iter_s")
    lines.append("")
    if own:
        verdict = "shown" if own["ci"][1] <= 0.01 else "NOT shown"
        lines.append(f"Goal (issue 14): target slowdown in attach mode ≤ 1 % (own-core figure). "
                     f"Measured directly at 1x{' once native reads pause' if train else ''}: {own['mean']:+.2%} (95 % CI "
                     f"{own['ci'][0]:+.2%} … {own['ci'][1]:+.2%}): ≤ 1 % {verdict} (CI upper bound).")
    sc = s.get("scaled")
    if sc:
        verdict = "shown" if sc["ci"][1] <= 0.01 else "NOT shown"
        lines += ["", f"Scaled from the amplified phases: the on-CPU part at 1x = the amplified "
                      f"phases' CPU-time inflation × {sc['ratio']:.3f} (the 1x phases' CPU beside the "
                      f"target over the amplified phases') = {sc['on_cpu']:+.2%} ± {sc['on_cpu_se']:.2%}; "
                      f"plus the paused share measured at 1x: own-core slowdown {sc['own_core']:+.2%} "
                      f"(95 % CI {sc['ci'][0]:+.2%} … {sc['ci'][1]:+.2%}): ≤ 1 % {verdict} (CI upper "
                      "bound). This assumes the on-CPU cost grows in proportion to the work done "
                      "beside the target (reads, starts, parses)."]
    return "\n".join(lines)


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
    total_s = len(att) * doc["slice_s"]
    off_paused = statistics.fmean(r["paused"] for r in rows if r["phase"].startswith("off"))
    for first_s in [x for x in (60, 120, 300, 600) if x < total_s] + [total_s]:
        k = max(1, round(first_s / doc["slice_s"]))
        part = att[:k]
        if len(part) < k:
            continue
        slow = [1 - base / r["own_core_iter_s"] for r in part]
        # the span's own figure: total own-core time over total iterations is the mean per
        # iteration; slices are equal in length, so the mean of slice slowdowns is close to it
        mean_slow = statistics.fmean(slow)
        paused = statistics.fmean(r["paused"] for r in part)
        spans[int(first_s)] = {"slowdown": mean_slow, "paused_beyond_off": paused - off_paused,
                               "slices": len(part)}
    # over the whole attach, in seconds: the target's stopped time and its own-core time lost
    # beyond no profiler, against what the native py-spys' CPU said (the sampler's budget)
    out["paused_beyond_off_s"] = sum((r["paused"] - off_paused) * (r["w1"] - r["w0"]) / 1e9 for r in att)
    out["own_core_lost_s"] = sum((1 - base / r["own_core_iter_s"]) * (r["w1"] - r["w0"]) / 1e9 for r in att)
    out["native_cpu_s"] = sum(run[0] for run in doc.get("native_runs", []))
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
        f"{_native_schedule()}, each run after the first held back to keep within the budget; paused for a 60-s refresh every 10 min once {doc.get('native_pool', 400)} "
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
        f"{doc['readers']['native_reads']} native py-spy blocking reads"
        + (f", {doc['readers']['lite_reads']} lite native reads stopping the target's thread "
           f"{doc['readers']['lite_stop_s'] * 1e3:.0f} ms in all (measured)"
           if doc["readers"].get("lite_reads") else "")
        + (f" ({doc['readers']['lite_note']})" if doc["readers"].get("lite_note") else "")
        + (f"; {doc['native_paused']}" if doc.get("native_paused") else "")
        + (f". The attach used {doc['side_core_share']:.0%} of a core beside the target (py-spy and "
           "the sampler's threads)." if "side_core_share" in doc else "."),
        "",
        "| attach of | slowdown (own core) | paused beyond no profiler |",
        "| --- | ---: | ---: |",
    ]
    if doc.get("native_runs"):
        cal = doc["readers"]["calibration_reads"]
        lines[2] += (f" {len(doc['native_runs'])} native runs (budget {doc['native_budget']:.2%} of the "
                     f"attach after the first): their py-spy's CPU time {s['native_cpu_s']:.2f} s "
                     "(what the sampler counts against the budget); over the attach the target was "
                     f"stopped {s['paused_beyond_off_s']:.2f} s beyond no profiler, its {cal} "
                     f"calibration reads included, and lost {s['own_core_lost_s']:.1f} s of own-core "
                     "time (against the median nothing-attached slice: the drift's noise included).")
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
    ap.add_argument("--alternate", type=float, default=0.0, metavar="MINUTES",
                    help="instead: short attached and nothing-attached phases taking turns for "
                         "MINUTES (writes benchmarks/results/attach_alternate_train.md)")
    ap.add_argument("--native-runs", type=float, default=0.0, metavar="MINUTES",
                    help="instead: native py-spy runs (the first run's shape) taking turns with "
                         "nothing attached for MINUTES: their cost to the target against their CPU "
                         "(writes benchmarks/results/attach_native_runs_train.md)")
    ap.add_argument("--phase", type=float, default=4.5, help="--alternate: seconds of sampling per phase")
    ap.add_argument("--amplify", type=int, default=1, metavar="K",
                    help="--alternate: K times the attach's reads and windows (an effect K times larger)")
    ap.add_argument("--arch", choices=tuple(WORKLOADS), default="llama", help="--alternate: the child's model")
    ap.add_argument("--infer", action="store_true",
                    help="--alternate: an inference loop instead of training (no native reads ever start)")
    ap.add_argument("--tag", default="", help="--alternate: a replicate's suffix for the result files "
                    "(attach_alternate_train_TAG.md), so a rerun does not replace the first run")
    ap.add_argument("--aa-every", type=int, default=4,
                    help="--alternate: every Nth phase between two nothing-attached ones is an A/A control")
    args = ap.parse_args(argv)
    command = "bench_attach_long.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.native_runs:
        doc = measure_native_runs(args.native_runs * 60, args.aa_every)
        s = summarize_native_runs(doc)
        (HERE / "results" / "attach_native_runs_train.json").write_text(
            json.dumps({"doc": doc, "summary": s}, indent=1))
        body = render_native_runs(doc, s, command.strip())
        write_section("attach_native_runs_train", "What one native py-spy run costs the target, "
                      "against its CPU time (the budget's measure): Llama-style training loop", body)
        print(body)
        return 0
    if args.alternate:
        train = not args.infer
        doc = measure_alternate(args.alternate * 60, args.phase, args.aa_every, args.amplify,
                                args.arch, train)
        s = summarize_alternate(doc)
        name = alternate_name(args.arch, train) + (f"_{args.tag}" if args.tag else "")
        (HERE / "results" / f"{name}.json").write_text(json.dumps({"doc": doc, "summary": s}, indent=1))
        body = render_alternate(doc, s, command.strip())
        loop = f"{WORKLOADS[args.arch].split(' (')[0]}, {'training' if train else 'inference'} loop"
        write_section(name, "Attach mode's own-core slowdown, attached and "
                      f"nothing-attached phases taking turns: {loop}"
                      + (f" (run {args.tag})" if args.tag else ""), body)
        print(body)
        return 0
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
    elif args.output.stem == "attach_long_train_lite":  # the default attach since lite native reads
        write_section(args.output.stem, "Attach mode's cost over one long attach, lite native reads (the "
                      "default since 2026-12-02): Llama-style training loop", body)
    elif args.output.parent.resolve() == (HERE / "results").resolve():
        write_section(args.output.stem, "Attach mode's cost over one long attach, native reads "
                      "paused early (the state a long attach reaches): Llama-style training loop", body)
    else:
        args.output.write_text(body + "\n")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
