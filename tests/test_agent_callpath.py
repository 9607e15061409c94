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
