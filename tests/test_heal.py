"""Issue 13 item 5: distillation healing lowers the held-out KL of a pruned model, reports the
energy it cost and the payback, and is refused without text."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_actions_helpers import save_char_tokenizer, save_hf, tiny_gpt2
from wattlens.advisor.optimize import optimize
from wattlens.profiler.errors import BadInputError

TEXT = Path(__file__).parent / "fixtures" / "text" / "heal.txt"
QUICK = {"n_rounds": 1, "warmup_batches": 1, "min_window_s": 0.02, "batch_size": 2, "seq_len": 16}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = save_hf(tiny_gpt2(n_layer=4), tmp_path_factory.mktemp("m") / "gpt2")
    save_char_tokenizer(d)
    return d


def test_healing_lowers_held_out_kl_and_reports_its_energy_and_payback(model_dir, tmp_path):
    result = optimize(model_dir, "prune-layers:0.5", tmp_path / "out", heal_steps=30, heal_text=TEXT, **QUICK)
    h = result.healing
    assert h["steps"] == 30 and h["source"] == str(TEXT)
    assert h["held_out_kl_after"] < h["held_out_kl_before"]
    assert h["held_out_tokens"] > 0 and h["train_tokens"] > h["held_out_tokens"]
    assert (h["energy_j"] is None) == (h["energy_reason"] is not None)  # measured, or says why not
    assert (h["payback_samples"] is None) == (h["payback_reason"] is not None)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"heal_steps": 5}, "needs --heal-text"),
    ({"heal_text": TEXT}, "needs --heal-steps"),
])
def test_healing_without_text_or_steps_is_refused(model_dir, tmp_path, kwargs, fragment):
    with pytest.raises(BadInputError, match=fragment):
        optimize(model_dir, "prune-layers:0.5", tmp_path / "out", **kwargs, **QUICK)
    assert not (tmp_path / "out").exists()
