"""Issue 13 items 3-4: static int8 calibrated on the user's data (or seeded random inputs,
labelled), with the number of calibration samples recorded; prune-layers scores blocks on the
calibration text when one is given."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import save_char_tokenizer, save_hf, tiny_gpt2
from wattlens.advisor import load_optimized
from wattlens.advisor.optimize import optimize
from wattlens.profiler.errors import BadInputError

QUICK = {"n_rounds": 1, "warmup_batches": 1, "min_window_s": 0.02, "batch_size": 2, "seq_len": 8}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()


def test_static_int8_on_a_module_file_records_scales_and_reloads_as_verified(tmp_path):
    src = tmp_path / "net.pt"
    net = _net()
    torch.save(net, src)
    out = tmp_path / "out"
    result = optimize(src, "quantize-int8-static", out, trust_pickle=True, **QUICK)
    (action,) = result.actions
    assert action.claim.holds
    assert action.details["calibration"].startswith("seeded random") and action.details["calibration_samples"] == 4
    manifest = json.loads((out / "wattlens-optimization.json").read_text())
    assert set(manifest["actions"][0]["details"]["act_scales"]) == {"0", "2"}
    model = load_optimized(out, _net())
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=0.1)
        again = load_optimized(out, _net())(x)
        assert torch.equal(model(x), again)  # fixed scales: deterministic reload


def test_static_int8_on_a_transformers_folder_is_refused_before_running(tmp_path):
    src = save_hf(tiny_gpt2(), tmp_path / "gpt2")
    with pytest.raises(BadInputError, match="closest|quantize-int8 \\(dynamic"):
        optimize(src, "quantize-int8-static", tmp_path / "out", **QUICK)
    assert not (tmp_path / "out").exists()


def test_prune_layers_scores_blocks_on_the_calibration_text(tmp_path):
    src = save_hf(tiny_gpt2(n_layer=4), tmp_path / "gpt2")
    save_char_tokenizer(src)
    text = tmp_path / "cal.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 20)
    result = optimize(src, "prune-layers:0.5", tmp_path / "out", calibration=text, **QUICK)
    (action,) = result.actions
    assert str(text) in action.details["calibration"] and action.details["calibration_samples"] >= 1
    assert len(action.details["block_scores"]) == 4 and action.details["blocks_after"] == 2


def test_calibration_without_a_tokenizer_is_refused(tmp_path):
    src = save_hf(tiny_gpt2(n_layer=4), tmp_path / "gpt2")
    text = tmp_path / "cal.txt"
    text.write_text("hello")
    with pytest.raises(BadInputError, match="--calibration needs a tokenizer"):
        optimize(src, "prune-layers:0.5", tmp_path / "out", calibration=text, **QUICK)
