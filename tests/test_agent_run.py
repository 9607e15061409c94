"""The agent end to end: real child Python processes under launch(), real small models.

The child scripts are unchanged user code (no wattlens import) unless a test is about the
explicit API. Children use one torch thread: the test machine is small and shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wattlens.profiler.agentlink import OUTSIDE_MODULES, AgentServer
from wattlens.profiler.launch import launch

from .test_agent_link import Collector

POWER_W = 25.0


def energy_between(t0_ns: int, t1_ns: int) -> float:
    """A constant-power stand-in for the sampler (the hardware boundary)."""
    return (t1_ns - t0_ns) * 1e-9 * POWER_W


def run_child(tmp_path: Path, script: str, *, python: str = sys.executable, timeout_s: float = 300,
              env_extra: dict | None = None, on_server=None, expect_rc: int | None = 0):
    """Run ``script`` under launch(); return (completed output, collector)."""
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(script))
    sink = Collector()
    server = AgentServer(energy_between=energy_between, energy_wait_s=1.0, **sink.kwargs())
    if on_server is not None:
        on_server(server, sink)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", **(env_extra or {}))
    try:
        proc = launch([python, str(path)], server=server, env=env, cwd=str(tmp_path),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"child timed out; stderr:\n{err[-3000:]}")
    finally:
        server.stop()
    if expect_rc is not None:
        assert proc.returncode == expect_rc, f"child failed ({proc.returncode}):\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), sink


def assert_conserved(sink: Collector) -> None:
    assert sink.layers, "no layer costs arrived"
    for rows in sink.layers:
        t0, t1 = rows[0].window_start_ns, rows[0].window_end_ns
        assert all((r.window_start_ns, r.window_end_ns) == (t0, t1) for r in rows)
        assert sum(r.self_energy_j for r in rows) == pytest.approx(energy_between(t0, t1), rel=1e-9)
        assert rows[-1].path == OUTSIDE_MODULES and rows[-1].granularity == "bucket"


def rows_for(sink: Collector, path: str, phase: str = "forward") -> list:
    return [r for rows in sink.layers for r in rows if r.path == path and r.phase == phase]


GPT2 = """
    import torch
    torch.set_num_threads(1)
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256,
                                       n_positions=64))
"""


def test_gpt2_inference_loop_unchanged_script(tmp_path):
    out, sink = run_child(tmp_path, GPT2 + """
    model.eval()
    x = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        for _ in range(10):
            model(input_ids=x)
    print("ok")
    """)
    assert out.stdout.strip() == "ok"
    assert "wattlens agent" not in out.stderr
    assert [s.step for s in sink.steps] == list(range(10))
    assert all((s.samples, s.tokens) == (4, 128) for s in sink.steps)
    assert all(s.energy_j == pytest.approx(energy_between(s.t_start_ns, s.t_end_ns)) for s in sink.steps)
    assert all(a.t_end_ns == b.t_start_ns for a, b in zip(sink.steps, sink.steps[1:], strict=False))
    fc = rows_for(sink, "transformer.h.0.mlp.c_fc")
    assert fc and all(r.time_s > 0 and r.self_time_s > 0 for r in fc)
    assert all(r.granularity == "instance" and r.method == "agent-timing" for r in fc)
    # c_fc: (4*32 tokens x 64) @ (64 x 256) = 2*128*64*256 FLOPs per call, one call per step
    for r in fc:
        n_steps = sum(r.window_start_ns <= s.t_start_ns < r.window_end_ns for s in sink.steps)
        assert r.flops == 2 * 128 * 64 * 256 * n_steps
    assert fc[0].params == 64 * 256 + 256
    root = rows_for(sink, "")
    assert all(r.time_s >= r.self_time_s for r in root)
    assert_conserved(sink)
    kinds = [e.kind for e in sink.events]
    assert "flops" in kinds and "layers-skipped" in kinds  # the FLOP-counted step is left out
    hello = sink.hellos[-1]
    assert hello["model_classes"] == ["GPT2LMHeadModel"]
    assert hello["device"] == "cpu" and hello["torch"].startswith("2.")
    assert hello["param_counts"]["GPT2LMHeadModel"] == sum(
        m["params"] for m in hello["models"][0]["modules"] if m["path"] == "")
    modules = {m["path"]: m for m in hello["models"][0]["modules"]}
    assert modules["transformer.h.0.mlp.c_fc"]["class"] == "Conv1D"
    assert modules["transformer.h.0.mlp.c_fc"]["bytes"] == (64 * 256 + 256) * 4


def test_gpt2_training_loop_steps_by_optimizer_with_backward(tmp_path):
    out, sink = run_child(tmp_path, GPT2 + """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 16))
    for _ in range(6):
        for _micro in range(2):  # gradient accumulation: two forwards per optimizer step
            model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    print("ok")
    """)
    assert out.stdout.strip() == "ok"
    assert [s.step for s in sink.steps] == list(range(6))
    assert all((s.samples, s.tokens) == (4, 64) for s in sink.steps)  # 2 micro-batches of 2 x 16
    bw = rows_for(sink, "transformer.h.0.mlp.c_fc", "backward")
    assert bw and all(r.time_s > 0 and r.flops is None for r in bw)
    block = rows_for(sink, "transformer.h.0", "backward")
    assert block and all(r.time_s >= r.self_time_s for r in block)
    opt = rows_for(sink, "optimizer", "")  # AdamW's step, timed: the bucket attach mode names
    assert opt and all(r.granularity == "bucket" and r.self_time_s > 0 for r in opt)
    assert_conserved(sink)


PLAIN = """
    import os, time, torch
    torch.set_num_threads(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(16, 64)
            self.act = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(64, 4)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    model = Net().eval()
    x = torch.randn(8, 16)
"""


def test_plain_module_loss_root_and_fork(tmp_path):
    out, sink = run_child(tmp_path, PLAIN + """
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        for i in range(6):
            y = model(x)
            loss_fn(y, torch.zeros_like(y))
            time.sleep(0.12)  # steps longer than a window (at least 100 ms): one message per step
            if i == 2:
                pid = os.fork()  # a forked worker must not write on the parent's connection
                if pid == 0:
                    model(x)
                    os._exit(0)
                os.waitpid(pid, 0)
    print("ok")
    """, env_extra={"WATTLENS_AGENT_FLOPS": "force"})
    assert out.stdout.strip() == "ok"
    assert [s.step for s in sink.steps] == list(range(6))
    assert all((s.samples, s.tokens) == (8, None) for s in sink.steps)
    assert len(sink.hellos) >= 1 and {h["pid"] for h in sink.hellos} == {sink.hellos[0]["pid"]}
    assert sink.hellos[0]["depth"] == 0
    assert rows_for(sink, "fc1") and rows_for(sink, "fc2") and rows_for(sink, "act")
    loss_rows = rows_for(sink, "@MSELoss")
    assert loss_rows and all(r.params is None for r in loss_rows)
    assert rows_for(sink, "fc1")[0].flops == 2 * 8 * 16 * 64
    assert_conserved(sink)
    assert len(sink.layers) >= 4  # windows of one step each


def test_explicit_api_knob_round_trip_and_callback(tmp_path):
    def on_server(server, sink):
        def on_event(ev):
            sink._add(sink.events, ev)
            if ev.kind == "knob" and ev.data["name"] == "batch_size":
                server.set_knob("batch_size", "eight")  # wrong kind: refused by the target
                server.set_knob("batch_size", 8)

        server._on_event = on_event

    out, sink = run_child(tmp_path, PLAIN + """
    import sys
    from wattlens.profiler import agent
    assert agent.is_active()
    assert "_wattlens_agent" in sys.modules  # the bootstrap copy is the one running
    assert agent.watch(model) is model
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        bs = agent.knob("batch_size", 32)
        seen.append(bs)
        model(torch.randn(bs, 16))
        agent.step(samples=bs, tokens=None)
        if bs == 8 and seen.count(8) >= 2:
            break
        time.sleep(0.02)
    cb = agent.WattlensCallback()
    model(torch.randn(3, 16))
    cb.on_step_end(None, None, None)  # what transformers' Trainer calls after each update
    print("final", seen[-1], len(seen))
    """, on_server=on_server)
    words = out.stdout.split()
    assert words[:2] == ["final", "8"], (out.stderr, [(e.kind, e.message) for e in sink.events])
    n_loop = int(words[2])
    samples = [s.samples for s in sink.steps]
    assert samples[0] == 32 and samples[n_loop - 1] == 8
    assert samples[n_loop] == 3  # the callback's step: counted by the agent from the input
    assert len(sink.steps) == n_loop + 1
    kinds = [e.kind for e in sink.events]
    assert "knob" in kinds and "knob-set" in kinds and "command-refused" in kinds
    refused = sink.events[kinds.index("command-refused")]
    assert "takes int" in refused.message
    assert "wattlens agent: refused command 'set_knob'" in out.stderr


def test_target_crash_keeps_data_and_reports_disconnect(tmp_path):
    out, sink = run_child(tmp_path, PLAIN + """
    import signal
    with torch.no_grad():
        for i in range(100):
            model(x)
            time.sleep(0.08)
            if i == 5:
                os.kill(os.getpid(), signal.SIGKILL)
    """, expect_rc=-9)
    assert len(sink.steps) >= 3
    assert [s.step for s in sink.steps] == list(range(len(sink.steps)))
    ev = [e for e in sink.events if e.kind == "agent-disconnected"]
    assert len(ev) == 1 and ev[0].data["clean"] is False
    assert "crashed" in ev[0].message
    assert rows_for(sink, "fc1")


def test_agent_works_where_wattlens_is_not_installed(tmp_path):
    """A separate venv that sees torch but not wattlens: only the PYTHONPATH bootstrap."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    site = next((venv / "lib").glob("python*/site-packages"))
    torch_site = Path(__import__("torch").__file__).parent.parent
    # A plain path line adds torch's site-packages without running its .pth files, so the
    # editable wattlens finder installed there stays out.
    (site / "borrowed.pth").write_text(str(torch_site) + "\n")
    out, sink = run_child(tmp_path, """
    import sys
    try:
        import wattlens  # noqa: F401
        print("wattlens importable")
    except ImportError:
        print("no wattlens")
    assert "_wattlens_agent" in sys.modules
    """ + PLAIN + """
    with torch.no_grad():
        for _ in range(4):
            model(x)
    """, python=str(venv / "bin" / "python"))
    assert out.stdout.strip() == "no wattlens"
    assert [s.step for s in sink.steps] == [0, 1, 2, 3]
    assert rows_for(sink, "fc1")


def test_no_torch_import_sitecustomize_chain_and_child_depth(tmp_path):
    other = tmp_path / "other_site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("MARK = 'chained'\n")
    out, sink = run_child(tmp_path, """
    import subprocess, sys
    import sitecustomize
    print(sitecustomize.MARK, "torch" in sys.modules, "_wattlens_agent" in sys.modules)
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # a Python child of the target
    """, env_extra={"PYTHONPATH": str(other)})
    assert out.stdout.split() == ["chained", "False", "True"]
    assert sink.steps == [] and sink.layers == []
    by_pid = {h["pid"]: h for h in sink.hellos}
    assert sorted(h["depth"] for h in by_pid.values()) == [0, 1]
    assert [e.kind for e in sink.events] == ["agent-disconnected"] * 2
    assert all(e.data["clean"] is True for e in sink.events)


def test_agent_failures_never_break_the_program(tmp_path):
    # 1. No wattlens listening: one line on stderr, the script runs.
    path = tmp_path / "s.py"
    path.write_text("print('fine')\n")
    from wattlens.profiler.agentlink import BOOTSTRAP_DIR

    env = dict(os.environ, PYTHONPATH=str(BOOTSTRAP_DIR), WATTLENS_AGENT_TOKEN="x" * 64,
               WATTLENS_AGENT_SOCKET=str(tmp_path / "missing.sock"))
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "fine\n"
    assert done.stderr.count("wattlens agent: could not connect") == 1
    # 2. A model whose module tree cannot be walked: the agent goes quiet, the forward works.
    out, sink = run_child(tmp_path, PLAIN + """
    class Odd(Net):
        def named_modules(self, *a, **k):
            raise RuntimeError("no walking here")

    odd = Odd().eval()
    with torch.no_grad():
        for _ in range(3):
            y = odd(x)
    print("ok", tuple(y.shape))
    """)
    assert out.stdout.strip() == "ok (8, 4)"
    assert out.stderr.count("wattlens agent: internal error") == 1
    assert "agent-error" in [e.kind for e in sink.events]


def test_timestamps_are_host_monotonic(tmp_path):
    before = time.monotonic_ns()
    _, sink = run_child(tmp_path, PLAIN + """
    with torch.no_grad():
        model(x); model(x)
    """)
    after = time.monotonic_ns()
    assert sink.steps and all(before < s.t_start_ns <= s.t_end_ns < after for s in sink.steps)
