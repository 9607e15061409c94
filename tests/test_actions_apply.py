"""Each action changes what it claims, on a copy, and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import (
    run,
    same_state,
    state_snapshot,
    tiny_bert,
    tiny_gpt2,
    token_ids,
)
from wattlens.advisor.actions import parse_action, parse_actions
from wattlens.profiler.errors import ActionError, BadInputError

MODELS = {"gpt2": tiny_gpt2, "bert": tiny_bert}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_like(model: nn.Module) -> int:
    from transformers.pytorch_utils import Conv1D

    return sum(1 for m in model.modules() if type(m) is nn.Linear or isinstance(m, Conv1D))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("bogus", "unknown action"),
        ("prune-heads", "needs a fraction"),
        ("prune-heads:", "needs a fraction"),
        ("prune-heads:abc", "not a number"),
        ("prune-heads:1.5", "between 0 and 1"),
        ("prune-mlp:0", "between 0 and 1"),
        ("bf16:0.5", "takes no argument"),
    ],
)
def test_bad_spec_names_the_problem_and_lists_valid_actions(spec, fragment):
    with pytest.raises(BadInputError) as err:
        parse_actions(spec)
    message = str(err.value)
    assert fragment in message
    assert "valid actions:" in message and "prune-unstructured:FRACTION" in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_specs_parse_in_order_with_fractions():
    actions = parse_actions("prune-heads:0.25, prune-mlp:0.5,quantize-int8")
    assert [a.spec for a in actions] == ["prune-heads:0.25", "prune-mlp:0.5", "quantize-int8"]
    assert actions[0].fraction == 0.25


def test_int8_must_come_last_and_not_with_bf16():
    with pytest.raises(BadInputError, match="must be the last action"):
        parse_actions("quantize-int8,prune-mlp:0.5")
    with pytest.raises(BadInputError, match="cannot be combined"):
        parse_actions("bf16,quantize-int8")


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize("family", MODELS)
def test_quantize_int8_replaces_every_linear_and_conv1d(family):
    from wattlens.advisor.actions.quantize_int8 import is_quantized_weight, kept_float_names

    model = MODELS[family]()
    before = linear_like(model)
    snap = state_snapshot(model)
    action = parse_action("quantize-int8")
    new = action.apply(model)
    quantized = sum(type(m) is nn.Linear and is_quantized_weight(m.weight) for m in new.modules())
    assert quantized == before - len(kept_float_names(model))  # the output head stays float
    assert action.check_claim(model, new).holds
    assert same_state(model, snap) and linear_like(model) == before
    out = run(new, token_ids())
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", MODELS)
def test_bf16_casts_every_floating_tensor(family):
    model = MODELS[family]()
    snap = state_snapshot(model)
    new = parse_action("bf16").apply(model)
    floats = [t for t in [*new.parameters(), *new.buffers()] if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert same_state(model, snap)


@pytest.mark.parametrize("family", MODELS)
def test_prune_heads_removes_the_fraction_of_attention_parameters(family):
    model = MODELS[family]()  # 2 layers, 4 heads of 16, width 64
    snap = state_snapshot(model)
    action = parse_action("prune-heads:0.25")  # 1 head per layer
    applied = action.apply_detailed(model)
    e, d, layers, k = 64, 16, 2, 1
    # q/k/v lose k·d output rows (+ biases), the output projection k·d input columns
    per_layer = k * (3 * (e * d + d) + d * e)
    assert n_params(model) - n_params(applied.model) == layers * per_layer
    check = action.check_claim(model, applied.model)
    assert check.holds
    assert check.values["observed_share"] == pytest.approx(0.25)
    assert applied.details["removed_per_layer"] == [1, 1]
    assert same_state(model, snap)
    assert run(applied.model, token_ids()).shape == run(model, token_ids()).shape


@pytest.mark.parametrize("family", MODELS)
def test_prune_mlp_removes_the_fraction_of_mlp_parameters_and_updates_config(family):
    model = MODELS[family]()
    width = 256 if family == "gpt2" else 128
    snap = state_snapshot(model)
    action = parse_action("prune-mlp:0.5")
    new = action.apply(model)
    k, e, layers = width // 2, 64, 2
    assert n_params(model) - n_params(new) == layers * k * (e + 1 + e)
    key = "n_inner" if family == "gpt2" else "intermediate_size"
    assert getattr(new.config, key) == width - k
    assert action.check_claim(model, new).holds
    assert same_state(model, snap)
    assert getattr(model.config, key) in (None, width)


@pytest.mark.parametrize("family", MODELS)
def test_prune_unstructured_zeroes_the_fraction_keeps_shapes_and_tied_head(family):
    model = MODELS[family]()
    snap = state_snapshot(model)
    action = parse_action("prune-unstructured:0.5")
    new = action.apply(model)
    from wattlens.advisor.actions.prune_unstructured import prunable_layers

    layers = prunable_layers(model)
    assert layers
    for name, m in layers:
        w = new.get_submodule(name).weight
        assert w.shape == m.weight.shape
        assert int((w == 0).sum()) == round(0.5 * w.numel())
    if family == "gpt2":  # lm_head is tied to the embedding: left dense
        assert int((new.transformer.wte.weight == 0).sum()) == 0
        assert new.lm_head.weight.data_ptr() == new.transformer.wte.weight.data_ptr()
    assert "no speed" in action.description.lower()
    assert action.check_claim(model, new).holds
    assert same_state(model, snap)


# --------------------------------------------------------------------------- importance and correctness


def test_prune_heads_drops_a_dead_head_without_changing_outputs():
    """A head whose value projection is zero adds nothing; removing it must not change outputs."""
    model = tiny_gpt2()
    dead, d, e = [2, 0], 16, 64  # one dead head per layer (prune-heads:0.25 removes one each)
    with torch.no_grad():  # value block of the fused c_attn is columns [2E, 3E)
        for block, h in zip(model.transformer.h, dead, strict=True):
            cols = slice(2 * e + h * d, 2 * e + (h + 1) * d)
            block.attn.c_attn.weight[:, cols] = 0
            block.attn.c_attn.bias[cols] = 0
    applied = parse_action("prune-heads:0.25").apply_detailed(model)
    assert applied.details["kept_heads"] == [[0, 1, 3], [1, 2, 3]]
    ids = token_ids()
    torch.testing.assert_close(run(applied.model, ids), run(model, ids), rtol=1e-5, atol=1e-5)


def test_prune_mlp_drops_dead_neurons_without_changing_outputs():
    model = tiny_bert()
    width, k = 128, 32  # prune-mlp:0.25 removes 32 neurons per layer
    dead = list(range(0, width, width // k))
    with torch.no_grad():
        for layer in model.encoder.layer:  # gelu(0) = 0: these neurons contribute nothing
            layer.intermediate.dense.weight[dead] = 0
            layer.intermediate.dense.bias[dead] = 0
    new = parse_action("prune-mlp:0.25").apply(model)
    assert new.encoder.layer[0].intermediate.dense.out_features == width - k
    ids = token_ids()
    torch.testing.assert_close(run(new, ids), run(model, ids), rtol=1e-5, atol=1e-5)


def test_bert_prune_heads_dead_head_keeps_outputs():
    model = tiny_bert()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight[16:32] = 0
            layer.attention.self.value.bias[16:32] = 0
    applied = parse_action("prune-heads:0.25").apply_detailed(model)
    assert applied.details["kept_heads"] == [[0, 2, 3], [0, 2, 3]]
    ids = token_ids()
    torch.testing.assert_close(run(applied.model, ids), run(model, ids), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- refusals and failures


def test_fraction_that_rounds_to_zero_heads_is_refused():
    with pytest.raises(BadInputError, match="rounds to 0"):
        parse_action("prune-heads:0.05").apply(tiny_gpt2())


def test_prune_heads_on_an_unknown_architecture_says_what_it_supports():
    with pytest.raises(BadInputError, match="supports GPT-2 style"):
        parse_action("prune-heads:0.25").apply(nn.Sequential(nn.Linear(4, 4)))


def test_int8_refuses_bf16_weights():
    model = parse_action("bf16").apply(tiny_gpt2())
    with pytest.raises(BadInputError, match="float32"):
        parse_action("quantize-int8").apply(model)


def test_an_action_that_fails_inside_raises_action_error_and_leaves_input_untouched():
    model = tiny_gpt2()
    # a real model whose first attention projection is not a layer we can slice
    model.transformer.h[0].attn.c_attn = nn.Identity()
    snap = state_snapshot(model)
    with pytest.raises(ActionError) as err:
        parse_action("prune-heads:0.25").apply(model)
    assert "prune-heads:0.25 failed" in str(err.value)
    assert "input model is untouched" in str(err.value)
    assert err.value.exit_code == 1
    assert same_state(model, snap)
    assert isinstance(model.transformer.h[0].attn.c_attn, nn.Identity)
