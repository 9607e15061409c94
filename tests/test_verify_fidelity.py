"""Fidelity numbers: known answers for the metrics, real models for the measurement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import save_char_tokenizer, save_hf, tiny_bert, tiny_gpt2
from wattlens.advisor.actions import parse_action
from wattlens.advisor.fidelity import (
    cosine_agreement,
    distribution_agreement,
    eval_windows,
    measure_fidelity,
    perplexity,
    read_eval_tokens,
)
from wattlens.advisor.modelio import load_model, random_inputs
from wattlens.profiler.errors import BadInputError


def test_identical_logits_agree_fully_with_zero_kl():
    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    agreement, kl = distribution_agreement(logits, logits.clone())
    assert agreement == 1.0
    assert kl == 0.0


def test_known_perturbation_gives_the_analytic_kl_and_agreement():
    # two positions: one flipped (p=(σ(1),σ(-1)) vs q=(σ(-1),σ(1))), one identical
    base = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    cand = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    agreement, kl = distribution_agreement(base, cand)
    p1 = 1 / (1 + math.exp(-1))
    flipped_kl = p1 * math.log(p1 / (1 - p1)) + (1 - p1) * math.log((1 - p1) / p1)
    assert agreement == 0.5
    assert kl == pytest.approx(flipped_kl / 2, rel=1e-12)


def test_kl_is_base_to_candidate_not_symmetric():
    base = torch.tensor([[3.0, 0.0, 0.0]])
    cand = torch.tensor([[0.0, 0.0, 0.0]])
    p = torch.softmax(base.double(), -1)[0]
    expected = float((p * (p.log() - math.log(1 / 3))).sum())
    assert distribution_agreement(base, cand)[1] == pytest.approx(expected, rel=1e-12)
    assert distribution_agreement(cand, base)[1] != pytest.approx(expected, rel=1e-3)


def test_cosine_agreement_known_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    same = cosine_agreement(x, x * 3)
    assert same[0] == pytest.approx(1.0) and same[1] == pytest.approx(1.0)
    mixed = cosine_agreement(x, torch.tensor([[0.0, 1.0], [0.0, 2.0], [-1.0, -1.0]]))
    assert mixed[0] == pytest.approx((0 + 1 - 1) / 3) and mixed[1] == pytest.approx(-1.0)


class UniformLM(nn.Module):
    """Predicts every token with probability 1/vocab: its perplexity is exactly vocab."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return torch.zeros(*input_ids.shape, self.vocab) + self.dummy


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    ids = torch.randint(0, 37, (100,), generator=torch.Generator().manual_seed(0))
    assert perplexity(UniformLM(37), ids, window=16) == pytest.approx(37.0, rel=1e-12)


def test_perplexity_matches_transformers_loss_on_one_window():
    model = tiny_gpt2()
    ids = torch.randint(0, 256, (20,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss = model(input_ids=ids.unsqueeze(0), labels=ids.unsqueeze(0)).loss
    assert perplexity(model, ids, window=64) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_lm_fidelity_of_a_model_with_itself_is_perfect_and_says_inputs_are_random():
    model = tiny_gpt2()
    inputs = random_inputs(model, 2, 16, seed=7)
    fid = measure_fidelity(model, model, inputs, is_causal_lm=True)
    assert fid.mode == "next-token"
    assert fid.top1_agreement == 1.0 and fid.kl_base_candidate == 0.0
    assert fid.quality_loss == 0.0
    assert "seeded random token ids (seed 7" in fid.inputs
    assert fid.perplexity_base is None and "no eval text" in fid.perplexity_reason
    assert fid.n_positions == 2 * 16


def test_lm_fidelity_sees_a_real_change():
    model = tiny_gpt2()
    candidate = parse_action("prune-mlp:0.5").apply(model)
    fid = measure_fidelity(model, candidate, random_inputs(model, 2, 16), is_causal_lm=True)
    assert fid.kl_base_candidate > 0
    assert 0 <= fid.top1_agreement <= 1
    assert fid.quality_loss == pytest.approx(1 - fid.top1_agreement)


def test_encoder_fidelity_uses_cosine_similarity():
    model = tiny_bert()
    candidate = parse_action("prune-heads:0.25").apply(model)
    fid = measure_fidelity(model, candidate, random_inputs(model, 2, 8), is_causal_lm=False)
    assert fid.mode == "cosine" and fid.top1_agreement is None
    assert -1 <= fid.cosine_similarity_min <= fid.cosine_similarity < 1
    assert fid.quality_loss == pytest.approx(1 - fid.cosine_similarity)
    assert "causal language model" in fid.perplexity_reason


def test_eval_text_needs_a_tokenizer(tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("some words to score")
    loaded = load_model(save_hf(tiny_gpt2(), tmp_path / "m"))
    with pytest.raises(BadInputError, match="needs a tokenizer"):
        read_eval_tokens(text, loaded.tokenizer, loaded.tokenizer_reason)


def test_eval_text_gives_perplexities_with_the_folder_tokenizer(tmp_path):
    folder = save_hf(tiny_gpt2(), tmp_path / "m")
    save_char_tokenizer(folder)
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 4)
    loaded = load_model(folder)
    ids = read_eval_tokens(text, loaded.tokenizer, loaded.tokenizer_reason)
    assert ids.numel() == len("the quick brown fox jumps over the lazy dog " * 4)
    candidate = parse_action("prune-mlp:0.5").apply(loaded.model)
    inputs = eval_windows(ids, loaded.model, seq_len=32)
    fid = measure_fidelity(loaded.model, candidate, inputs, is_causal_lm=True, eval_ids=ids,
                           eval_source=str(text))
    assert fid.perplexity_reason is None
    assert fid.perplexity_base == pytest.approx(perplexity(loaded.model, ids, 64))
    assert fid.perplexity_candidate == pytest.approx(perplexity(candidate, ids, 64))
    assert "eval text" in fid.inputs and str(text) in fid.inputs
    rel = fid.perplexity_candidate / fid.perplexity_base - 1
    assert fid.quality_loss == pytest.approx(max(1 - fid.top1_agreement, rel))
