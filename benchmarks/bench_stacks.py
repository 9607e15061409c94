"""Benchmark the py-spy StackSampler: accuracy of its module-class shares, and its cost to the target.

Workload: a GPT-2-style model built from a small config (no download), CPU, one intra-op thread,
``model(input_ids)`` in a loop under ``torch.no_grad()``, in a child process (the sampler attaches
to a PID, as ``wattlens attach`` does).

1. Accuracy. Two references:
   * hook timer, same process, same span: a forward pre-hook/post-hook pair on every module adds
     ``time.perf_counter()`` spans per module-class path (the chain of classes being called, the
     path the sampler builds) while the StackSampler samples that very process. The hooks cost a few
     µs per call, which both sides see.
   * torch.profiler: a separate run where the hooks open/close a ``record_function`` per module call
     under ``torch.profiler.profile(activities=[CPU])``; share = inclusive CPU time / wall time.
     The profiler records every aten op, and that per-op cost inflates modules made of many small
     ops (GELU) — the table shows how much.
   Share = (samples under the path) / (all samples) for the sampler, (inclusive time) / (wall) for
   the references.
2. Overhead. One child runs the loop the whole time; phases with no profiler and with the
   StackSampler attached alternate (the order rotates each round). Per phase: mean iteration time
   (wall), and the same minus the time the target sat runnable but waiting for a CPU
   (``run_delay`` from ``/proc/PID/task/PID/schedstat``). The second is what the target would see
   with a core of its own; it removes other jobs' load but keeps py-spy's pauses (a stopped thread
   is not "runnable"). Ratio = throughput with / without within a round; median over rounds.
   py-spy's own CPU use is reported apart (it runs on another core when there is one).
   torch.profiler(with_stack=True) is measured the only way it can be: inside a child, blocks of
   iterations with and without it, alternating.

Run:  .venv/bin/python benchmarks/bench_stacks.py            (about 8 minutes)
      .venv/bin/python benchmarks/bench_stacks.py --quick    (about 3 minutes, noisier)
      --acc-configs / --overhead-configs compare other settings, e.g. "20" (20 Hz, blocking).
      --suite [--runs 3 --acc-seconds 30 --train-seconds 60]: same-run sampler vs timer on a
      GPT-2, a Llama-style decoder and a BERT-style encoder, and a Llama training loop; for the
      loop, the backward by module class (attach estimate) against a timer of every autograd
      node (--archs "" for the loop alone, --native-hz to raise the native read rate).
      --calibration-ab [--runs 3 --acc-seconds 40 --cal-vocab 32000]: two samplers side by
      side on the Llama-style decoder, calibration on (5 Hz) and off, against the same timer.
      --backward-reference [--runs 3]: the backward reference timer of --suite against
      torch.profiler, per autograd node, in one process (about a minute).
Writes benchmarks/results/stacks.md (--suite: benchmarks/results/stacks_arch.md; --calibration-ab:
benchmarks/results/stacks_calibration.md).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "stacks.md"

N_LAYER, N_EMBD, N_HEAD, VOCAB, SEQ, BATCH = 6, 384, 6, 2048, 128, 2
WRAPPER_CLASSES = ("GPT2LMHeadModel", "GPT2LMHeadModel/GPT2Model")  # ~100 % by construction


# ----------------------------------------------------------------------------- the child process


def _model_size() -> tuple[int, int, int]:
    spec = os.environ.get("WATTLENS_BENCH_MODEL")
    if not spec:
        return N_LAYER, N_EMBD, N_HEAD
    n_layer, n_embd, n_head = (int(x) for x in spec.split(","))
    return n_layer, n_embd, n_head


ARCHS = ("gpt2", "llama", "bert")


def _build_arch(torch, arch: str):
    """A Llama-style decoder (4 blocks, d=256, the issue's model) or a BERT-style encoder (4
    layers, d=256), built from a config; batch 2 x 128 tokens."""
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    vocab = int(os.environ.get("WATTLENS_BENCH_VOCAB", VOCAB))
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    elif arch == "bert":
        config = BertConfig(
            vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=SEQ,
        )  # fmt: skip
        model = BertForMaskedLM(config)
    else:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHS)}")
    return model, torch.randint(0, vocab, (BATCH, SEQ))


def _build_model():
    """The workload model; its size comes from the WATTLENS_BENCH_MODEL environment variable
    ("layers,width,heads") so the worker processes build what the parent was asked for, and its
    architecture from WATTLENS_BENCH_ARCH (gpt2, llama, bert; default gpt2)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    arch = os.environ.get("WATTLENS_BENCH_ARCH", "gpt2")
    if arch != "gpt2":
        model, ids = _build_arch(torch, arch)
        return torch, model.eval(), ids
    n_layer, n_embd, n_head = _model_size()
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    return torch, model, ids


class HookTimer:
    """Inclusive perf_counter time per module-class path, from forward pre/post hooks."""

    def __init__(self, model, make_range=None, on_boundary=None):
        self.stack: list[str] = []
        self.starts: list[float] = []
        self.ranges: list = []
        self.totals: Counter = Counter()
        self.t0 = time.perf_counter()
        self.make_range = make_range
        self.on_boundary = on_boundary  # called with the innermost class path at each entry/exit
        self.backward: BackwardTimer | None = None
        for module in model.modules():
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self.stack.append(type(module).__name__)
        if self.make_range is not None:
            rf = self.make_range("/".join(self.stack))
            rf.__enter__()
            self.ranges.append(rf)
        if self.on_boundary is not None:
            self.on_boundary("/".join(self.stack))
        self.starts.append(time.perf_counter())

    def _post(self, module, args, output):
        self.totals["/".join(self.stack)] += time.perf_counter() - self.starts.pop()
        if self.make_range is not None:
            self.ranges.pop().__exit__(None, None, None)
        self.stack.pop()
        if self.on_boundary is not None:
            self.on_boundary("/".join(self.stack) or None)

    def reset(self) -> None:
        self.totals = Counter()
        self.t0 = time.perf_counter()
        if self.backward is not None:
            self.backward.totals = Counter()

    def report(self) -> dict:
        out = {"wall_s": time.perf_counter() - self.t0, "inclusive_s": dict(self.totals)}
        if self.backward is not None:
            out["backward_s"] = dict(self.backward.totals)
        return out


OUTSIDE = "[outside modules]"


class BackwardTimer:
    """The reference for the backward by module class (bench only, never in the product's
    sampler): while the forward runs, the autograd sequence number is noted at every module
    entry/exit, so each autograd node belongs to the class path that was innermost when it was
    created (as the in-process agent does, profiler/agent/tracker.py); after the forward every
    node of the graph gets a pre/post hook pair that adds its perf_counter time to that path."""

    def __init__(self, torch):
        self.seq = torch._C._autograd._get_sequence_nr
        self.segs: list[tuple[int, str | None]] = []
        self.lo = 0
        self.totals: Counter = Counter()
        self.by_node: Counter = Counter()  # the same time by autograd node name (MulBackward0)

    def forward_start(self) -> None:
        self.lo = self.seq()
        self.segs = [(self.lo, None)]

    def boundary(self, path: str | None) -> None:
        self.segs.append((self.seq(), path))

    def hook_graph(self, root) -> None:
        hi = self.seq()
        keys = [k for k, _ in self.segs]
        owners = [o for _, o in self.segs]
        todo, seen = [root], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            try:
                seq = node._sequence_nr()
            except Exception:  # noqa: BLE001
                seq = -1
            if self.lo <= seq < hi:  # made by this forward (AccumulateGrad leaves are not)
                owner = owners[bisect.bisect_right(keys, seq) - 1] or OUTSIDE
                cell = [0.0]
                node.register_prehook(partial(self._pre, cell))
                node.register_hook(partial(self._post, cell, owner, node.name()))
            todo.extend(nxt for nxt, _ in node.next_functions)

    @staticmethod
    def _pre(cell, grad_outputs):
        cell[0] = time.perf_counter()

    def _post(self, cell, owner, name, grad_inputs, grad_outputs):
        dt = time.perf_counter() - cell[0]
        self.totals[owner] += dt
        self.by_node[name] += dt


def worker_loop(seconds: float, hooks: bool) -> None:
    """Forward passes until stdin closes (or ``seconds``), one line per iteration: its end's
    monotonic_ns and the main thread's CPU time so far (thread_time_ns), space-separated.
    With ``hooks``: stdin lines "reset"/"report" control a HookTimer; reports are JSON lines.
    With WATTLENS_BENCH_TRAIN=1 each iteration is a training step (forward with labels,
    backward, AdamW), and the timer also times the backward and the optimizer step."""
    if os.environ.get("WATTLENS_BENCH_TRAIN") == "1":
        worker_train(seconds, hooks)
        return
    torch, model, ids = _build_model()
    timer = HookTimer(model) if hooks else None
    requests: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            requests.put(line.strip())
        stop.set()

    with torch.no_grad():
        model(ids)
        print("ready", flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        t_end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < t_end:
            model(ids)
            out = f"{time.monotonic_ns()} {time.thread_time_ns()}\n"
            while not requests.empty() and timer is not None:
                req = requests.get()
                if req == "reset":
                    timer.reset()
                elif req == "report":
                    out += json.dumps(timer.report()) + "\n"
            sys.stdout.write(out)
            sys.stdout.flush()


def worker_train(seconds: float, hooks: bool) -> None:
    """The training loop: forward (hook-timed per class), backward and optimizer step (timed)."""
    torch, model, ids = _build_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bw = BackwardTimer(torch) if hooks else None
    timer = HookTimer(model, on_boundary=bw.boundary) if bw is not None else None
    if timer is not None:
        timer.backward = bw
    requests: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            requests.put(line.strip())
        stop.set()

    def step() -> None:
        if bw is not None:
            bw.forward_start()
        loss = model(ids, labels=ids).loss
        if bw is not None:
            bw.hook_graph(loss.grad_fn)
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if timer is not None:
            timer.totals["[backward]"] += t1 - t0
            timer.totals["[optimizer]"] += t2 - t1

    step()
    print("ready", flush=True)
    threading.Thread(target=watch_stdin, daemon=True).start()
    t_end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < t_end:
        step()
        out = f"{time.monotonic_ns()} {time.thread_time_ns()}\n"
        while not requests.empty() and timer is not None:
            req = requests.get()
            if req == "reset":
                timer.reset()
            elif req == "report":
                out += json.dumps(timer.report()) + "\n"
        sys.stdout.write(out)
        sys.stdout.flush()


def worker_reference(seconds: float) -> None:
    """torch.profiler reference: a record_function around every module call."""
    torch, model, ids = _build_model()
    from torch.profiler import ProfilerActivity, profile, record_function

    HookTimer(model, make_range=record_function)
    with torch.no_grad():
        for _ in range(2):
            model(ids)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < seconds:
                model(ids)
                n += 1
            wall_s = time.perf_counter() - t0
    totals: Counter = Counter()
    for evt in prof.key_averages():
        if evt.key.startswith(type(model).__name__):
            totals[evt.key] += evt.cpu_time_total / 1e6
    print(json.dumps({"wall_s": wall_s, "iterations": n, "inclusive_s": dict(totals)}))


def worker_torch_profiler(rounds: int, block_iters: int) -> None:
    """Blocks of iterations without and with torch.profiler(with_stack=True), alternating."""
    torch, model, ids = _build_model()
    from torch.profiler import ProfilerActivity, profile

    def block() -> float:
        t0 = time.perf_counter()
        for _ in range(block_iters):
            model(ids)
        return (time.perf_counter() - t0) / block_iters

    ratios, post_s = [], []
    with torch.no_grad():
        block()
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            per_iter = {}
            for cond in order:
                if cond == "off":
                    per_iter[cond] = block()
                else:
                    prof = profile(activities=[ProfilerActivity.CPU], with_stack=True)
                    prof.__enter__()
                    per_iter[cond] = block()
                    t0 = time.perf_counter()
                    prof.__exit__(None, None, None)
                    prof.key_averages()
                    post_s.append(time.perf_counter() - t0)
            ratios.append(per_iter["off"] / per_iter["on"])  # throughput with / without
    print(json.dumps({"ratios": ratios, "post_processing_s": post_s}))


# ----------------------------------------------------------------------------- the parent


def measure_backward_reference(rounds: int, steps: int) -> dict:
    """Is the backward reference itself right? The BackwardTimer (pre/post hooks on every
    autograd node, what --suite compares the attach estimate with) against torch.profiler's
    ``autograd::engine::evaluate_function: <node>`` events (no Python hooks on the nodes), per
    autograd node name, on the Llama-style training loop, in this process: ``rounds`` rounds
    of ``steps`` training steps under each, taking turns. Shares are of the sum over the node
    names both see (the nodes made by the forward: AccumulateGrad is not among them)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, ids = _build_arch(torch, "llama")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bw = BackwardTimer(torch)
    HookTimer(model, on_boundary=bw.boundary)
    timed = {"on": False}

    def step() -> None:
        bw.forward_start()  # the forward hooks run in both states; only the timer hooks nodes
        loss = model(ids, labels=ids).loss
        if timed["on"]:
            bw.hook_graph(loss.grad_fn)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    timer_s: Counter = Counter()
    prof_s: Counter = Counter()
    owners: Counter = Counter()
    prefix = "autograd::engine::evaluate_function: "
    for _ in range(rounds):
        bw.by_node, bw.totals = Counter(), Counter()
        timed["on"] = True
        for _ in range(steps):
            step()
        timed["on"] = False
        timer_s.update(bw.by_node)
        owners.update(bw.totals)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        for e in prof.key_averages():
            if e.key.startswith(prefix):
                prof_s[e.key[len(prefix):].rsplit("::", 1)[-1]] += e.cpu_time_total / 1e6
    both = set(timer_s) & set(prof_s)
    return {"rounds": rounds, "steps": steps,
            "timer_s": {k: timer_s[k] for k in both}, "profiler_s": {k: prof_s[k] for k in both},
            "timer_only": sorted(set(timer_s) - both), "profiler_only": sorted(set(prof_s) - both),
            "owners_s": dict(owners)}


def backward_reference_markdown(r: dict, loads: tuple[float, float]) -> str:
    t_sum, p_sum = sum(r["timer_s"].values()), sum(r["profiler_s"].values())
    o_sum = sum(r["owners_s"].values())
    lines = ["## The backward reference checked against torch.profiler (issue 14)", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs; load average (1 min) at start / end {loads[0]:.1f} / "
             f"{loads[1]:.1f}. Command: `bench_stacks.py --backward-reference`.", "",
             "The Llama-style training loop of `--suite` (4 blocks, d=256, batch 2 x 128, AdamW, "
             f"one thread), in one process: {r['rounds']} rounds of {r['steps']} steps under the "
             "reference timer (pre/post hooks on every autograd node) and under torch.profiler "
             "(its `evaluate_function` event per node, no Python hooks), taking turns. Share of "
             "the backward's timed nodes, by autograd node name:", "",
             "| autograd node | reference timer | torch.profiler | timer − profiler, pp |",
             "|---|---:|---:|---:|"]
    for k in sorted(r["timer_s"], key=lambda k: -r["profiler_s"][k])[:14]:
        a, b = 100 * r["timer_s"][k] / t_sum, 100 * r["profiler_s"][k] / p_sum
        lines.append(f"| {k} | {a:.1f} % | {b:.1f} % | {a - b:+.1f} |")
    lines += ["", "The reference by class path (what `--suite` compares the attach estimate "
              "with), from the same timed steps: "
              + ", ".join(f"`{k}` {100 * v / o_sum:.1f} %"
                          for k, v in Counter(r["owners_s"]).most_common(10)) + "."]
    return "\n".join(lines)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


class LoopChild:
    """The loop worker, with a thread collecting its iteration time stamps and reports."""

    def __init__(self, seconds: float, hooks: bool = False):
        args = ["--worker", "loop", "--seconds", str(seconds)] + (["--hooks"] if hooks else [])
        self.proc = _spawn(*args)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker did not start: {line!r}")
        self.stamps_ns: list[int] = []
        self.thread_cpu_ns: list[int] = []  # the worker's main thread CPU time at each stamp
        self.reports: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            stamp, _, cpu = line.partition(" ")
            if stamp.isdigit() and cpu.isdigit():
                self.thread_cpu_ns.append(int(cpu))  # first: a reader sees stamps_ns[i] with it
                self.stamps_ns.append(int(stamp))
            elif line.startswith("{"):
                self.reports.put(json.loads(line))

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def schedstat(self) -> tuple[int, int, int]:
        """(monotonic_ns, on-CPU ns, runnable-but-waiting ns) of the child's main thread."""
        with open(f"/proc/{self.pid}/task/{self.pid}/schedstat") as fh:
            on_cpu, delay, _ = fh.read().split()
        return time.monotonic_ns(), int(on_cpu), int(delay)

    def iterations(self, start_ns: int, end_ns: int) -> tuple[int, int] | None:
        """(n intervals, span ns) of iterations that ended inside [start, end]."""
        inside = [t for t in list(self.stamps_ns) if start_ns <= t <= end_ns]
        if len(inside) < 3:
            return None
        return len(inside) - 1, inside[-1] - inside[0]

    def per_iteration(self, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
        """(wall ns, main-thread CPU ns) of each iteration that began and ended inside [start, end]."""
        stamps = list(self.stamps_ns)
        cpu = self.thread_cpu_ns[:len(stamps)]
        return [(stamps[i] - stamps[i - 1], cpu[i] - cpu[i - 1]) for i in range(1, len(stamps))
                if start_ns <= stamps[i - 1] and stamps[i] <= end_ns]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _label(config: str) -> str:
    if config == "none":
        return "nothing attached (A/A control)"
    rate, _, mode = config.partition(":")
    return f"{int(float(rate))} Hz" + (" --nonblocking" if mode == "nb" else "")


def _sampler(pid: int, config: str, window_s: float, on_window, **options):
    """``options``: StackSampler keywords (calibration_hz, native_hz); the defaults otherwise."""
    from wattlens.profiler.stacks.sampler import StackSampler

    rate, _, mode = config.partition(":")
    return StackSampler(
        pid,
        rate_hz=float(rate),
        window_s=window_s,
        on_window=on_window,
        energy_between=lambda a, b: None,
        nonblocking=mode == "nb",
        **{k: v for k, v in options.items() if v is not None},
    )


def measure_accuracy(configs: list[str], seconds: float, window_s: float) -> dict:
    child = LoopChild(len(configs) * (seconds + 30) + 60, hooks=True)
    results = {}
    try:
        for config in configs:
            windows: list = []
            sampler = _sampler(child.pid, config, window_s, windows.append)
            sampler.start()
            if not sampler.available:
                raise RuntimeError(sampler.reason)
            child.send("reset")
            time.sleep(seconds)
            child.send("report")
            sampler.stop()
            hook = child.reports.get(timeout=60)
            inclusive: Counter = Counter()
            total = 0
            per_window: list[dict[str, float]] = []
            for rows in windows:
                w_total = sum(
                    r.n_samples for r in rows if r.granularity == "bucket" or "/" not in r.path
                )  # top-level nodes and buckets partition the samples
                total += w_total
                per_window.append({r.path: r.n_samples / w_total for r in rows})
                for row in rows:
                    if row.granularity == "class":
                        inclusive[row.path] += row.n_samples
            # standard error of the span's share, from the spread between windows
            stderr = (
                {
                    path: statistics.stdev([w.get(path, 0.0) for w in per_window])
                    / len(per_window) ** 0.5
                    for path in inclusive
                }
                if len(per_window) > 1
                else {}
            )
            results[config] = {
                "sampled": {path: n / total for path, n in inclusive.items()},
                "stderr": stderr,
                "hook": {p: t / hook["wall_s"] for p, t in hook["inclusive_s"].items()},
                "samples": total,
                "windows": len(windows),
                "pyspy_samples": sampler.samples,
                "pyspy_errors": sampler.errors,
            }
    finally:
        child.close()
    ref_proc = _spawn("--worker", "reference", "--seconds", str(min(seconds, 15.0)))
    out, _ = ref_proc.communicate(timeout=900)
    ref = json.loads(out.strip().splitlines()[-1])
    torch_profiler = {path: t / ref["wall_s"] for path, t in ref["inclusive_s"].items()}
    return {
        "configs": results,
        "torch_profiler": torch_profiler,
        "ref_iterations": ref["iterations"],
    }


def _same_run(seconds: float, window_s: float, native_hz: int | None = None) -> dict:
    """One child (arch/training from the environment) with the hook timer, the default
    StackSampler attached for ``seconds``: both shares per class path over the same span."""
    child = LoopChild(seconds + 120, hooks=True)
    try:
        windows: list = []
        sampler = _sampler(child.pid, "50:nb", window_s, windows.append, native_hz=native_hz)
        sampler.start()
        if not sampler.available:
            raise RuntimeError(sampler.reason)
        child.send("reset")
        time.sleep(seconds)
        child.send("report")
        sampler.stop()
        hook = child.reports.get(timeout=120)
    finally:
        child.close()
    per_window: list[dict[str, float]] = []
    self_totals: Counter = Counter()
    for rows in windows:
        total = sum(r.self_time_s or 0.0 for r in rows)
        if total <= 0:
            continue
        per_window.append({r.path: (r.self_time_s or 0.0) / total for r in rows})
        for r in rows:
            self_totals[r.path] += r.self_time_s or 0.0
    grand = sum(self_totals.values())
    incl: Counter = Counter()
    for rows in windows:
        for r in rows:
            incl[r.path] += r.time_s
    k = len(per_window)
    stderr = {
        p: statistics.stdev([w.get(p, 0.0) for w in per_window]) / k**0.5 for p in self_totals
    } if k > 1 else {}
    from wattlens.profiler.stacks.backward_map import backward_by_class
    from wattlens.profiler.stacks.native import ENGINE_OTHER
    from wattlens.profiler.stacks.parse import BUCKET_OPTIMIZER, OPTIMIZER_STEP_OTHER

    named = sum(  # module classes, backward ops and optimizer parts with a name
        r.self_time_s or 0.0
        for rows in windows
        for r in rows
        if r.granularity == "class"
        or (r.path.startswith("backward/") and not r.path.endswith(ENGINE_OTHER))
        or (r.path.startswith(BUCKET_OPTIMIZER + "/") and OPTIMIZER_STEP_OTHER not in r.path)
    )
    hook_incl = {p: t / hook["wall_s"] for p, t in hook["inclusive_s"].items()}
    hook_self = dict(hook_incl)  # minus the direct children's inclusive time
    for p, v in hook_incl.items():
        parent = p.rpartition("/")[0]
        if parent in hook_self and not p.startswith("["):
            hook_self[parent] -= v
    return {
        "sampled": {p: v / grand for p, v in incl.items()} if grand else {},
        "sampled_self": {p: v / grand for p, v in self_totals.items()} if grand else {},
        "stderr": stderr,  # of the self shares
        "hook": hook_incl,
        "hook_wall_s": hook["wall_s"],
        "hook_self": hook_self,
        "loss": sampler.loss.summary(),
        "torn": dict(sampler.tree.torn_paths),
        "backward_ops": dict(sampler.backward_ops),
        "native_hz": sampler.native_hz,
        "forward_ops": {f"{path}|{op}": n for (path, op), n in sampler.forward_ops.items()},
        "backward_parts": [  # the session's final pooled split of the backward, with its se
            {"name": p.name, "kind": p.kind, "share": p.share, "se": p.se, "ops": list(p.ops)}
            for p in backward_by_class(sampler.backward_ops, sampler.forward_ops,
                                       sampler.forward_time)],
        "backward_parts_reads": [  # the same, classes weighed by their native reads alone
            {"name": p.name, "kind": p.kind, "share": p.share, "se": p.se, "ops": list(p.ops)}
            for p in backward_by_class(sampler.backward_ops, sampler.forward_ops)],
        "hook_backward": hook.get("backward_s", {}),  # reference: seconds per class path
        "optimizer_ops": {f"{part}/{op}": n for (part, op), n in sampler.optimizer_ops.items()},
        "named_share": named / grand if grand else None,
        "windows": k,
    }


def _self_shares(windows: list) -> tuple[dict[str, float], dict[str, float]]:
    """(self share per path over all windows, its standard error from the spread between
    windows) of one sampler's windows."""
    per_window: list[dict[str, float]] = []
    self_totals: Counter = Counter()
    for rows in windows:
        total = sum(r.self_time_s or 0.0 for r in rows)
        if total <= 0:
            continue
        per_window.append({r.path: (r.self_time_s or 0.0) / total for r in rows})
        for r in rows:
            self_totals[r.path] += r.self_time_s or 0.0
    grand = sum(self_totals.values())
    k = len(per_window)
    stderr = {
        p: statistics.stdev([w.get(p, 0.0) for w in per_window]) / k**0.5 for p in self_totals
    } if k > 1 else {}
    return ({p: v / grand for p, v in self_totals.items()} if grand else {}), stderr


def _hook_self(hook: dict) -> dict[str, float]:
    """The timer's self share per class path: inclusive minus the direct children's."""
    incl = {p: t / hook["wall_s"] for p, t in hook["inclusive_s"].items()}
    out = dict(incl)
    for p, v in incl.items():
        parent = p.rpartition("/")[0]
        if parent in out and not p.startswith("["):
            out[parent] -= v
    return out


CALIBRATION_SETTINGS = {"on": 5, "off": 0}  # calibration_hz of the two samplers side by side


def _calibration_pair(seconds: float, window_s: float) -> dict:
    """One child (the Llama-style decoder, forward under no_grad, hook timer inside), two
    StackSamplers attached side by side for the same ``seconds``: 50 Hz --nonblocking with the
    blocking calibration at 5 Hz, and the same with it off (lost reads spread in proportion)."""
    child = LoopChild(seconds + 120, hooks=True)
    samplers, windows = {}, {}
    try:
        for name, cal_hz in CALIBRATION_SETTINGS.items():
            windows[name] = []
            samplers[name] = _sampler(child.pid, "50:nb", window_s, windows[name].append,
                                      calibration_hz=cal_hz)
            samplers[name].start()
            if not samplers[name].available:
                raise RuntimeError(samplers[name].reason)
        child.send("reset")
        time.sleep(seconds)
        child.send("report")
        for sampler in samplers.values():
            sampler.stop()
        hook = child.reports.get(timeout=120)
    finally:
        child.close()
    out = {"hook_self": _hook_self(hook), "load": os.getloadavg()[0]}
    for name, sampler in samplers.items():
        shares, stderr = _self_shares(windows[name])
        out[name] = {"self": shares, "stderr": stderr, "loss": sampler.loss.summary(),
                     "windows": len(windows[name])}
    return out


def measure_calibration(runs: int, seconds: float, window_s: float, vocab: int) -> list[dict]:
    os.environ["WATTLENS_BENCH_ARCH"] = "llama"
    os.environ["WATTLENS_BENCH_VOCAB"] = str(vocab)
    os.environ.pop("WATTLENS_BENCH_TRAIN", None)
    out = []
    for r in range(runs):
        print(f"  calibration on/off, run {r + 1}/{runs} ...", file=sys.stderr)
        out.append(_calibration_pair(seconds, window_s))
    return out


def calibration_markdown(runs: list[dict], args: argparse.Namespace,
                         load: tuple[float, float]) -> str:
    top: Counter = Counter()
    for r in runs:
        for p, v in r["hook_self"].items():
            if not p.startswith("["):
                top[p] += v / len(runs)
    paths = [p for p, _ in top.most_common(6)]
    lines = [
        "## Calibration on / off in the same run (issue 14)",
        "",
        f"Command: `bench_stacks.py {' '.join(args.argv)}`; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs shared with other jobs; load average (1 min) at start / end "
        f"{load[0]:.1f} / {load[1]:.1f}, after each run: "
        + ", ".join(f"{r['load']:.1f}" for r in runs) + ".",
        "",
        "One child runs the Llama-style decoder of the issue (4 blocks, d=256, "
        f"vocabulary {args.cal_vocab}, batch 2 x 128, "
        "CPU, one thread, forward under no_grad) with the in-process hook timer; two "
        "StackSamplers are attached to it at once for the same span, both 50 Hz --nonblocking "
        f"in {args.window:g} s windows: **on** = the blocking calibration at 5 Hz (lost reads "
        "added back where the exact reads say they fell), **off** = calibration_hz=0 (lost "
        "reads spread in proportion, i.e. dropped). Self share per class path; sampler − timer "
        "in pp, mean of the runs ± the standard error of that mean (from each run's spread "
        "between windows); per-run differences after the bar.",
        "",
        "| class path (self share) | timer | on: sampler − timer, pp | off: sampler − timer, pp "
        "| on, per run | off, per run |",
        "|---|---:|---:|---:|---|---|",
    ]
    for p in paths:
        cells = []
        per_run = []
        for name in CALIBRATION_SETTINGS:
            diffs = [100 * (r[name]["self"].get(p, 0.0) - r["hook_self"].get(p, 0.0)) for r in runs]
            ses = [100 * r[name]["stderr"].get(p, 0.0) for r in runs]
            se = (sum(x * x for x in ses) ** 0.5) / len(ses)
            cells.append(f"{statistics.fmean(diffs):+.2f} ± {se:.2f}")
            per_run.append(", ".join(f"{d:+.1f}" for d in diffs))
        name = f"**`{p}`** (LM head)" if p.endswith("ForCausalLM/Linear") else f"`{p}`"
        lines.append(f"| {name} | {100 * top[p]:.1f} % | {cells[0]} | {cells[1]} | "
                     f"{per_run[0]} | {per_run[1]} |")
    lines += ["", "Lost reads per run (failed + torn of all attempts): " + "; ".join(
        " / ".join(f"{name} {r[name]['loss']['failed']} + {r[name]['loss']['torn']} of "
                   f"{r[name]['loss']['reads']} ({100 * (r[name]['loss']['lost_share'] or 0):.1f} %)"
                   for name in CALIBRATION_SETTINGS) for r in runs) + ".", ""]
    return "\n".join(lines)


def measure_suite(archs: list[str], runs: int, seconds: float, train_seconds: float,
                  window_s: float, native_hz: int | None = None) -> dict:
    """Same-run sampler vs timer on each architecture (``runs`` times), then a training loop."""
    out: dict = {"archs": {}, "train": None}
    for arch in archs:
        os.environ["WATTLENS_BENCH_ARCH"] = arch
        os.environ.pop("WATTLENS_BENCH_TRAIN", None)
        out["archs"][arch] = []
        for r in range(runs):
            print(f"  {arch} run {r + 1}/{runs} ...", file=sys.stderr)
            out["archs"][arch].append(_same_run(seconds, window_s))
    if train_seconds > 0:
        os.environ["WATTLENS_BENCH_ARCH"] = "llama"
        os.environ["WATTLENS_BENCH_TRAIN"] = "1"
        print("  llama training loop ...", file=sys.stderr)
        out["train"] = _same_run(train_seconds, window_s, native_hz)
        os.environ.pop("WATTLENS_BENCH_TRAIN", None)
    return out


def suite_markdown(suite: dict, args: argparse.Namespace, load: tuple[float, float]) -> str:
    from wattlens.profiler.stacks.native import native_run

    lines = [
        "## Same-run comparison on three architectures and a training loop (issue 14)",
        "",
        f"Command: `bench_stacks.py {' '.join(args.argv)}`; {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load average (1 min) at start / end {load[0]:.1f} / "
        f"{load[1]:.1f} — a shared, busy machine: read the spreads, not just the means.",
        "",
        "StackSampler defaults (50 Hz --nonblocking, 5 s windows, 5 Hz blocking calibration, "
        "native reads once a backward is seen: "
        + ", ".join(f"{s_} s at {hz} Hz" for s_, hz in (native_run(n, args.native_hz or 1) for n in range(3)))
        + ", ..." + ("" if args.native_hz in (None, 1) else " (the default steady rate is 1 Hz)")
        + ") attached to a child that also runs an in-process "
        "hook timer (pre/post hooks on every module, same span). Self share (the class path's own "
        "time, its child modules' excluded) = self time / wall (timer) and self samples / all "
        "samples, lost reads added back (sampler). Top five class paths by timer self share. "
        "± = standard error of the mean difference, from the spread between 5 s windows.",
        "",
    ]
    worst_all = []
    for arch, runs in suite["archs"].items():
        top: Counter = Counter()
        for r in runs:
            for p, v in r["hook_self"].items():
                if not p.startswith("["):
                    top[p] += v / len(runs)
        paths = [p for p, _ in top.most_common(5)]
        lines += [f"### {arch} ({len(runs)} runs)", "",
                  "| class path (self share) | timer | sampler | sampler − timer, pp "
                  "(mean ± se) | per run, pp |", "|---|---:|---:|---:|---|"]
        for p in paths:
            diffs = [100 * (r["sampled_self"].get(p, 0.0) - r["hook_self"].get(p, 0.0))
                     for r in runs]
            ses = [100 * r["stderr"].get(p, 0.0) for r in runs]
            mean_d = statistics.fmean(diffs)
            se = (sum(x * x for x in ses) ** 0.5) / len(ses)
            worst_all.append((arch, p, mean_d))
            lines.append(
                f"| `{p}` | {100 * top[p]:.1f} % | "
                f"{100 * statistics.fmean(r['sampled_self'].get(p, 0.0) for r in runs):.1f} % | "
                f"{mean_d:+.2f} ± {se:.2f} | {', '.join(f'{d:+.1f}' for d in diffs)} |")
        losses = [r["loss"] for r in runs]
        lines += ["", "Lost reads per run: " + "; ".join(
            f"{x['failed']} failed + {x['torn']} torn of {x['reads']} "
            f"({100 * (x['lost_share'] or 0):.1f} %), {x['calibration_reads']} calibration reads"
            for x in losses) + ". Torn paths dropped: "
            + ("; ".join(", ".join(f"`{k}` ×{v}" for k, v in r["torn"].items()) or "none"
                         for r in runs)) + ".", ""]
    if worst_all:
        within = sum(1 for _, _, d in worst_all if abs(d) <= 1.5)
        pos = sum(1 for _, _, d in worst_all if d > 0)
        lines += [f"Top-5 classes within 1.5 pp of the timer (mean of the runs): {within} of "
                  f"{len(worst_all)}; signs: {pos} above, {len(worst_all) - pos} below.", ""]
    t = suite.get("train")
    if t:
        lines += ["### Llama-style training loop (forward, backward, AdamW)", "",
                  "| node | timer | sampler |", "|---|---:|---:|"]
        bw_s = sum(v for p, v in t["sampled"].items() if p == "backward")
        lines.append(f"| backward (all) | {100 * t['hook'].get('[backward]', 0):.1f} % | "
                     f"{100 * bw_s:.1f} % |")
        lines.append(f"| optimizer | {100 * t['hook'].get('[optimizer]', 0):.1f} % | "
                     f"{100 * t['sampled'].get('optimizer', 0):.1f} % |")
        for p, v in sorted(t["sampled"].items(), key=lambda kv: -kv[1]):
            if p.startswith("optimizer/") and p.count("/") == 1:
                lines.append(f"| {p} | | {100 * v:.1f} % |")
        ops = Counter(t["backward_ops"])
        n_ops = sum(ops.values())
        lines += ["", f"Backward by autograd op ({n_ops} native reads; share of the "
                  "backward ± binomial se): " + ", ".join(
                      f"{op} {100 * n / n_ops:.0f} % ± {100 * (n / n_ops * (1 - n / n_ops) / n_ops) ** 0.5:.0f}"
                      for op, n in ops.most_common(8)) if n_ops else "", "",
                  "Optimizer parts by tensor op (the same native reads): " + (", ".join(
                      f"{k} {n}" for k, n in Counter(t.get("optimizer_ops", {})).most_common(8))
                      or "none seen"), "",
                  *backward_class_markdown(t),
                  f"Time attributed to module classes or named autograd ops: "
                  f"{100 * (t['named_share'] or 0):.1f} % (goal ≥ 80 %; optimizer parts named "
                  "by torch's update function count as named, `optimizer/step (other)` does "
                  "not); the rest is the optimizer step's own bookkeeping, the backward before "
                  "the first native reads arrived, the engine's own work and Python outside "
                  "modules.", ""]
    return "\n".join(lines)


def backward_class_markdown(t: dict) -> list[str]:
    """The backward by module class (attach mode, forward-op mix) against the reference timer
    of each class path's autograd nodes, as shares of the backward."""
    parts = t.get("backward_parts") or []
    ref_s = t.get("hook_backward") or {}
    wall_s = t["hook"].get("[backward]", 0.0) * t.get("hook_wall_s", 0.0)
    timed = sum(ref_s.values())
    if not parts or timed <= 0:
        return ["Backward by module class: no native forward evidence or no reference timing "
                "in this run.", ""]
    # both as shares of the whole backward: the reference's untimed rest is gradient accumulation
    # and the engine's own work, which the estimate keeps as op rows
    denom = wall_s if wall_s > timed else timed
    ref = {p: v / denom for p, v in ref_s.items()}
    est = {p["name"]: p for p in parts if p["kind"] == "class"}
    est_reads = {p["name"]: p for p in t.get("backward_parts_reads") or [] if p["kind"] == "class"}
    n_fwd = sum(t.get("forward_ops", {}).values())
    n_bw = sum(t["backward_ops"].values())
    mapped = sum(p["share"] for p in est.values())
    lines = [
        f"Backward by module class (attach mode: each autograd op's {n_bw} native backward reads "
        "split over the class paths in proportion to each class's sampled forward time × the "
        f"share of its native forward reads ({n_fwd} in all) that ran the same op; method "
        "`estimate: forward-op mix`; the last column weighs the classes by those native "
        "reads alone), against the reference: "
        "an in-process timer of every autograd node of the forward's graph (pre/post hooks), "
        "each node charged to the class path innermost when it was created (autograd sequence "
        "numbers, as the agent does in run mode). Shares of the backward; the estimate's "
        f"shares are of all backward reads ({100 * mapped:.1f} % mapped to classes, the rest "
        f"stays by op), the reference's of the backward's wall time (its timed nodes: "
        f"{100 * timed / denom:.0f} %; the rest is gradient accumulation and the engine's own "
        "work). ± = the estimate's standard error (delta method over the two binomial counts).",
        "",
        "| class path (backward) | reference | attach estimate | estimate − reference, pp "
        "| native reads alone: estimate − reference, pp |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in sorted(set(ref) | set(est), key=lambda q: -max(ref.get(q, 0.0), est.get(q, {}).get("share", 0.0))):
        r, e = ref.get(p, 0.0), est.get(p, {}).get("share", 0.0)
        if max(r, e) < 0.005:
            continue
        se = est.get(p, {}).get("se")
        alt = est_reads.get(p)
        alt_text = (f"{100 * (alt['share'] - r):+.1f} ± {100 * alt['se']:.1f}" if alt
                    else "(no estimate)")
        lines.append(f"| `{p}` | {100 * r:.1f} % | {100 * e:.1f} % | {100 * (e - r):+.1f}"
                     + (f" ± {100 * se:.1f}" if se is not None else " (no estimate)")
                     + f" | {alt_text} |")
    kept = [p for p in parts if p["kind"] == "op"]
    lines += ["", "Kept by op (no forward evidence, or evidence outside modules): " + ", ".join(
        f"{p['name']} {100 * p['share']:.1f} %" for p in kept[:8]) + ".", ""]
    return lines


def measure_overhead(rounds: int, phase_s: float, configs: list[str], window_s: float,
                     settle_s: float = 0.5) -> dict:
    """``configs``: "50" (50 Hz, blocking), "100:nb" (100 Hz, --nonblocking), or "none" (a second
    no-profiler condition: the A/A control that shows the method's own bias and noise).
    ``settle_s``: wait after attaching before measuring (a training job's native reads start
    only after the first window saw a backward, so they need more than one window)."""
    conditions = ["off"] + configs
    child = LoopChild(rounds * len(conditions) * (phase_s + settle_s + 5) + 120)
    per_round: list[dict] = []
    pyspy_cpu: dict[str, list[float]] = {c: [] for c in configs}
    readers: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        for r in range(rounds):
            order = conditions[r % len(conditions) :] + conditions[: r % len(conditions)]
            got = {}
            for cond in order:
                sampler = None
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                if cond not in ("off", "none"):
                    sampler = _sampler(child.pid, cond, window_s, lambda rows: None)
                    sampler.start()
                    if not sampler.available:
                        raise RuntimeError(sampler.reason)
                time.sleep(settle_s)
                w0, cpu0, delay0 = child.schedstat()
                time.sleep(phase_s)
                w1, cpu1, delay1 = child.schedstat()
                if sampler is not None:
                    sampler.stop()
                    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
                    pyspy_cpu[cond].append(used / (phase_s + settle_s))
                    readers[cond].append({  # which readers ran in this phase
                        "calibration_reads": sampler.loss.calibration_reads,
                        "native_reads": sum(sampler.backward_ops.values())
                        + sum(sampler.optimizer_ops.values()),
                        "native_started": sampler._native_thread is not None})
                time.sleep(0.5)  # let the last iterations' time stamps arrive
                its = child.iterations(w0, w1)
                if its is None:
                    continue
                n, span_ns = its
                wall, waiting = w1 - w0, delay1 - delay0
                on_cpu = cpu1 - cpu0
                got[cond] = {
                    "wall_iter_s": span_ns / n / 1e9,
                    # scale the span by the share of time not spent waiting for a CPU
                    "own_core_iter_s": span_ns * (wall - waiting) / wall / n / 1e9,
                    "cpu_iter_s": span_ns * on_cpu / wall / n / 1e9,
                    "cpu_share": on_cpu / wall,
                    # neither running nor waiting to run: stopped by py-spy (or blocked)
                    "stopped_share": max(0.0, (wall - on_cpu - waiting) / wall),
                }
            per_round.append(got)
    finally:
        child.close()
    ratios: dict[str, dict[str, list[float]]] = {}
    for cond in configs:
        pairs = [g for g in per_round if "off" in g and cond in g]
        ratios[_label(cond)] = {
            kind: [g["off"][kind] / g[cond][kind] for g in pairs]
            for kind in ("wall_iter_s", "own_core_iter_s", "cpu_iter_s")
        }
        ratios[_label(cond)]["stopped_share"] = [g[cond]["stopped_share"] for g in pairs]
    return {
        "ratios": ratios,
        "off_it_per_s": [1 / g["off"]["wall_iter_s"] for g in per_round if "off" in g],
        "off_cpu_share": [g["off"]["cpu_share"] for g in per_round if "off" in g],
        "off_stopped_share": [g["off"]["stopped_share"] for g in per_round if "off" in g],
        "pyspy_core_share": {_label(c): v for c, v in pyspy_cpu.items()},
        "readers": {_label(c): v for c, v in readers.items()},
        "per_round": per_round,
    }


def measure_torch_profiler(rounds: int, block_iters: int) -> dict:
    proc = _spawn("--worker", "torchprof", "--rounds", str(rounds), "--block", str(block_iters))
    out, _ = proc.communicate(timeout=900)
    return json.loads(out.strip().splitlines()[-1])


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f}" if xs else "n/a"


def accuracy_markdown(acc: dict, args: argparse.Namespace) -> tuple[list[str], dict]:
    lines: list[str] = []
    verdicts = {}
    tp = acc["torch_profiler"]
    for config, res in acc["configs"].items():
        sampled, hook = res["sampled"], res["hook"]
        rows = sorted(set(sampled) | set(hook), key=lambda p: -hook.get(p, 0.0))
        top5 = [p for p in rows if p not in WRAPPER_CLASSES][:5]
        worst = max(abs(sampled.get(p, 0.0) - hook.get(p, 0.0)) for p in top5)
        worst_tp = max(abs(sampled.get(p, 0.0) - tp.get(p, 0.0)) for p in top5)
        verdicts[config] = (worst, worst_tp)
        err_rate = res["pyspy_errors"] / max(1, res["pyspy_samples"] + res["pyspy_errors"])
        lines += [
            f"### Accuracy: StackSampler {_label(config)}, {args.window:g} s windows, "
            f"{args.acc_seconds:g} s",
            "",
            f"{res['samples']} samples in {res['windows']} windows; py-spy read errors: "
            f"{res['pyspy_errors']} ({_pct(err_rate)} of attempts, those samples are lost).",
            "",
            "| class path | hook timer (same run) | torch.profiler (separate run) | StackSampler "
            "(± standard error from the spread between windows) | sampler − hook (pp) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for p in rows:
            h, s, t = hook.get(p, 0.0), sampled.get(p, 0.0), tp.get(p, 0.0)
            if max(h, s) < 0.005:
                continue
            mark = " **(top 5)**" if p in top5 else ""
            se = res["stderr"].get(p)
            s_text = _pct(s) + (f" ± {100 * se:.1f}" if se is not None else "")
            lines.append(
                f"| `{p}`{mark} | {_pct(h)} | {_pct(t)} | {s_text} | {100 * (s - h):+.1f} |"
            )
        lines += [
            "",
            f"Top five classes below the whole-model wrappers: largest difference "
            f"{100 * worst:.1f} pp against the hook timer (goal: each within 3 pp — "
            f"{'met' if worst <= 0.03 else 'NOT met'}); {100 * worst_tp:.1f} pp against "
            "torch.profiler.",
            "",
        ]
    return lines, verdicts


def summary_markdown(verdicts: dict, ovh: dict, args: argparse.Namespace) -> list[str]:
    """The few numbers a reader needs, for the first accuracy config (the defaults, unless
    told otherwise)."""
    config = args.acc_configs.split(",")[0]
    label = _label(config)
    worst, _ = verdicts[config]
    lines = ["### Summary", ""]
    lines.append(
        f"- Accuracy, StackSampler {label}: the five largest classes below the model wrappers are "
        f"within {100 * worst:.1f} pp of the in-process hook timer (goal 3 pp: "
        f"{'met' if worst <= 0.03 else 'NOT met'})."
    )
    kinds = ovh["ratios"].get(label)
    if kinds and kinds["own_core_iter_s"]:
        own = statistics.median(kinds["own_core_iter_s"])
        paused = statistics.median(kinds["stopped_share"])
        cpu = ovh["pyspy_core_share"].get(label, [])
        aa = ovh["ratios"].get(_label("none"), {}).get("own_core_iter_s", [])
        aa_text = f"; the A/A control read {statistics.median(aa):.3f}" if aa else ""
        lines.append(
            f"- Overhead, StackSampler {label}: target paused {_pct(paused)} of the time; "
            f"throughput with a core of its own {own:.3f} of baseline "
            f"({_pct(1 - own)} slower{aa_text}, which is this method's noise); py-spy used "
            f"{_pct(statistics.median(cpu)) if cpu else 'n/a'} of one core (goal: target "
            f"≤ 2 % slower: {'met' if 1 - own <= 0.02 else 'NOT met'} within that noise)."
        )
    lines.append("")
    return lines


def write_markdown(acc: dict, ovh: dict, tp: dict, args: argparse.Namespace) -> str:
    n_layer, n_embd, n_head = _model_size()
    lines = [
        "## Stack sampling (py-spy) — accuracy and overhead",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, shared with other jobs; Python {platform.python_version()}, "
        "py-spy 0.4.3). "
        f"Workload: GPT-2-style model, {n_layer} layers, width {n_embd}, {n_head} heads, "
        f"vocab {VOCAB}, batch {BATCH} x {SEQ} tokens, CPU, 1 intra-op thread, forward under "
        "no_grad, in a child process. Command: `" + " ".join(["bench_stacks.py", *args.argv]) + "`",
        "",
        "What is measured: CPU-side time share by module class (the class whose `forward` is on "
        "the Python stack), inclusive of children. torch.profiler's column is inflated for "
        "modules made of many small ops (its per-op recording costs time inside the range); "
        "the hook timer is the reference the goal is judged against.",
        "",
    ]
    acc_lines, verdicts = accuracy_markdown(acc, args)
    lines += summary_markdown(verdicts, ovh, args)
    lines += acc_lines
    off_share = statistics.median(ovh["off_cpu_share"]) if ovh["off_cpu_share"] else float("nan")
    off_stopped = statistics.median(ovh["off_stopped_share"]) if ovh["off_stopped_share"] else 0
    lines += [
        f"### Overhead: {args.rounds} interleaved rounds of {args.phase_seconds:g} s per "
        "condition in one child",
        "",
        f"Without a profiler the target got {_pct(off_share)} of a CPU (median): the rest of the "
        "time it was runnable but waiting for a core, so wall-clock throughput mostly measures "
        "other jobs. From /proc/PID/task/PID/schedstat each phase splits into on-CPU, waiting "
        "for a CPU, and neither (stopped: py-spy's pauses). Columns: *paused* = stopped share of "
        f"wall time (without a profiler: {_pct(off_stopped)}); *own core* = throughput ratio "
        "with the waiting removed (what the target would see with a core to itself, pauses "
        "included); *CPU per iteration* = ratio of on-CPU time per iteration (cache and memory "
        "effects); *wall clock* = plain throughput ratio. Ratios are with / without "
        "(1.000 = no change), medians over rounds.",
        "",
        "| condition | paused | own core | CPU per iteration | wall clock (min … max) "
        "| py-spy CPU (share of one core) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cond, kinds in ovh["ratios"].items():
        wall = kinds["wall_iter_s"]
        spread = f" ({min(wall):.3f} … {max(wall):.3f})" if wall else ""
        paused = _pct(statistics.median(kinds["stopped_share"])) if kinds["stopped_share"] else ""
        cpu = ovh["pyspy_core_share"].get(cond, [])
        name = f"StackSampler {cond}, {args.window:g} s windows" if "Hz" in cond else cond
        lines.append(
            f"| {name} | {paused} | "
            f"{_med(kinds['own_core_iter_s'])} | {_med(kinds['cpu_iter_s'])} | "
            f"{_med(wall)}{spread} | {_pct(statistics.median(cpu)) if cpu else 'n/a'} |"
        )
    tp_med = statistics.median(tp["ratios"])
    lines += [
        f"| torch.profiler(with_stack=True), in-process | n/a | n/a | n/a | {tp_med:.3f} "
        f"({min(tp['ratios']):.3f} … {max(tp['ratios']):.3f}) | in-process |",
        "",
        f"Baseline throughput {statistics.median(ovh['off_it_per_s']):.2f} it/s (median wall "
        f"clock, no profiler). torch.profiler also spends "
        f"{statistics.median(tp['post_processing_s']):.2f} s building its trace after each "
        f"{args.block}-iteration block, not counted above.",
        "",
    ]
    return "\n".join(lines)


def overhead_only_markdown(ovh: dict, args: argparse.Namespace, loads: tuple[float, float]) -> str:
    """``--overhead-only``: the own-core slowdown of the default sampler with its bootstrap 95 %
    CI beside the A/A control, and the pause share of the blocking reads (issue 14: <= 1 %)."""
    from common import bootstrap_median_ci

    from wattlens.profiler.stacks.lost import CALIBRATION_RATE_HZ as CALIBRATION_HZ
    from wattlens.profiler.stacks.native import NATIVE_RATE_HZ as NATIVE_HZ

    kind = "training loop (forward, backward, AdamW)" if args.train else "inference (no_grad)"
    model = {"llama": "Llama-style decoder (4 blocks, d=256)", "bert": "BERT-style encoder "
             "(4 layers, d=256)"}.get(args.arch, "GPT-2-style model ({}, {}, {})".format(*_model_size()))
    configs = {_label(c): c for c in args.overhead_configs.split(",")}
    per_round = [g for g in ovh["per_round"] if "off" in g]
    lines = [
        f"## Attach mode's own-core slowdown: {model}, {kind}",
        "",
        f"Run {ovh.get('run_at') or time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, "
        f"shared with other jobs; load average (1 min) at start / end {loads[0]:.1f} / "
        f"{loads[1]:.1f}). Batch {BATCH} x {SEQ} tokens, CPU, 1 intra-op thread, in a child "
        f"process. Command: `{' '.join(['bench_stacks.py', *args.argv])}`. {args.rounds} rounds; "
        f"each round measures every condition for {args.phase_seconds:g} s in rotating order "
        f"after {args.settle:g} s attached.",
        "",
        "The sampler is the default `wattlens attach` one: 50 Hz --nonblocking reads, "
        f"{CALIBRATION_HZ} Hz blocking calibration reads, and {NATIVE_HZ} Hz blocking native "
        "reads that start once a window saw a backward (training only). *Own core* = throughput with / without the sampler "
        "after removing the time the target sat runnable but waiting for a CPU "
        "(/proc/PID/task/PID/schedstat), so other jobs' load drops out and py-spy's pauses stay "
        "in; slowdown = 1 − own-core ratio. *Paused* = the share of wall time the target's "
        "thread was neither running nor waiting to run (stopped by py-spy's blocking reads), "
        "minus the same share in the paired no-profiler phase. Medians over rounds with "
        "percentile-bootstrap 95 % confidence intervals (2000 resamples of the rounds); the "
        "A/A control is a second no-profiler phase in the same rotation.",
        "",
        "| condition | own-core ratio [95 % CI] | slowdown [95 % CI] | paused (beyond no "
        "profiler) [95 % CI] | CPU per iteration | wall clock | py-spy CPU (one core) | "
        "blocking reads per phase (calibration / native) | pause per blocking read (ms, "
        "approx.) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdict = None
    for cond, kinds in ovh["ratios"].items():
        own = kinds["own_core_iter_s"]
        if not own:
            continue
        med, lo, hi = bootstrap_median_ci(own)
        config = configs[cond]
        pause = [g[config]["stopped_share"] - g["off"]["stopped_share"]
                 for g in per_round if config in g]
        pm, pl, ph = bootstrap_median_ci(pause) if pause else (0.0, 0.0, 0.0)
        cpu = ovh["pyspy_core_share"].get(cond, [])
        rd = ovh["readers"].get(cond, [])
        # stopped time over the attached span (settle + phase) / blocking reads in that span
        per_read = [g[config]["stopped_share"] * (args.phase_seconds + args.settle) * 1e3 / n
                    for g, r in zip([g for g in ovh["per_round"] if config in g], rd,
                                    strict=False)
                    if (n := r["calibration_reads"] + r["native_reads"])]
        reads = (f"{statistics.median(r['calibration_reads'] for r in rd):.0f} / "
                 f"{statistics.median(r['native_reads'] for r in rd):.0f}"
                 + ("" if all(r["native_started"] for r in rd) else
                    f" (native started in {sum(r['native_started'] for r in rd)} of {len(rd)})")
                 if rd else "n/a")
        name = cond if config == "none" else (
            f"StackSampler {cond} + {CALIBRATION_HZ} Hz calibration"
            + (f" + {NATIVE_HZ} Hz native" if args.train else ""))
        lines.append(
            f"| {name} | {med:.4f} [{lo:.4f}, {hi:.4f}] | {100 * (1 - med):+.2f} % "
            f"[{100 * (1 - hi):+.2f}, {100 * (1 - lo):+.2f}] | {100 * pm:.2f} % "
            f"[{100 * pl:.2f}, {100 * ph:.2f}] | {_med(kinds['cpu_iter_s'])} | "
            f"{_med(kinds['wall_iter_s'])} | {_pct(statistics.median(cpu)) if cpu else 'n/a'} "
            f"| {reads} | {f'{statistics.median(per_read):.1f}' if per_read else 'n/a'} |")
        if cond != _label("none"):
            verdict = (cond, 1 - med, 1 - hi, 1 - lo)
    off_share = statistics.median(ovh["off_cpu_share"]) if ovh["off_cpu_share"] else float("nan")
    lines += ["", f"Without a profiler the target got {_pct(off_share)} of a CPU (median); "
              f"baseline {statistics.median(ovh['off_it_per_s']):.2f} it/s wall clock. The "
              "pause per blocking read is the stopped time over the attached span divided by "
              "the blocking reads counted in it (approximate: the counts cover whole phases). "
              "A blocking read stops the target until py-spy has read it, and py-spy needs a "
              "CPU to do so: where the cores are busy with other jobs, the target stays stopped "
              "while py-spy waits for one, so the paused share here grows with the machine's "
              "load (the *own core* correction removes the target's own waiting, not py-spy's)."]
    if verdict is not None:
        cond, slow, slow_lo, slow_hi = verdict
        shown = "shown" if slow_hi <= 0.01 else "NOT shown"
        lines += ["", f"Goal (issue 14): target slowdown in attach mode ≤ 1 % (own-core figure). "
                  f"{cond}: {100 * slow:+.2f} % (95 % CI {100 * slow_lo:+.2f} … "
                  f"{100 * slow_hi:+.2f} %) — ≤ 1 % {shown} (CI upper bound)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["loop", "reference", "torchprof"])
    ap.add_argument("--hooks", action="store_true")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--block", type=int, default=10)
    from wattlens.profiler.stacks.sampler import (
        DEFAULT_NONBLOCKING,
        DEFAULT_RATE_HZ,
        DEFAULT_WINDOW_S,
    )

    default_config = f"{int(DEFAULT_RATE_HZ)}" + (":nb" if DEFAULT_NONBLOCKING else "")
    ap.add_argument("--window", type=float, default=DEFAULT_WINDOW_S)
    ap.add_argument(
        "--acc-configs",
        default=default_config,
        help='comma-separated rates, ":nb" for --nonblocking (e.g. "20,100:nb"); default: '
        "the StackSampler defaults",
    )
    ap.add_argument(
        "--overhead-configs",
        default=f"none,{default_config}",
        help='as --acc-configs, plus "none" (A/A control); default: "none," + the defaults',
    )
    ap.add_argument("--acc-seconds", type=float, default=40.0)
    ap.add_argument("--phase-seconds", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--suite", action="store_true",
                    help="same-run comparison on gpt2, llama, bert and a training loop only "
                    "(writes benchmarks/results/stacks_arch.md)")
    ap.add_argument("--archs", default=",".join(ARCHS), help='"" for the training loop only')
    ap.add_argument("--suite-output", type=Path, default=HERE / "results" / "stacks_arch.md")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the overhead conditions, with bootstrap CIs (issue 14's own-core "
                    "figure); writes benchmarks/results/stacks_overhead_<arch>[_train].md")
    ap.add_argument("--arch", choices=ARCHS, default="gpt2", help="--overhead-only's model")
    ap.add_argument("--train", action="store_true", help="--overhead-only: a training loop")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="--overhead-only: rewrite the table of a saved run (its .json)")
    ap.add_argument("--settle", type=float, default=None,
                    help="--overhead-only: seconds attached before measuring (default 0.5; "
                    "with --train one window + 1.5 s, so the native reads have started)")
    ap.add_argument("--native-hz", type=int, default=None,
                    help="native (backward) reads per second in --suite (default: the sampler's)")
    ap.add_argument("--calibration-ab", action="store_true",
                    help="calibration on and off side by side on the Llama-style decoder, "
                    "--runs times (writes benchmarks/results/stacks_calibration.md)")
    ap.add_argument("--backward-reference", action="store_true",
                    help="the backward reference timer against torch.profiler per autograd node "
                    "(writes benchmarks/results/backward_reference.md)")
    ap.add_argument("--cal-vocab", type=int, default=32000,
                    help="vocabulary of the --calibration-ab model (default 32000, LlamaConfig's "
                    "own default: the LM head is the long call of the issue)")
    args = ap.parse_args(argv)
    args.argv = argv

    if args.worker == "loop":
        worker_loop(args.seconds, args.hooks)
        return 0
    if args.worker == "reference":
        worker_reference(args.seconds)
        return 0
    if args.worker == "torchprof":
        worker_torch_profiler(args.rounds, args.block)
        return 0

    if args.backward_reference:
        load0 = os.getloadavg()[0]
        ref = measure_backward_reference(args.runs * 2, 5)
        md = backward_reference_markdown(ref, (load0, os.getloadavg()[0]))
        path = HERE / "results" / "backward_reference.md"
        path.write_text(md + "\n", encoding="utf-8")
        print(md)
        return 0
    if args.calibration_ab:
        load0 = os.getloadavg()[0]
        runs = measure_calibration(args.runs, args.acc_seconds, args.window, args.cal_vocab)
        md = calibration_markdown(runs, args, (load0, os.getloadavg()[0]))
        path = HERE / "results" / "stacks_calibration.md"
        path.write_text(md + "\n", encoding="utf-8")
        (path.with_suffix(".json")).write_text(json.dumps(runs, indent=1), encoding="utf-8")
        print(md)
        return 0
    if args.suite:
        load0 = os.getloadavg()[0]
        suite = measure_suite([a for a in args.archs.split(",") if a], args.runs,
                              args.acc_seconds, args.train_seconds, args.window, args.native_hz)
        md = suite_markdown(suite, args, (load0, os.getloadavg()[0]))
        path = args.suite_output
        path.write_text(md + "\n", encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(suite, indent=1, default=str),
                                             encoding="utf-8")
        print(md)
        return 0
    if args.overhead_only and args.from_json is not None:  # rewrite a saved run's table
        path = args.from_json
        saved = json.loads(path.read_text(encoding="utf-8"))
        args = ap.parse_args(saved["argv"])  # the run's own options (model, phase, rounds)
        args.settle, args.argv = saved["settle_s"], saved["argv"]
        md = overhead_only_markdown(saved, args, tuple(saved["loads"]))
        path.with_suffix(".md").write_text(md, encoding="utf-8")
        print(md)
        return 0
    if args.overhead_only:
        os.environ["WATTLENS_BENCH_ARCH"] = args.arch  # the loop child builds this model
        if args.train:
            os.environ["WATTLENS_BENCH_TRAIN"] = "1"
        if args.settle is None:
            args.settle = args.window + 1.5 if args.train else 0.5
        load0 = os.getloadavg()[0]
        ovh = measure_overhead(args.rounds, args.phase_seconds,
                               args.overhead_configs.split(","), args.window, args.settle)
        ovh.update(settle_s=args.settle, loads=[load0, os.getloadavg()[0]], argv=args.argv,
                   run_at=time.strftime("%Y-%m-%d %H:%M"))
        md = overhead_only_markdown(ovh, args, (load0, os.getloadavg()[0]))
        out = args.output if args.output != RESULTS else (
            HERE / "results" / f"stacks_overhead_{args.arch}{'_train' if args.train else ''}.md")
        out.write_text(md, encoding="utf-8")
        (out.with_suffix(".json")).write_text(json.dumps(ovh, default=str), encoding="utf-8")
        print(md)
        return 0
    if args.quick:
        args.rounds, args.acc_seconds, args.phase_seconds = 4, 15.0, 4.0
    print("accuracy ...", file=sys.stderr)
    acc = measure_accuracy(args.acc_configs.split(","), args.acc_seconds, args.window)
    print("overhead (StackSampler) ...", file=sys.stderr)
    ovh = measure_overhead(
        args.rounds, args.phase_seconds, args.overhead_configs.split(","), args.window
    )
    print("overhead (torch.profiler) ...", file=sys.stderr)
    tp = measure_torch_profiler(args.rounds, args.block)
    md = write_markdown(acc, ovh, tp, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(md + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
