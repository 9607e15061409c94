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
