"""StackSampler attached to real child processes running real (small) models on CPU.

Each test starts a child (tests/fixtures/pyspy/workload.py), waits for its "ready" line, attaches,
samples a few seconds in short windows and checks the rows. Energy comes from a stand-in for the
power side (the hardware boundary): a constant 40 W over each window's own time span.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from wattlens.profiler.stacks.parse import (
    BUCKET_BACKWARD,
    BUCKET_DATA,
    BUCKET_IDLE,
    BUCKET_OPTIMIZER,
)
from wattlens.profiler.stacks.sampler import StackSampler, find_pyspy

WORKLOAD = Path(__file__).parent / "fixtures" / "pyspy" / "workload.py"
POWER_W = 40.0

pytestmark = pytest.mark.skipif(find_pyspy() is None, reason="py-spy is not installed")


def sample_child(mode: str, sample_s: float, *, window_s: float = 1.0, rate_hz: float = 100):
    child = subprocess.Popen(
        [sys.executable, str(WORKLOAD), mode, "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    windows: list = []
    asked: list[tuple[int, int]] = []

    def energy_between(start_ns: int, end_ns: int) -> float:
        asked.append((start_ns, end_ns))
        return POWER_W * (end_ns - start_ns) / 1e9

    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        sampler = StackSampler(
            child.pid,
            rate_hz=rate_hz,
            window_s=window_s,
            on_window=windows.append,
            energy_between=energy_between,
        )
        sampler.start()
        assert sampler.available, sampler.reason
        time.sleep(sample_s)
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert windows, "no window was produced"
    return windows, asked, sampler


def paths_of(windows) -> set[str]:
    return {r.path for rows in windows for r in rows}


def test_transformers_models_windows_paths_and_energy_conservation():
    windows, asked, sampler = sample_child("hf", 3.2, window_s=1.0)  # GPT-2 and BERT in turn
    assert len(windows) >= 2
    paths = paths_of(windows)
    block = "GPT2LMHeadModel/GPT2Model/GPT2Block"
    assert {block, f"{block}/GPT2Attention", f"{block}/GPT2MLP"} <= paths
    layer = "BertModel/BertEncoder/BertLayer"
    assert f"{layer}/BertAttention" in paths
    assert any(p.startswith(f"{layer}/BertIntermediate") for p in paths)
    assert any(p.startswith("BertModel/BertEmbeddings") for p in paths)
    assert sampler.available  # stopped by us, not by a failure

    assert len(asked) == len(windows)
    for rows, (start_ns, end_ns) in zip(windows, asked, strict=True):
        assert {(r.window_start_ns, r.window_end_ns) for r in rows} == {(start_ns, end_ns)}
        window_energy_j = POWER_W * (end_ns - start_ns) / 1e9
        # conservation: self energies over all rows (buckets included) give the window energy
        assert sum(r.self_energy_j for r in rows) == pytest.approx(window_energy_j, rel=1e-9)
        top = [r for r in rows if r.granularity == "bucket" or "/" not in r.path]
        assert sum(r.share for r in top) == pytest.approx(1.0)
        by_path = {r.path: r for r in rows}
        for r in rows:  # inclusive >= the children's inclusive, summed
            kids = [
                c for p, c in by_path.items()
                if p.startswith(r.path + "/") and p.count("/") == r.path.count("/") + 1
            ]  # fmt: skip
            assert r.n_samples >= sum(c.n_samples for c in kids)
        models = sum(by_path[m].share for m in ("GPT2LMHeadModel", "BertModel") if m in by_path)
        assert models > 0.5  # the child does forwards only
        assert all(r.method == "stack-sampling" for r in rows)


def test_plain_module_paths_and_sleeping_main_thread():
    windows, _, _ = sample_child("idle", 2.0)  # TinyNet forwards between 20 ms sleeps
    paths = paths_of(windows)
    assert "TinyNet/Sequential/Block/Mlp/Linear" in paths
    assert "gpu-wait" not in paths  # CPU target: loss.item() stays in TinyNet
    idle = sum(r.n_samples for rows in windows for r in rows if r.path == BUCKET_IDLE)
    total = sum(
        r.n_samples
        for rows in windows
        for r in rows
        if r.granularity == "bucket" or "/" not in r.path
    )
    assert idle / total > 0.3


def test_training_loop_buckets():
    windows, _, _ = sample_child("train", 2.5)
    totals: dict[str, int] = {}
    for rows in windows:
        for r in rows:
            if r.granularity == "bucket" or "/" not in r.path:
                totals[r.path] = totals.get(r.path, 0) + r.n_samples
    for bucket in (BUCKET_DATA, BUCKET_OPTIMIZER, BUCKET_BACKWARD):
        assert totals.get(bucket, 0) > 0, (bucket, totals)
    assert totals.get("Sequential", 0) > 0  # the forward itself
