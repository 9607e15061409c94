"""Agent benchmarks (issue 3, run mode): what the in-process agent costs, and whether its
per-instance times agree with torch.profiler.

1. CPU per forward of GPT-2-style CPU inference with the agent's whole chain on vs off, in one
   process, alternated (the robust measure on a shared machine).
2. End to end: throughput and CPU of a plain child vs a child launched exactly as ``wattlens
   run`` does (AgentServer receiving and converting everything), interleaved rounds.
3. Per-instance forward time per call from the agent's Tracker vs torch.profiler
   ``record_function`` ranges wrapped around each module's forward (a different clock and event
   path), on the same model and input, interleaved.

    python benchmarks/bench_agent_overhead.py   → benchmarks/results/agent.md
    python benchmarks/bench_agent_overhead.py --floor [--baseline REV]
                                                         → benchmarks/results/agent_floor.md
    python benchmarks/bench_agent_overhead.py --wrapper-ab REV [--processes N] [--reps R]
                                                         → benchmarks/results/agent_wrapper_ab.md
    python benchmarks/bench_agent_overhead.py --main-path
                                                         → benchmarks/results/agent_main_path.md
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

MODELS = {
    # name: (n_layer, n_embd, n_head, batch, seq, vocab), forwards per in-process round
    "GPT-2 small (124M: 12 layers, d=768, 1 x 64 tokens)": ((12, 768, 12, 1, 64, 50257), 3),
    "mini GPT-2 (4 layers, d=128, 4 x 64 tokens)": ((4, 128, 4, 4, 64, 2048), 40),
    "tiny GPT-2 (2 layers, d=64, 4 x 32 tokens), worst case": ((2, 64, 2, 4, 32, 2048), 150),
}
BUDGET_MODEL = "GPT-2 small (124M: 12 layers, d=768, 1 x 64 tokens)"

WORKLOAD = """
import sys, time, torch
torch.set_num_threads(1)
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
L, E, H, B, T, V = (int(v) for v in sys.argv[1:7])
model = GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=E, n_head=H, vocab_size=V,
                                   n_positions=128)).eval()
x = torch.randint(0, V, (B, T))
with torch.no_grad():
    for _ in range(5):
        model(x)
    print("ready", flush=True)
    for line in sys.stdin:  # each line: run N seconds; print forwards/s, CPU s per forward
        end = time.perf_counter() + float(line)
        n = 0
        t0, c0 = time.perf_counter(), time.process_time()  # process CPU: agent threads too
        while time.perf_counter() < end:
            model(x)
            n += 1
        print(n / (time.perf_counter() - t0), (time.process_time() - c0) / n, flush=True)
"""


def _child(script: Path, dims: tuple[int, ...], env: dict | None, cmd_prefix=None):
    cmd = [sys.executable, str(script), *map(str, dims)]
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    if cmd_prefix is not None:
        return cmd_prefix(cmd, env)
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _ask(proc: subprocess.Popen, seconds: float) -> tuple[float, float, float]:
    """(forwards/s, target CPU s per forward, this process's CPU s during the round)."""
    c0 = time.process_time()
    proc.stdin.write(f"{seconds}\n")
    proc.stdin.flush()
    rate, cpu = (float(v) for v in proc.stdout.readline().split())
    return rate, cpu, time.process_time() - c0


def bench_throughput(dims, seconds: float, rounds: int = 6) -> dict:
    from wattlens.profiler.agentlink import AgentServer
    from wattlens.profiler.launch import launch

    counts = {"steps": 0, "windows": 0, "rows": 0}

    def on_step(_):
        counts["steps"] += 1

    def on_layers(rows):
        counts["windows"] += 1
        counts["rows"] += len(rows)

    script = _write_workload()
    server = AgentServer(on_step=on_step, on_layer_costs=on_layers,
                         energy_between=lambda a, b: (b - a) * 1e-9 * 30.0, energy_wait_s=0.5)
    plain = _child(script, dims, None)
    agent = _child(script, dims, None, cmd_prefix=lambda cmd, env: launch(
        cmd, server=server, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for p in (plain, agent):
            assert p.stdout.readline().strip() == "ready"
        without, with_agent = [], []
        for r in range(rounds):
            order = [(plain, without), (agent, with_agent)]
            if r % 2:
                order.reverse()
            for proc, out in order:
                out.append(_ask(proc, seconds))
    finally:
        for p in (plain, agent):
            p.stdin.close()
            p.wait(30)
        server.stop()
    wall = [a[0] / b[0] for a, b in zip(with_agent, without, strict=True)]
    # CPU per forward, the host's listener thread included (its CPU beyond the plain rounds'
    # idle waiting, spread over the forwards of that round)
    idle_host = statistics.median(h for _, _, h in without)
    cpu = []
    for (rate_a, cpu_a, host_a), (_, cpu_b, _) in zip(with_agent, without, strict=True):
        forwards = rate_a * seconds
        cpu.append((cpu_a + max(0.0, host_a - idle_host) / forwards) / cpu_b)
    return {"without": without, "with": with_agent, "wall": wall, "cpu": cpu,
            "wall_ratio": statistics.median(wall), "cpu_ratio": statistics.median(cpu), **counts}


def gpt2_model(dims) -> tuple:
    """(model, input) of the GPT-2-style CPU workload these benchmarks time in-process: one
    intra-op thread, seeded weights and token ids, eval mode. ``dims``: a MODELS entry's
    (n_layer, n_embd, n_head, batch, seq, vocab)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(1)
    L, E, H, B, T, V = dims
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=E, n_head=H, vocab_size=V,
                                       n_positions=128)).eval()
    return model, torch.randint(0, V, (B, T))


def bench_inprocess(dims, forwards: int, rounds: int, call_paths=("wrap",)) -> dict:
    """The agent's whole CPU chain, alternated on/off in this process, model thread CPU time.

    "On" = the agent's Tracker with its hooks installed, every message it emits encoded to JSON
    (the agent writer thread's job) and then decoded, validated and turned into records
    (the AgentServer's job), all inline, so this thread's CPU time holds the full cost except
    socket system calls. Thread CPU time is what holds up on a shared machine: other jobs
    change wall-clock rounds by tens of percent, but hardly the CPU a fixed piece of work takes.
    """
    import torch

    from wattlens.profiler.agent.protocol import AGENT_MESSAGES, decode, encode, validate
    from wattlens.profiler.agent.tracker import Tracker
    from wattlens.profiler.agentlink import layer_costs
    from wattlens.profiler.records import StepRecord

    model, x = gpt2_model(dims)
    counts = {"windows": 0, "rows": 0}

    def emit(msg: dict) -> None:  # agent writer thread + AgentServer, inline
        m = decode(encode(msg)[:-1])
        assert validate(m, AGENT_MESSAGES) is None
        if m["type"] == "layers":
            rows = layer_costs(m, (m["t_end_ns"] - m["t_start_ns"]) * 30e-9)
            counts["windows"] += 1
            counts["rows"] += len(rows)
        elif m["type"] == "steps":
            [StepRecord(**s) for s in m["steps"]]

    # "hooks" is the agent as it was before issue 14: global hooks and 50 ms windows
    trackers = {p: Tracker(torch, emit, _raise, count_flops="off", call_path=p,
                           **({"window_ns": 50_000_000} if p == "hooks" else {}))
                for p in call_paths}

    def phase() -> float:
        c0 = time.thread_time()
        for _ in range(forwards):
            model(x)
        return (time.thread_time() - c0) / forwards

    on: dict[str, list[float]] = {p: [] for p in call_paths}
    off: list[float] = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for r in range(rounds):
            states = ["off", *call_paths]
            for state in (states if r % 2 == 0 else states[::-1]):
                if state == "off":
                    off.append(phase())
                else:
                    trackers[state].install()
                    on[state].append(phase())
                    trackers[state].uninstall()
    by_path = {p: [a / b for a, b in zip(v, off, strict=True)] for p, v in on.items()}
    ratios = by_path[call_paths[0]]
    return {"ratios": ratios, "ratio": statistics.median(ratios), "by_path": by_path,
            "cpu_ms_off": statistics.median(off) * 1e3, **counts}


def bench_percall(tiny_dims, rounds: int = 20, leaves: int = 200,
                  baseline: str | None = None) -> dict:
    """The agent's added CPU per module call, without a model's compute around it: a root with
    one parameter calling ``leaves`` parameter-free modules whose forward returns its input,
    alternated off / wrapper / hooks (thread CPU time). With the tiny model's calls per forward
    this gives the per-call part of its overhead, a figure that a busy machine's noise (several
    % per round on a 2.7 ms forward) does not drown."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401  (loads what it loads)

    from wattlens.profiler.agent.tracker import Tracker

    class Leaf(torch.nn.Module):
        def forward(self, x):
            return x

    class Chain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(1))
            self.leaves = torch.nn.ModuleList(Leaf() for _ in range(leaves))

        def forward(self, x):
            for leaf in self.leaves:
                x = leaf(x)
            return x

    chain, x = Chain(), torch.ones(2)
    trackers = {p: Tracker(torch, lambda m: None, _raise, count_flops="off", call_path=p)
                for p in ("wrap", "hooks")}
    us: dict[str, list[float]] = {"off": [], "wrap": [], "hooks": []}
    if baseline is not None:
        trackers["before"] = baseline_tracker(baseline)(torch, lambda m: None, _raise,
                                                        count_flops="off")
        us["before"] = []

    def phase(n: int = 50) -> float:
        c0 = time.thread_time()
        for _ in range(n):
            chain(x)
        return (time.thread_time() - c0) / n / (leaves + 1) * 1e6

    with torch.no_grad():
        for _ in range(3):
            chain(x)
        for r in range(rounds):
            for state in (list(us) if r % 2 == 0 else list(us)[::-1]):
                if state != "off":
                    trackers[state].install()
                us[state].append(phase())
                if state != "off":
                    trackers[state].uninstall()
    med = {k: statistics.median(v) for k, v in us.items()}
    # calls per forward of the tiny model (every module call goes through __call__)
    model, x = gpt2_model(tiny_dims)
    calls = [0]
    orig = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        calls[0] += 1
        return orig(module, *args, **kwargs)

    torch.nn.Module.__call__ = counting
    try:
        with torch.no_grad():
            model(x)
    finally:
        torch.nn.Module.__call__ = orig
    diffs = {k: [a - b for a, b in zip(v, us["off"], strict=True)] for k, v in us.items()}
    return {"us_per_call": {k: med[k] - med["off"] for k in us if k != "off"}, "diffs": diffs,
            "baseline": baseline,
            "off_us": med["off"], "calls_per_forward": calls[0]}


FLOOR_STATES = {
    # state: what runs on the model thread (CPU time of that thread is what is measured)
    "off": "no agent",
    "off (A/A)": "no agent, a second time: the A/A control (the method's noise)",
    "wrapper only": "the `nn.Module.__call__` wrapper timing every call, but no steps or windows "
                    "(the model is not the main model)",
    "model thread": "the agent's model-thread work: wrapper, step boundaries, window close; "
                    "messages only queued (what the hooks do in a real run)",
    "target process": "+ JSON encoding of every message (the agent's writer thread, inline)",
    "whole chain": "+ the host's decode, validation and LayerCost conversion (in the wattlens "
                   "process in a real run, inline here)",
}


def baseline_tracker(rev: str):
    """The Tracker class of ``profiler/agent/tracker.py`` at git revision ``rev``, loaded inside
    the agent package (its relative imports resolve), so a change is measured against the code
    before it side by side, in the same process and the same rounds."""
    import importlib.util

    src = subprocess.run(["git", "show", f"{rev}:profiler/agent/tracker.py"], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    path = Path(tempfile.gettempdir()) / f"wattlens_tracker_{rev.replace('/', '_')}.py"
    path.write_text(src)
    name = "wattlens.profiler.agent._tracker_baseline"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.Tracker


def count_agent_calls(dims, tracker_cls=None, forwards: int = 64, per_window: int = 16) -> dict:
    """Python function calls made inside the tracker's module per forward of the model (windows
    every ``per_window`` forwards), counted with ``sys.setprofile``: a count of work that the
    machine's load does not change, to set beside the CPU ratios."""
    import torch

    if tracker_cls is None:
        from wattlens.profiler.agent.tracker import Tracker as tracker_cls
    source = sys.modules[tracker_cls.__module__].__file__
    model, x = gpt2_model(dims)
    tracker = tracker_cls(torch, lambda m: None, _raise, count_flops="off", window_ns=10**18)
    calls: dict[str, int] = {}

    def profile(frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename == source:
            name = frame.f_code.co_name
            calls[name] = calls.get(name, 0) + 1

    tracker.install()
    try:
        with torch.no_grad():
            for _ in range(per_window):
                model(x)
            tracker.finish()
            sys.setprofile(profile)
            for i in range(forwards):
                model(x)
                if i % per_window == per_window - 1:
                    tracker.finish()
            sys.setprofile(None)
    finally:
        sys.setprofile(None)
        tracker.uninstall()
    return {k: v / forwards for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}


def bench_floor(dims, rounds: int, window_cpu_s: float = 0.1, per_switch: int = 4,
                baseline: str | None = None) -> dict:
    """Where the agent's floor goes, measured by switching its parts on one at a time.

    One process, one model. A round is one window's worth of forwards per state (about
    ``window_cpu_s`` of CPU, the default 100 ms window on an idle machine): the states take
    turns every ``per_switch`` forwards (in a new random order each turn, seeded: a fixed order
    gives each state the same predecessor every time, so what one state leaves in the caches
    is always paid by the same next one: the A/A control read -3.5 % [-4.4, -2.0] that way), so
    a burst of load on
    this shared machine hits every state alike, and each "on" state's Tracker is flushed at the
    end of the round (``finish``; its time-based window is off), so each round holds exactly
    one window per state. Measured: this thread's CPU time (``time.thread_time_ns``; other jobs
    change wall-clock rounds by tens of percent, the CPU a fixed piece of work much less) per
    forward, summed over the round. Per round, ratio = state / "off"; reported as the median
    over rounds with a percentile-bootstrap 95 % CI. GC time per forward comes from
    ``gc.callbacks`` (start/stop), counted per state.
    """
    import gc
    import queue

    import torch

    from wattlens.profiler.agent.protocol import AGENT_MESSAGES, decode, encode, validate
    from wattlens.profiler.agent.tracker import Tracker
    from wattlens.profiler.agentlink import layer_costs
    from wattlens.profiler.records import StepRecord

    model, x = gpt2_model(dims)
    counts = {"windows": 0, "rows": 0, "messages": 0}
    sent: queue.SimpleQueue = queue.SimpleQueue()

    def host(line: bytes) -> None:  # AgentServer's work on one line
        m = decode(line[:-1])
        assert validate(m, AGENT_MESSAGES) is None
        if m["type"] == "layers":
            counts["windows"] += 1
            counts["rows"] += len(layer_costs(m, (m["t_end_ns"] - m["t_start_ns"]) * 30e-9))
        elif m["type"] == "steps":
            [StepRecord(**s) for s in m["steps"]]

    never = 10**18  # no time-based window close: each round is one window (flushed by finish)
    emits = {"model thread": sent.put, "target process": encode,
             "whole chain": lambda m: host(encode(m))}
    trackers = {st: Tracker(torch, fn, _raise, count_flops="off", window_ns=never)
                for st, fn in emits.items()}
    only = Tracker(torch, sent.put, _raise, count_flops="off", window_ns=never)
    only.watch(torch.nn.Linear(1, 1))  # another main model: GPT-2 is a plain root, no steps
    trackers["wrapper only"] = only
    states = list(FLOOR_STATES)
    if baseline is not None:
        before = f"target process, {baseline}"
        states.append(before)
        trackers[before] = baseline_tracker(baseline)(torch, encode, _raise, count_flops="off",
                                                      window_ns=never)

    rng = random.Random(14)
    gc_ns = {st: 0 for st in states}
    gc_runs = {st: 0 for st in states}
    current = ["off"]
    gc_t0 = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter_ns()
        else:
            gc_ns[current[0]] += time.perf_counter_ns() - gc_t0[0]
            gc_runs[current[0]] += 1

    cpu: dict[str, list[float]] = {st: [] for st in states}
    with torch.no_grad():
        for _ in range(5):
            model(x)
        c0 = time.thread_time_ns()
        for _ in range(10):
            model(x)
        n = max(8, round(window_cpu_s / ((time.thread_time_ns() - c0) / 10e9)))
        n -= n % per_switch
        gc.callbacks.append(on_gc)
        try:
            for _ in range(rounds):
                block = {st: 0 for st in states}
                for cycle in range(n // per_switch):
                    for st in rng.sample(states, len(states)):  # a new order every cycle
                        tracker = trackers.get(st)
                        if tracker is not None:
                            tracker.install()
                        current[0] = st
                        c0 = time.thread_time_ns()
                        for _ in range(per_switch):
                            model(x)
                        if tracker is not None and cycle == n // per_switch - 1:
                            tracker.finish()  # the block's window goes out (its cost counts)
                        block[st] += time.thread_time_ns() - c0
                        current[0] = "off"
                        if tracker is not None:
                            tracker.uninstall()
                while not sent.empty():
                    sent.get()
                    counts["messages"] += 1
                for st in states:
                    cpu[st].append(block[st] / n)
        finally:
            gc.callbacks.remove(on_gc)
    off = cpu["off"]
    ratio = {st: [a / b for a, b in zip(v, off, strict=True)] for st, v in cpu.items()}
    diff_us = {st: [(a - b) / 1e3 for a, b in zip(v, off, strict=True)] for st, v in cpu.items()}
    return {"forwards_per_round": n, "rounds": rounds, "per_switch": per_switch, "cpu_ns": cpu, "ratio": ratio,
            "diff_us": diff_us, "cpu_us_off": statistics.median(off) / 1e3,
            "gc_us_per_forward": {st: gc_ns[st] / 1e3 / (n * rounds) for st in states},
            "gc_runs_per_forward": {st: gc_runs[st] / (n * rounds) for st in states},
            **counts}


def floor_markdown(res: dict[str, dict], pc: dict, tiny: str, loads: tuple[float, float],
                   note: str = "") -> str:
    from common import bootstrap_median_ci

    lines = []
    for name, r in res.items():
        lines += [f"**{name}**: {r['cpu_us_off'] / 1e3:.2f} ms CPU per forward without the "
                  f"agent; {r['rounds']} rounds of {r['forwards_per_round']} forwards per state, "
                  f"taking turns every {r['per_switch']} forwards "
                  f"(one window each: {r['windows']} windows, {r['rows']} LayerCost rows in the "
                  "whole-chain state).", "",
                  "| state | CPU per forward / off: median [95 % CI] | added CPU per forward "
                  "(µs, median of paired differences) | GC per forward (µs; collections) |",
                  "|---|---:|---:|---:|"]
        for st in r["ratio"]:
            if st == "off":
                continue
            what = FLOOR_STATES.get(st, "the target process as above, with the tracker before "
                                    "this change (from git), side by side")
            med, lo, hi = bootstrap_median_ci(r["ratio"][st])
            lines.append(f"| {st}: {what} | {med:.4f} [{lo:.4f}, {hi:.4f}] "
                         f"(= {100 * (med - 1):+.1f} % [{100 * (lo - 1):+.1f}, "
                         f"{100 * (hi - 1):+.1f}]) | {statistics.median(r['diff_us'][st]):+.0f} "
                         f"| {r['gc_us_per_forward'][st]:.1f}; "
                         f"{r['gc_runs_per_forward'][st]:.2f} |")
        lines.append(f"| off (for the GC column) | 1 | 0 | {r['gc_us_per_forward']['off']:.1f}; "
                     f"{r['gc_runs_per_forward']['off']:.2f} |")
        d = {st: statistics.median(r["diff_us"][st]) for st in FLOOR_STATES}
        lines += ["", "Split of the added CPU per forward (differences of the medians above, µs): "
                  f"per-call timing {d['wrapper only']:.0f}; step boundaries and the window "
                  f"close on the model thread {d['model thread'] - d['wrapper only']:.0f}; JSON "
                  f"encoding (writer thread) {d['target process'] - d['model thread']:.0f}; the "
                  f"host's side {d['whole chain'] - d['target process']:.0f}.", ""]
        before = next((st for st in r["cpu_ns"] if st.startswith("target process, ")), None)
        if before is not None:
            # per round, this change / the baseline: the round's machine state cancels out,
            # which the two ratios to "off" above (each with its own spread) do not
            paired = [a / b for a, b in zip(r["cpu_ns"]["target process"], r["cpu_ns"][before],
                                            strict=True)]
            pm, plo, phi = bootstrap_median_ci(paired)
            dus = [(a - b) / 1e3 for a, b in zip(r["cpu_ns"]["target process"],
                                                  r["cpu_ns"][before], strict=True)]
            lines += [f"This change against {before.split(', ', 1)[1]}, paired per round (the "
                      f"target process, CPU per forward, this change / before): {pm:.4f} "
                      f"[{plo:.4f}, {phi:.4f}] (= {100 * (pm - 1):+.2f} % [{100 * (plo - 1):+.2f}, "
                      f"{100 * (phi - 1):+.2f}]; {statistics.median(dus):+.1f} µs per forward, "
                      "median of the paired differences).", ""]
    t = res[tiny]
    med, lo, hi = bootstrap_median_ci(t["ratio"]["target process"])
    aa = bootstrap_median_ci(t["ratio"]["off (A/A)"])
    shown = "shown" if hi <= 1.05 else "NOT shown"
    lines += [f"Goal (issue 14): run mode ≤ 5 % on the {tiny}. The target's own CPU (model "
              f"thread + its writer thread's encoding): {100 * (med - 1):+.1f} %, 95 % CI "
              f"{100 * (lo - 1):+.1f} … {100 * (hi - 1):+.1f} % — ≤ 5 % {shown} (CI upper "
              f"bound); A/A control {100 * (aa[0] - 1):+.1f} % [{100 * (aa[1] - 1):+.1f}, "
              f"{100 * (aa[2] - 1):+.1f}].", "",
              "Per module call, without a model's compute around it (a chain of 200 modules "
              f"returning their input, median of 20 alternated rounds, thread CPU): torch alone "
              f"{pc['off_us']:.2f} µs per call; the agent adds {pc['us_per_call']['wrap']:.2f} µs "
              f"(wrapper) and {pc['us_per_call']['hooks']:.2f} µs (global hooks)"
              + (f"; the wrapper before this change (git {pc['baseline']}) "
                 f"{pc['us_per_call']['before']:.2f} µs" if "before" in pc["us_per_call"] else "")
              + f". The {tiny} makes {pc['calls_per_forward']} module calls per forward.", "",
              "Why a call costs more inside a model: the wrapper's added CPU per call on a "
              "30-module chain (median [95 % CI], µs) "
              + "; ".join(f"{'with' if w else 'without'} a 2 MB tensor streamed through the "
                          f"cache by each module, {'with' if k else 'without'} keyword arguments: "
                          f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                          for w, k, (m, lo, hi) in pc.get("memory", [])) + ".", "",
              "Python function calls inside the tracker per forward of the tiny model (windows "
              "every 16 forwards; `sys.setprofile`, a count the load does not change): "
              + "; ".join(f"{label}: {sum(c.values()):.1f} ("
                          + ", ".join(f"{k} {v:.2f}" for k, v in list(c.items())[:8]) + ")"
                          for label, c in pc.get("calls", {}).items()) + ".", "",
              f"Load average (1 min) at start / end: {loads[0]:.1f} / {loads[1]:.1f} on 2 cores "
              "(shared with other jobs)."]
    if note:
        lines += ["", note]
    return "\n".join(lines)


def bench_percall_memory(rounds: int = 60) -> list[tuple[bool, bool, tuple[float, float, float]]]:
    """Why a call costs more inside a model than on the compute-free chain: the wrapper's added
    CPU per call (median and bootstrap CI over alternated rounds, thread CPU) on a 30-module
    chain, with and without keyword arguments, and with and without each module streaming a
    2 MB tensor through the cache (``mul_`` in place), as a model's own work does between calls.
    Returns (memory work, kwargs, (median, low, high) µs per call)."""
    import torch
    from common import bootstrap_median_ci
    from transformers import GPT2Config  # noqa: F401  (loads torch._dynamo as the real runs do)

    from wattlens.profiler.agent.tracker import Tracker

    big = torch.randn(512, 1024)

    class Leaf(torch.nn.Module):
        def __init__(self, work: bool) -> None:
            super().__init__()
            self.work = work

        def forward(self, x, a=None, b=None, c=None):
            if self.work:
                big.mul_(1.0000001)
            return x

    class Chain(torch.nn.Module):
        def __init__(self, work: bool, kw: bool) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(1))
            self.kw = kw
            self.leaves = torch.nn.ModuleList(Leaf(work) for _ in range(30))

        def forward(self, x):
            for leaf in self.leaves:
                x = leaf(x, a=1, b=2, c=3) if self.kw else leaf(x)
            return x

    x = torch.ones(2)
    tracker = Tracker(torch, lambda m: None, _raise, count_flops="off")
    tracker.watch(torch.nn.Linear(1, 1))  # the chain is not the main model: calls only
    out = []
    with torch.no_grad():
        for work in (False, True):
            for kw in (False, True):
                model, n = Chain(work, kw), (4 if work else 40)
                on: list[float] = []
                off: list[float] = []
                for r in range(rounds):
                    for state in (("off", "on") if r % 2 == 0 else ("on", "off")):
                        if state == "on":
                            tracker.install()
                        c0 = time.thread_time_ns()
                        for _ in range(n):
                            model(x)
                        (on if state == "on" else off).append((time.thread_time_ns() - c0) / n / 31)
                        if state == "on":
                            tracker.uninstall()
                out.append((work, kw, bootstrap_median_ci([(a - b) / 1e3 for a, b in
                                                           zip(on, off, strict=True)])))
    return out


def main_floor() -> None:
    """``--floor [--baseline REV]``: where the agent's floor goes on the tiny and mini models
    (states switched on one at a time, bootstrap CIs, A/A control) and the per-call cost;
    ``--baseline`` adds the tracker at git revision REV side by side (~5 minutes idle)."""
    load_before = os.getloadavg()[0]
    rounds = int(os.environ.get("WATTLENS_FLOOR_ROUNDS", "120"))
    names = [n for n in MODELS if n != BUDGET_MODEL]
    tiny = names[-1]
    argv = sys.argv[1:]
    baseline = argv[argv.index("--baseline") + 1] if "--baseline" in argv else None
    res = {n: bench_floor(MODELS[n][0], rounds if n == tiny else max(20, rounds // 3),
                          baseline=baseline)
           for n in names[::-1]}
    pc = bench_percall(MODELS[tiny][0], rounds=40, baseline=baseline)
    pc["calls"] = {"now": count_agent_calls(MODELS[tiny][0])}
    pc["memory"] = bench_percall_memory()
    if baseline is not None:
        pc["calls"][f"git {baseline}"] = count_agent_calls(MODELS[tiny][0],
                                                           baseline_tracker(baseline))
    body = floor_markdown(res, pc, tiny, (load_before, os.getloadavg()[0]),
                          os.environ.get("WATTLENS_FLOOR_NOTE", ""))
    path = write_section("agent_floor", "Agent cost floor (issue 14, run mode)", body)
    print(path.read_text())


MAIN_PATH_METHODS = ("_enter", "_main_start", "_shape_from", "_steps_on_forward", "_boundary",
                     "_close_step", "_close_window", "_emit_layers", "_open", "_exit", "_main_end")


def main_path(forwards: int = 600) -> None:
    """``--main-path``: where the main model's own handling goes (the step boundary), inside a
    real forward loop of the tiny GPT-2 with the default 100-ms windows: each of the tracker's
    methods on that path is wrapped by a perf_counter_ns timer, inclusive of what it calls (the
    timer adds ~0.1-0.3 us a call). The cost of one method here is its cost in the cache state
    a forward leaves behind, which the in-cache figure (a loop calling it alone) hides."""
    import functools
    import queue

    import torch

    from wattlens.profiler.agent import tracker as tracker_mod

    tiny = [n for n in MODELS if n.startswith("tiny")][0]
    model, x = gpt2_model(MODELS[tiny][0])
    spent: dict[str, int] = {}
    calls: dict[str, int] = {}
    originals = {name: getattr(tracker_mod.Tracker, name) for name in MAIN_PATH_METHODS}

    def timed(name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0) + time.perf_counter_ns() - t0
                calls[name] = calls.get(name, 0) + 1
        return wrapper

    for name, fn in originals.items():
        setattr(tracker_mod.Tracker, name, timed(name, fn))
    sent: queue.SimpleQueue = queue.SimpleQueue()
    tracker = tracker_mod.Tracker(torch, sent.put, _raise, count_flops="off")
    try:
        tracker.install()
        with torch.no_grad():
            for _ in range(20):
                model(x)
            spent.clear()
            calls.clear()
            c0 = time.thread_time_ns()
            for _ in range(forwards):
                model(x)
            cpu_us = (time.thread_time_ns() - c0) / forwards / 1e3
        tracker.uninstall()
    finally:
        for name, fn in originals.items():
            setattr(tracker_mod.Tracker, name, fn)
    rows = ["| method (inclusive of what it calls) | µs per forward | calls per forward |",
            "|---|---:|---:|"]
    for name in sorted(spent, key=lambda n: -spent[n]):
        rows.append(f"| `{name}` | {spent[name] / forwards / 1e3:.1f} | {calls[name] / forwards:.2f} |")
    body = (f"**{tiny}**, {forwards} forwards under the agent (100-ms windows, count_flops off): "
            f"{cpu_us:.0f} µs CPU per forward, timers included. Load average (1 min): "
            f"{os.getloadavg()[0]:.1f} on 2 cores.\n\n" + "\n".join(rows))
    path = write_section("agent_main_path", "Agent: the main model's step boundary, method by "
                         "method (issue 14, run mode)", body)
    print(path.read_text())


def _write_workload() -> Path:
    path = Path(tempfile.gettempdir()) / "wattlens_bench_agent_workload.py"
    path.write_text(textwrap.dedent(WORKLOAD))
    return path


def bench_agreement(dims, rounds: int = 4, iters: int = 10) -> list[tuple[str, ...]]:
    """Forward time per call (ms) by module path: agent Tracker vs torch.profiler ranges.

    Two comparisons: separate interleaved runs (each tool alone), and the same calls measured
    by both at once (the agent's hooks sit just outside the ``record_function`` wrapper, so on
    the same call the agent's interval contains the profiler's).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from wattlens.profiler.agent.tracker import Tracker

    model, x = gpt2_model(dims)
    paths = {m: p for p, m in model.named_modules()}

    def wrap(mod, path):
        fwd = mod.forward

        def forward(*a, **k):
            with record_function("wl:" + path):
                return fwd(*a, **k)
        return forward

    def run(agent: bool, prof: bool, agent_out: dict, prof_out: dict) -> None:
        msgs: list[dict] = []
        tracker = Tracker(torch, msgs.append, _raise, window_ns=0, count_flops="off")
        if agent:
            tracker.install()  # window_ns=0: one window per forward, so one row per call
        if prof:
            for mod, path in paths.items():
                mod.forward = wrap(mod, path)
        try:
            if prof:
                with profile(activities=[ProfilerActivity.CPU]) as p:
                    for _ in range(iters):
                        model(x)
            else:
                for _ in range(iters):
                    model(x)
        finally:
            tracker.finish()
            tracker.uninstall()
            if prof:
                for mod in paths:
                    del mod.forward  # back to the class's forward
        for m in msgs:
            if m["type"] == "layers":
                for row in m["rows"]:
                    if row["phase"] == "forward":
                        agent_out.setdefault(row["path"], []).append(row["time_ns"] / row["calls"] / 1e6)
        if prof:
            for ev in p.events():
                if ev.name.startswith("wl:"):
                    prof_out.setdefault(ev.name[3:], []).append(ev.cpu_time_total / 1e3)

    alone_a: dict[str, list[float]] = {}
    alone_p: dict[str, list[float]] = {}
    both_a: dict[str, list[float]] = {}
    both_p: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(3):
            model(x)
        for _ in range(rounds):
            run(True, False, alone_a, {})
            run(False, True, {}, alone_p)
            run(True, True, both_a, both_p)
    med = statistics.median
    return [(path, med(alone_a[path]), med(alone_p[path]), med(both_a[path]), med(both_p[path]))
            for path in paths.values() if path in alone_a and path in alone_p and path in both_p]


def bench_wrapper_ab(dims, rev: str, reps: int = 1000, seed: int = 1, warm: int = 1) -> dict:
    """The tracker now against the tracker at git ``rev``, switched every forward.

    ``bench_floor`` switches every 4 forwards and its per-round ratios carry about ±1 % of
    noise: too coarse for a change worth 20 µs per forward. Here every state gets one forward
    at a time, in a new random order each repetition, so load bursts hit all states alike; the
    figure per state is this thread's CPU time of 2 forwards, after 1 unmeasured forward that
    absorbs what a switch costs (assigning ``nn.Module.__call__`` invalidates the type caches
    of every Module class, and the first forward after it pays for refilling them: a cost of
    the benchmark, not of a run). Reported per state: the mean over repetitions of the paired
    difference to "off" in the same repetition (10 % trimmed each side), with its standard
    error. The trackers stay switched on throughout; the "target process" ones have windows
    ``len(states)`` times the default 100 ms, so each closes over about as many of its own
    forwards as in a real run. ``warm=0`` measures the 2 forwards right after the switch
    instead (what the switch itself costs shows as the difference).
    """
    import math

    import torch

    from wattlens.profiler.agent.protocol import encode
    from wattlens.profiler.agent.tracker import Tracker

    model, x = gpt2_model(dims)
    module_cls = torch.nn.Module
    orig = module_cls.__call__
    before_cls = baseline_tracker(rev)
    names = ["off", "off (A/A)", f"wrapper only, {rev}", "wrapper only, now",
             f"target process, {rev}", "target process, now"]
    window_ns = 100_000_000 * len(names)
    wrappers: dict[str, object] = {"off": orig, "off (A/A)": orig}
    for name in names[2:]:
        cls = Tracker if name.endswith("now") else before_cls
        if name.startswith("wrapper"):
            tracker = cls(torch, lambda m: None, _raise, count_flops="off", window_ns=10**18)
            tracker.watch(torch.nn.Linear(1, 1))  # another main model: GPT-2 makes no steps
        else:
            tracker = cls(torch, encode, _raise, count_flops="off", window_ns=window_ns)
        tracker.install()
        wrappers[name] = module_cls.__call__
        module_cls.__call__ = orig  # the tracker stays on; its wrapper is assigned per forward
    rng = random.Random(seed)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    try:
        with torch.no_grad():
            for name in names:
                module_cls.__call__ = wrappers[name]
                for _ in range(3):  # names the modules, opens the first window
                    model(x)
            for _ in range(reps):
                for name in rng.sample(names, len(names)):
                    module_cls.__call__ = wrappers[name]
                    for _ in range(warm):
                        model(x)
                    c0 = time.thread_time_ns()
                    model(x)
                    model(x)
                    cpu[name].append((time.thread_time_ns() - c0) / 2e3)
    finally:
        module_cls.__call__ = orig

    def trimmed_mean_se(values: list[float]) -> tuple[float, float]:
        v = sorted(values)
        k = len(v) // 10
        v = v[k:len(v) - k]
        return statistics.fmean(v), statistics.pstdev(v) / math.sqrt(len(v))

    off = cpu["off"]
    added = {n: trimmed_mean_se([a - b for a, b in zip(cpu[n], off, strict=True)])
             for n in names}
    change = {kind: trimmed_mean_se([a - b for a, b in zip(
        cpu[f"{kind}, now"], cpu[f"{kind}, {rev}"], strict=True)])
        for kind in ("wrapper only", "target process")}
    return {"names": names, "added_us": added, "change_us": change, "reps": reps,
            "off_us": statistics.median(off), "rev": rev}


def main_wrapper_ab() -> None:
    """``--wrapper-ab REV [--processes N] [--reps R]``: the tracker now against git REV,
    switched every forward, in N fresh processes (default 5 x 600 repetitions, ~4 min).

    One process's figures carry a bias of their own, larger than their standard error: where
    its objects landed in memory and its string-hash seed decide which of the tracker's data
    share cache sets (two processes of the same code read the target process 24 µs apart).
    So each process is one measurement, and the figures are the mean over processes with the
    standard error from their spread."""
    import json
    import math

    argv = sys.argv[1:]
    rev = argv[argv.index("--wrapper-ab") + 1]
    tiny = list(MODELS)[-1]
    if "--one" in argv:  # a child: one process's measurement, as JSON on the last line
        reps = int(argv[argv.index("--reps") + 1])
        r = bench_wrapper_ab(MODELS[tiny][0], rev, reps=reps)
        print(json.dumps({**r, "added_us": {k: v[0] for k, v in r["added_us"].items()},
                          "change_us": {k: v[0] for k, v in r["change_us"].items()}}))
        return
    n_proc = int(argv[argv.index("--processes") + 1]) if "--processes" in argv else 5
    reps = int(argv[argv.index("--reps") + 1]) if "--reps" in argv else 600
    load_before = os.getloadavg()[0]
    runs = []
    for _ in range(n_proc):
        done = subprocess.run([sys.executable, __file__, "--wrapper-ab", rev, "--one",
                               "--reps", str(reps)], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    names = runs[0]["names"]

    def pct(key: str, table: str = "added_us") -> list[float]:
        return [100 * r[table][key] / r["off_us"] for r in runs]

    def mean_se(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))

    off_ms = statistics.median(r["off_us"] for r in runs) / 1e3
    lines = [f"**{tiny}**: {off_ms:.2f} ms CPU per forward without the agent (median of the "
             f"processes); {n_proc} fresh processes x {reps} repetitions of one forward per "
             "state.", "",
             "| state | added CPU per forward, % of off: mean over processes ± SE | "
             "each process |", "|---|---:|---|"]
    for name in names[1:]:
        m, se = mean_se(pct(name))
        lines.append(f"| {name} | {m:+.2f} % ± {se:.2f} | "
                     f"{', '.join(f'{v:+.2f}' for v in pct(name))} |")
    lines.append("")
    for kind in runs[0]["change_us"]:
        m, se = mean_se(pct(kind, "change_us"))
        lines.append(f"- {kind}: now − {rev}, paired per repetition in each process: "
                     f"{m:+.2f} % ± {se:.2f} of off (each process: "
                     f"{', '.join(f'{v:+.2f}' for v in pct(kind, 'change_us'))}).")
    m, se = mean_se(pct("target process, now"))
    # Student's t, 97.5 % quantile, n_proc - 1 df (beyond 10 processes 2.26, df 9: an upper bound)
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36}.get(n_proc, 2.26)
    hi = m + t * se
    lines += ["", f"Goal (issue 14): run mode ≤ 5 % on the {tiny}. The target process (model "
              f"thread + its writer thread's encoding) now: {m:+.2f} %, 95 % CI (t, "
              f"{n_proc - 1} df) {m - t * se:+.2f} … {hi:+.2f} % — ≤ 5 % "
              f"{'shown' if hi <= 5 else 'NOT shown'} by this method (agent_floor.md has the "
              "coarser one, which switches every 4 forwards)."]
    lines += ["", "Method: `bench_wrapper_ab` in benchmarks/bench_agent_overhead.py. Load "
              f"average (1 min) at start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
              "on 2 cores."]
    path = write_section("agent_wrapper_ab", f"Agent wrapper: now against {rev}, switched "
                         "every forward (issue 14, run mode)", "\n".join(lines))
    print(path.read_text())


def _raise(exc: BaseException) -> None:
    raise exc


def main() -> None:
    sections = []
    load_before = os.getloadavg()[0]
    inproc = {name: bench_inprocess(dims, n, rounds=16) for name, (dims, n) in MODELS.items()}
    small = BUDGET_MODEL
    two = bench_throughput(MODELS[small][0], seconds=3.0, rounds=10)
    mini = "mini GPT-2 (4 layers, d=128, 4 x 64 tokens)"
    agree = bench_agreement(MODELS[mini][0])

    lines = ["| Workload | CPU per forward, agent on / off (median of 16 alternated rounds) "
             "| Goal |", "|---|---|---|"]
    for name, r in inproc.items():
        lines.append(f"| {name}, {r['cpu_ms_off']:.1f} ms CPU per forward | {r['ratio']:.3f} "
                     f"(= {100 * (r['ratio'] - 1):+.1f} %) | "
                     f"{'≤ +5 %' if name == small else 'none (shows the per-call floor)'} |")
    lines.append(f"| {small}, end to end: a plain child vs a child under `launch()` | CPU "
                 f"{two['cpu_ratio']:.3f} ({100 * (two['cpu_ratio'] - 1):+.1f} %), throughput "
                 f"{two['wall_ratio']:.3f} (median of 10 rounds; see the spread below) | ≤ +5 % |")
    sections.append("\n".join(lines))
    for name, r in inproc.items():
        sections.append(f"{name}: per-round ratios {', '.join(f'{v:.3f}' for v in r['ratios'])}"
                        f" ({r['windows']} windows, {r['rows']} LayerCost rows made).")
    sections.append(
        f"End to end ({small}): forwards/s without: "
        f"{', '.join(f'{v[0]:.2f}' for v in two['without'])}; with: "
        f"{', '.join(f'{v[0]:.2f}' for v in two['with'])}; CPU ratios per round "
        f"{', '.join(f'{v:.3f}' for v in two['cpu'])}. The host received {two['steps']} steps "
        f"and {two['windows']} layer windows ({two['rows']} LayerCost rows).")
    sections.append(
        "Method. In-process rounds alternate the agent's Tracker installed / removed on the same "
        "model in one process; 'on' also encodes every message to JSON and runs the host's "
        "decode, validation and LayerCost conversion inline, so the thread's CPU time covers the "
        "whole chain except socket system calls. The end-to-end row runs two children (one "
        "plain, one under `launch()` with a live AgentServer in this process), 10 interleaved "
        "rounds of 3 s; its CPU figure adds this process's CPU beyond idle waiting. This 2-core "
        "machine is shared with other jobs (load average below): wall-clock rounds swing by tens "
        "of percent either way, so the in-process CPU ratio is the number to trust. The cost is "
        "a fixed few microseconds per module call (torch's hook dispatch plus the agent's "
        "bookkeeping) and well under a millisecond per 50 ms window, so it shrinks as the work "
        "per module grows; the mini and tiny models show the floor.")

    rows = ["| Module (instance path) | Agent alone | torch.profiler alone | Ratio | "
            "Same calls: agent | Same calls: torch.profiler | Ratio |",
            "|---|---|---|---|---|---|---|"]
    alone, same = [], []
    for path, a_ms, p_ms, sa_ms, sp_ms in agree:
        if path.count(".") > 4:
            continue
        alone.append(abs(a_ms / p_ms - 1))
        same.append(abs(sa_ms / sp_ms - 1))
        rows.append(f"| `{path or '(root)'}` | {a_ms:.3f} | {p_ms:.3f} | {a_ms / p_ms:.2f} | "
                    f"{sa_ms:.3f} | {sp_ms:.3f} | {sa_ms / sp_ms:.2f} |")
    sections.append(
        f"Per-instance forward time in ms per call, agent vs torch.profiler, on the {mini} "
        "(medians of single calls over 4 rounds of 10 forwards). Median |ratio − 1|: "
        f"{statistics.median(alone):.3f} run separately, {statistics.median(same):.3f} on the "
        "same calls.\n\n" + "\n".join(rows))
    sections.append(
        "The reference wraps each module's forward in `record_function(path)` and takes the CPU "
        "time of each of its events. Run separately, the profiler's figures run higher: it "
        "records every aten op inside each range, which costs time inside the range (most on "
        "modules made of many small ops), and separate runs also differ by the machine's noise. "
        "On the same calls the agent's interval encloses the profiler's range (its hooks fire "
        "just outside the wrapper), so its figure is the profiler's plus the wrapper's entry "
        "and exit: the small, positive difference in the last column.")
    sections.append(f"Load average (1 min) at start / end: {load_before:.1f} / "
                    f"{os.getloadavg()[0]:.1f} on 2 cores.")
    path = write_section("agent", "In-process agent (issue 3, run mode)", "\n\n".join(sections))
    print(path.read_text())


if __name__ == "__main__":
    t0 = time.time()
    if "--floor" in sys.argv[1:]:
        main_floor()
    elif "--wrapper-ab" in sys.argv[1:]:
        main_wrapper_ab()
    elif "--main-path" in sys.argv[1:]:
        main_path()
    else:
        main()
    print(f"took {time.time() - t0:.0f} s", file=sys.stderr)
