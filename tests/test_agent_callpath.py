"""How the agent times module calls: wrapping nn.Module.__call__ (default) or global hooks.
Both give the same rows; the wrapper is removed cleanly and never undoes someone else's patch."""

from __future__ import annotations

import pytest
import torch

from tests.test_agent_tracker import Net, Sink
from wattlens.profiler.agent.tracker import Tracker


def run(call_path: str) -> tuple[Tracker, Sink, list]:
    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=0, count_flops="off",
                      call_path=call_path)
    tracker.install()
    net = Net().eval()
    try:
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(8, 16))
        tracker.finish()
    finally:
        tracker.uninstall()
    return tracker, sink, failures


@pytest.mark.parametrize("call_path", ["wrap", "hooks"])
def test_both_paths_time_every_instance(call_path):
    _, sink, failures = run(call_path)
    assert failures == []
    assert [s["step"] for s in sink.steps()] == [0, 1, 2]
    for path in ("", "blocks.0", "blocks.0.fc", "blocks.1.act", "head"):
        rows = sink.rows(path)
        assert rows and all(r["calls"] >= 1 and r["time_ns"] > 0 for r in rows), path


def test_wrapper_is_removed_and_leaves_other_patches_alone():
    original = torch.nn.Module.__call__
    tracker = Tracker(torch, Sink(), lambda exc: None, count_flops="off")
    tracker.install()
    assert torch.nn.Module.__call__ is not original
    tracker.uninstall()
    assert torch.nn.Module.__call__ is original

    tracker.install()
    ours = torch.nn.Module.__call__

    def someone_elses(module, *args, **kwargs):
        return ours(module, *args, **kwargs)

    torch.nn.Module.__call__ = someone_elses
    try:
        tracker.uninstall()  # must not put the original back over someone else's patch
        assert torch.nn.Module.__call__ is someone_elses
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).shape == (1, 2)  # still callable, off
    finally:
        torch.nn.Module.__call__ = original


def test_a_forward_that_raises_goes_through_the_wrapper_untouched():
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=0, count_flops="off")
    tracker.install()
    try:
        net = Net().eval()
        with torch.no_grad():
            net(torch.randn(2, 16))
            with pytest.raises(ValueError, match="boom"):
                Boom()(torch.ones(1))
            net(torch.randn(2, 16))
        assert not tracker._tls.stack  # the raising call was popped
    finally:
        tracker.uninstall()
    assert failures == []


def _rows_with_clock(call_path: str, monkeypatch) -> dict:
    """One window over 4 forwards, timed by a clock that ticks 1000 ns per read: every call
    after a module's first in the window takes the wrapper's inline fast path."""
    from wattlens.profiler.agent import tracker as tracker_mod

    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(tracker_mod, "_perf_ns", lambda: next(ticks))
    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=10**15, count_flops="off",
                      call_path=call_path)
    tracker.install()
    net = Net().eval()
    try:
        with torch.no_grad():
            for _ in range(4):
                net(torch.randn(8, 16))
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    return {(r["path"], r["phase"]): (r["time_ns"], r["self_time_ns"], r["calls"])
            for m in sink.msgs if m["type"] == "layers" for r in m["rows"]}


def test_fast_path_gives_exactly_the_hook_paths_times(monkeypatch):
    wrap = _rows_with_clock("wrap", monkeypatch)
    hooks = _rows_with_clock("hooks", monkeypatch)
    assert wrap == hooks  # same clock reads, same per-instance inclusive and self times
    incl, self_ns, calls = wrap[("blocks.0", "forward")]
    assert calls == 4 and 0 < self_ns < incl


def test_a_raise_on_the_fast_path_pops_its_frame_and_timing_goes_on():
    class Flaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.fail = False

        def forward(self, x):
            if self.fail:
                raise ValueError("boom")
            return self.fc(x)

    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=10**15, count_flops="off")
    tracker.install()
    model = torch.nn.Sequential(Flaky(), torch.nn.ReLU())
    try:
        with torch.no_grad():
            model(torch.ones(1, 4))
            model[0].fail = True
            with pytest.raises(ValueError, match="boom"):
                model(torch.ones(1, 4))  # Flaky is already counted this window: the fast path
            assert not tracker._tls.stack
            model[0].fail = False
            model(torch.ones(1, 4))
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert sum(r["calls"] for r in sink.rows("0")) == 3 and sum(r["calls"] for r in sink.rows("1")) == 2


class _Probe(torch.nn.Module):
    """Notes which function called its forward, and with what."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.callers: list[str] = []

    def forward(self, x, scale=1.0):
        import sys

        self.callers.append(sys._getframe(1).f_code.co_name)
        return self.fc(x) * scale


def _installed():
    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=10**15, count_flops="off")
    tracker.install()
    return tracker, sink, failures


def _warm(model, x) -> None:
    """Two calls: the first names the modules (general path), the second takes the fast path."""
    model(x)
    model(x)


def test_without_hooks_the_wrapper_calls_forward_itself():
    tracker, sink, failures = _installed()
    outer = torch.nn.Sequential(_Probe())
    try:
        with torch.no_grad():
            _warm(outer, torch.ones(1, 4))
            outer[0].callers.clear()
            out = outer[0](torch.ones(1, 4), scale=2.0)  # keyword arguments pass through
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert outer[0].callers == ["__call__"]  # ours, not torch's _call_impl
    with torch.no_grad():
        assert torch.equal(out, outer[0].fc(torch.ones(1, 4)) * 2.0)
    assert sum(r["calls"] for r in sink.rows("0") if r["phase"] == "forward") == 3


@pytest.mark.parametrize("kind", ["forward_pre", "forward_pre_kwargs", "forward", "full_backward",
                                  "global_forward_pre", "global_forward", "global_full_backward"])
def test_every_kind_of_hook_still_runs_and_its_module_is_still_timed(kind):
    tracker, sink, failures = _installed()
    model = torch.nn.Sequential(_Probe(), torch.nn.ReLU())
    fired: list[str] = []
    x = torch.ones(2, 4, requires_grad=True)
    try:
        _warm(model, x)  # the hook is added once the module is on the fast path
        probe = model[0]
        if kind == "forward_pre":
            handle = probe.register_forward_pre_hook(lambda m, a: fired.append(kind))
        elif kind == "forward_pre_kwargs":
            handle = probe.register_forward_pre_hook(
                lambda m, a, k: (fired.append(kind), (a, {**k, "scale": 3.0}))[1], with_kwargs=True)
        elif kind == "forward":
            handle = probe.register_forward_hook(lambda m, a, o: fired.append(kind))
        elif kind == "full_backward":
            handle = probe.register_full_backward_hook(lambda m, gi, go: fired.append(kind))
        elif kind == "global_forward_pre":
            handle = torch.nn.modules.module.register_module_forward_pre_hook(
                lambda m, a: fired.append(kind) if m is probe else None)
        elif kind == "global_forward":
            handle = torch.nn.modules.module.register_module_forward_hook(
                lambda m, a, o: fired.append(kind) if m is probe else None)
        else:
            handle = torch.nn.modules.module.register_module_full_backward_hook(
                lambda m, gi, go: fired.append(kind) if m is probe else None)
        try:
            probe.callers.clear()
            out = model(x)
            out.sum().backward()
        finally:
            handle.remove()
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert fired == [kind]
    assert len(probe.callers) == 1 and probe.callers[0] != "__call__"  # torch's path runs hooks
    if kind == "forward_pre_kwargs":  # what the hook changed reached forward
        assert torch.allclose(out, torch.relu(probe.fc(torch.ones(2, 4)) * 3.0))
    assert sum(r["calls"] for r in sink.rows("0") if r["phase"] == "forward") == 3


def test_a_compiled_module_and_a_jit_trace_keep_torchs_path():
    tracker, sink, failures = _installed()
    model = torch.nn.Sequential(_Probe())
    try:
        with torch.no_grad():
            _warm(model, torch.ones(1, 4))
            probe = model[0]
            # what Module.compile() sets: calls must go to it, not to forward
            probe._compiled_call_impl = lambda *a, **k: torch.zeros(1, 4)
            assert torch.equal(model(torch.ones(1, 4)), torch.zeros(1, 4))
            probe._compiled_call_impl = None
            probe.callers.clear()
            traced = torch.jit.trace(model, torch.ones(1, 4), check_trace=False)
            assert probe.callers == ["_slow_forward"]  # the tracer's path, not ours
            assert torch.allclose(traced(torch.ones(1, 4)), model(torch.ones(1, 4)))
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []


def test_a_traced_function_takes_torchs_path_and_traced_calls_are_not_timed():
    """torch.jit.trace of a function (not a module) that calls a module: the tracer's
    ``_slow_forward`` runs, and the calls made while tracing are neither timed nor steps
    (tracing is not a real forward)."""
    tracker, sink, failures = _installed()
    model = torch.nn.Sequential(_Probe()).requires_grad_(False)  # a function's constants
    try:
        with torch.no_grad():
            _warm(model, torch.ones(1, 4))
            probe = model[0]
            probe.callers.clear()
            traced = torch.jit.trace(lambda x: model(x) * 2.0, torch.ones(1, 4), check_trace=False)
            assert probe.callers == ["_slow_forward"]
            assert torch.allclose(traced(torch.ones(1, 4)), model(torch.ones(1, 4)) * 2.0)
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert [s["step"] for s in sink.steps()] == [0, 1, 2]  # the two warm calls and the last one
    assert sum(r["calls"] for r in sink.rows("0") if r["phase"] == "forward") == 3


class _TracesItsChild(torch.nn.Module):
    """Traces its submodule inside its own forward (the thread's call stack is not empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        self.graph_scopes: list[str] = []

    def forward(self, x):
        traced = torch.jit.trace(self.sub, x, check_trace=False)
        self.graph_scopes = [line.split("scope: ")[1].strip()
                             for line in str(traced.inlined_graph).splitlines()
                             if "scope: " in line]
        return self.sub(x)


def _scopes_traced_inside_a_forward() -> list[str]:
    model = torch.nn.Sequential(_TracesItsChild())
    with torch.no_grad():
        model(torch.ones(1, 4))
        model(torch.ones(1, 4))  # the second time every module is named: the fast path
    return model[0].graph_scopes


def test_a_trace_started_inside_a_forward_records_the_same_scopes_as_without_the_agent():
    without = _scopes_traced_inside_a_forward()
    tracker, sink, failures = _installed()
    try:
        under = _scopes_traced_inside_a_forward()
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert without and under == without  # torch's _slow_forward ran for the traced module


@pytest.mark.parametrize("call_path", ["wrap", "hooks"])
def test_a_frame_left_by_an_uninstall_mid_forward_does_not_hide_a_later_trace(call_path):
    """A forward that switches the agent off leaves its callers' frames behind (their exits
    are skipped); installing again starts clean, so a trace from the top is still seen as one:
    torch's path, untimed, on both call paths."""
    sink, failures = Sink(), []
    tracker = Tracker(torch, sink, failures.append, window_ns=10**15, count_flops="off",
                      call_path=call_path)

    class SwitchesOff(torch.nn.Module):
        def forward(self, x):
            tracker.uninstall()
            return x

    tracker.install()
    try:
        with torch.no_grad():
            torch.nn.Sequential(SwitchesOff())(torch.ones(1, 4))
        tracker.install()
        model = torch.nn.Sequential(_Probe()).requires_grad_(False)
        with torch.no_grad():
            _warm(model, torch.ones(1, 4))
            model[0].callers.clear()
            torch.jit.trace(model, torch.ones(1, 4), check_trace=False)
        assert model[0].callers == ["_slow_forward"]
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert sum(r["calls"] for r in sink.rows("0") if r["phase"] == "forward") == 2  # the warm ones


def test_a_module_without_torchs_hook_dicts_fails_as_it_does_without_the_agent():
    """The direct path reads a module's hook dicts from its ``__dict__``; one that lacks them
    (deleted, or never set up) goes through torch's own path and gets torch's own error."""
    def broken() -> torch.nn.Sequential:
        model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        del model[0]._forward_hooks
        return model

    with pytest.raises(AttributeError) as without:
        broken()(torch.ones(1, 2))
    tracker, sink, failures = _installed()
    try:
        model = broken()
        with torch.no_grad():
            model[0]._forward_hooks = {}
            _warm(model, torch.ones(1, 2))  # named while whole: the next call is on the fast path
            del model[0]._forward_hooks
            with pytest.raises(AttributeError) as under:
                model(torch.ones(1, 2))
    finally:
        tracker.uninstall()
    assert failures == [] and str(under.value) == str(without.value)


def test_a_class_with_its_own_call_impl_keeps_it():
    class Custom(torch.nn.Linear):
        def _call_impl(self, *args, **kwargs):
            return super()._call_impl(*args, **kwargs) + 1.0

    tracker, sink, failures = _installed()
    model = torch.nn.Sequential(Custom(2, 2))
    try:
        with torch.no_grad():
            _warm(model, torch.ones(1, 2))
            got = model(torch.ones(1, 2))
            want = torch.nn.functional.linear(torch.ones(1, 2), model[0].weight, model[0].bias) + 1.0
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == [] and torch.allclose(got, want)


def test_a_transformers_model_gives_the_same_outputs_and_gradients_under_the_agent():
    """GPT-2 from transformers calls its modules with many keyword arguments, overrides
    ``__call__`` in its blocks, and records hidden states and attentions with hooks when asked:
    under the agent (most calls take the direct path) every output and gradient is identical."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=16, attn_pdrop=0.0, embd_pdrop=0.0,
                                       resid_pdrop=0.0, attn_implementation="eager"))
    ids = torch.randint(0, 64, (2, 8))

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model.zero_grad()
        out = model(input_ids=ids, labels=ids, output_hidden_states=True, output_attentions=True)
        out.loss.backward()
        tensors = [out.loss, out.logits, *out.hidden_states, *out.attentions]
        return [t.detach().clone() for t in tensors], [p.grad.clone() for p in model.parameters()]

    want_out, want_grad = run()
    tracker, sink, failures = _installed()
    try:
        run()  # names every module (general path); the calls after it take the direct path
        got_out, got_grad = run()
        tracker.finish()
    finally:
        tracker.uninstall()
    assert failures == []
    assert len(got_out) == len(want_out) == 2 + 3 + 2
    assert all(torch.equal(a, b) for a, b in zip(got_out, want_out, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(got_grad, want_grad, strict=True))
    assert sink.rows("transformer.h.1.mlp.c_fc")  # and the modules were timed


PROFILER_WITH_STACK = """
import torch
from wattlens.profiler.agent.tracker import Tracker

failures = []
tracker = Tracker(torch, lambda msg: None, failures.append, count_flops="off")
tracker.install()
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
with torch.no_grad():
    model(torch.ones(1, 4))  # named: the next calls take the wrapper's fast path
    with torch.profiler.profile(with_stack=True) as prof:
        model(torch.ones(1, 4))
tracker.uninstall()
print(sum(e.name.startswith("nn.Module:") for e in prof.events()), failures)
"""


def test_torch_profiler_with_stack_runs_in_a_program_under_the_agent():
    """torch.profiler's stack recorder reads the local ``self`` of any nn.Module.__call__ frame:
    the wrapper's first parameter named otherwise crashed the user's program (a segfault)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PROFILER_WITH_STACK], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    n_module_events, failures = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(n_module_events) >= 2 and failures == "[]"  # Sequential and Linear, at least
