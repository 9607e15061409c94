"""Interleaved A/B with the real EnergyMeter, the quality gate, and the batch-size sweep."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import int8_warns, save_hf, tiny_bert, tiny_gpt2
from wattlens.advisor.actions import parse_action
from wattlens.advisor.modelio import random_inputs
from wattlens.advisor.optimize import QualityLossError, optimize, sweep_batch_sizes
from wattlens.advisor.verify import PeakMemory, ab_verify, paired_saving, t_interval
from wattlens.profiler.meter import EnergyMeter

QUICK = {"n_rounds": 2, "warmup_batches": 1, "min_window_s": 0.05, "batch_size": 2, "seq_len": 8}


class RecordingMeter(EnergyMeter):
    """The real meter, remembering the order in which windows were opened."""

    def __init__(self):
        super().__init__()
        self.keys: list[str] = []

    def begin_window(self, key: str) -> None:
        self.keys.append(key)
        super().begin_window(key)


class Hungry(nn.Module):
    """Touches 40 MiB of fresh memory per sample (above glibc's mmap threshold: RSS really grows)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        scratch = torch.ones(x.shape[0] * 40 * 2**20 // 4)
        return self.lin(x) + scratch[:1]


# --------------------------------------------------------------------------- statistics


def test_paired_saving_and_t_interval_known_values():
    saving, interval, reason = paired_saving([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    assert saving == pytest.approx(0.5) and interval == pytest.approx((0.5, 0.5)) and reason is None
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert (hi - lo) / 2 == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert t_interval([1.0]) is None


def test_paired_saving_is_none_with_a_reason_when_energy_is_missing():
    saving, interval, reason = paired_saving([1.0, None], [1.0, 1.0])
    assert saving is None and interval is None and "not available" in reason
    saving, _, reason = paired_saving([0.0, 1.0], [1.0, 1.0])
    assert saving is None and "zero" in reason


def test_peak_memory_sees_a_real_allocation():
    mem = PeakMemory(torch.device("cpu"))
    mem.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, pages touched
    peak = mem.stop()
    del block
    assert peak >= 60 * 2**20
    assert "RSS" in mem.method


def test_peak_memory_probe_grows_with_the_batch():
    model = Hungry()
    mem = PeakMemory(torch.device("cpu"))
    small = mem.probe(model, random_inputs(model, 1, 8))
    large = mem.probe(model, random_inputs(model, 3, 8))
    assert small >= 39 * 2**20
    assert large >= 119 * 2**20


# --------------------------------------------------------------------------- the A/B run


def test_ab_verify_interleaves_and_reports_every_field():
    base = tiny_gpt2()
    with int8_warns():
        cand = parse_action("quantize-int8").apply(base)
    meter = RecordingMeter()
    v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=3, warmup_batches=1,
                  min_window_s=0.05, meter=meter)
    rounds = [k for k in meter.keys if k.startswith("ab:") and k != "ab:all"]
    # A then B, every measurement of a round (a round too short for the meter is measured again)
    firsts = [k for k in rounds if ":again" not in k]
    assert firsts == [f"ab:{arm}:{r}" for r in range(3) for arm in ("baseline", "candidate")]
    pairs = [(a.split(":")[1:], b.split(":")[1:]) for a, b in zip(rounds[::2], rounds[1::2], strict=True)]
    assert all(a[0] == "baseline" and b[0] == "candidate" and a[1:] == b[1:] for a, b in pairs)
    assert meter.keys[0] == "ab:all"
    assert v.n_rounds + len(v.refused_rounds) == 3 and v.batches_per_round >= 1 and v.batch_size == 2
    assert len(v.round_batches) == v.n_rounds
    for arm in (v.baseline, v.candidate):
        assert len(arm.round_energy_per_sample_j) == (v.n_rounds or 3)
        assert arm.latency_per_sample_s > 0
        assert arm.peak_mem_bytes is not None and arm.peak_mem_bytes >= 0
        assert any(m in arm.energy_method for m in ("counter", "polled", "estimated"))
        assert "cpu-time share" in arm.energy_method
    assert v.sources == {s.id: s.method for s in meter.sources}
    assert v.candidate.model_bytes < v.baseline.model_bytes
    if v.saving_fraction is not None:
        lo, hi = v.saving_interval
        assert lo <= v.saving_fraction <= hi
    else:
        assert v.saving_reason
    assert "seeded random token ids" in v.inputs


def test_verification_is_frozen_and_shows_predicted_beside_measured():
    base = tiny_bert()
    cand = parse_action("prune-mlp:0.5").apply(base)
    v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=2, warmup_batches=1,
                  min_window_s=0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.n_rounds = 3
    assert v.predicted_saving is None and v.side_by_side()["prediction_method"] == "no prediction"
    p = v.with_prediction(0.2, (0.1, 0.3), "ridge on 12 stored A/B runs")
    side = p.side_by_side()
    assert side["predicted"] == 0.2 and side["measured"] == v.saving_fraction
    assert side["predicted_interval"] == (0.1, 0.3)
    json.dumps(p.to_dict())


# --------------------------------------------------------------------------- optimize


def test_optimize_refuses_past_max_quality_loss_and_writes_nothing(tmp_path):
    src = save_hf(tiny_bert(), tmp_path / "bert")
    out = tmp_path / "out"
    with pytest.raises(QualityLossError) as err:
        optimize(src, "prune-mlp:0.5", out, max_quality_loss=1e-9, **QUICK)
    message = str(err.value)
    assert "exceeds --max-quality-loss" in message and "nothing was written" in message
    assert "\n" not in message and err.value.exit_code == 1
    # nothing written (no temp folder left beside it either)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]
    result = err.value.result
    assert not result.quality_ok and result.out_dir is None and result.verification is not None
    assert result.fidelity.quality_loss > 1e-9


def test_optimize_reports_progress_and_serialises(tmp_path):
    src = save_hf(tiny_gpt2(), tmp_path / "gpt2")
    seen: list[tuple[str, float]] = []
    result = optimize(src, "prune-mlp:0.25", tmp_path / "out", max_quality_loss=1.0,
                      progress=lambda stage, f: seen.append((stage, f)), **QUICK)
    stages = [s for s, _ in seen]
    assert stages[0] == "load" and stages[-1] == "done"
    for stage in ("apply", "fidelity", "verify", "save"):
        assert stage in stages
    assert stages.index("apply") < stages.index("save") < stages.index("verify")  # verify what was saved
    assert all(0.0 <= f <= 1.0 for _, f in seen)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["actions"][0]["spec"] == "prune-mlp:0.25"
    assert doc["actions"][0]["claim"]["holds"] is True
    assert doc["verification"]["fidelity"]["mode"] == "next-token"
    assert doc["quality_ok"] is True
    assert doc["sizes"]["candidate_params"] < doc["sizes"]["base_params"]


def test_optimize_with_batch_sizes_sweeps_the_candidate(tmp_path):
    src = save_hf(tiny_gpt2(), tmp_path / "gpt2")
    result = optimize(src, "prune-mlp:0.25", tmp_path / "out", batch_sizes=[1, 2], **QUICK)
    assert [r.batch_size for r in result.batch_sweep] == [1, 2]
    assert all(r.status == "ok" for r in result.batch_sweep)


# --------------------------------------------------------------------------- batch-size sweep


def test_sweep_measures_each_batch_size():
    model = tiny_gpt2()
    rows = sweep_batch_sizes(model, [2, 1], seq_len=8, n_rounds=2, min_window_s=0.05)
    assert [r.batch_size for r in rows] == [1, 2]
    for r in rows:
        assert r.status == "ok"
        assert r.throughput_samples_per_s > 0 and r.latency_per_batch_s > 0
        assert r.energy_method and "cpu-time share" in r.energy_method
        assert (r.energy_per_sample_j is None) == (r.reason is not None)


def test_sweep_stops_before_a_batch_that_would_not_fit():
    rows = sweep_batch_sizes(Hungry(), [1, 2, 4], n_rounds=1, min_window_s=0.02,
                             mem_headroom=1e-6)
    # batch 1 runs (≥ 40 MiB peak); batch 2 would need ~80 MiB, more than 1e-6 of free memory
    assert [r.status for r in rows] == ["ok", "memory-guard", "skipped"]
    assert rows[0].peak_mem_bytes >= 39 * 2**20
    assert "MiB" in rows[1].reason and "would likely not fit" in rows[2].reason


class GreedyAtFour(nn.Module):
    """Asks the allocator for an impossible block at batch size ≥ 4: a real allocation failure."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        if x.shape[0] >= 4:
            torch.empty(2**62, dtype=torch.uint8)
        return self.lin(x)


def test_sweep_stops_growing_at_out_of_memory_and_says_so():
    rows = sweep_batch_sizes(GreedyAtFour(), [1, 4, 8], n_rounds=1, min_window_s=0.02)
    assert [r.status for r in rows] == ["ok", "oom", "skipped"]
    assert rows[1].reason.startswith("out of memory")
    assert "ran out of memory" in rows[2].reason
    assert rows[0].energy_per_sample_j is None or rows[0].energy_per_sample_j >= 0
