"""Issue 13: every output of ``optimize`` on a Hugging Face folder loads with plain transformers
in a fresh interpreter that never imports wattlens, and computes what was verified; changes
plain transformers cannot express are refused before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch as st
import torch

from tests.test_actions_helpers import save_hf, tiny_gpt2
from wattlens.advisor import load_optimized
from wattlens.advisor.modelio import forward, random_inputs
from wattlens.advisor.optimize import optimize
from wattlens.profiler.errors import BadInputError

QUICK = {"n_rounds": 1, "warmup_batches": 1, "min_window_s": 0.02, "batch_size": 2, "seq_len": 8}

PLAIN = r"""
import json, sys
import safetensors.torch as st, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
with torch.inference_mode():
    logits = model(**st.load_file(sys.argv[2]), use_cache=False).logits
st.save_file({"logits": logits.float().contiguous()}, sys.argv[3])
print(json.dumps({"wattlens": [m for m in sys.modules if m.startswith("wattlens")],
                  "layers": model.config.num_hidden_layers, "dtype": str(model.dtype),
                  "quant": type(model.config.quantization_config).__name__
                  if getattr(model.config, "quantization_config", None) else None}))
"""


def tiny_llama(n_layers: int = 6):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=n_layers,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                        max_position_embeddings=64)).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": save_hf(tiny_llama(), root / "llama"),
            "gpt2": save_hf(tiny_gpt2(n_layer=6), root / "gpt2")}


def _plain_load(folder, inputs, tmp_path):
    ins, outs = tmp_path / "ins.safetensors", tmp_path / "outs.safetensors"
    st.save_file(dict(inputs.kwargs), str(ins))
    proc = subprocess.run([sys.executable, "-I", "-c", PLAIN, str(folder), str(ins), str(outs)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return st.load_file(str(outs))["logits"], json.loads(proc.stdout.strip().splitlines()[-1])


CASES = [("llama", "quantize-int8"), ("llama", "quantize-int8-weight-only"), ("llama", "prune-layers:0.34"),
         ("llama", "prune-mlp:0.5"), ("llama", "bf16"), ("gpt2", "prune-layers:0.34"), ("gpt2", "prune-mlp:0.25"),
         ("gpt2", "bf16"), ("llama", "prune-layers:0.34,quantize-int8")]


@pytest.mark.parametrize("family, spec", CASES)
def test_output_loads_in_plain_transformers_as_verified(folders, tmp_path, family, spec):
    out = tmp_path / "out"
    result = optimize(folders[family], spec, out, **QUICK)
    verified = load_optimized(out)  # what optimize measured: plain from_pretrained of the folder
    inputs = random_inputs(verified, 2, 12, seed=7)
    logits, info = _plain_load(out, inputs, tmp_path)
    assert info["wattlens"] == []
    assert torch.allclose(logits, forward(verified, inputs).float(), atol=1e-5)
    manifest = json.loads((out / "wattlens-optimization.json").read_text())
    assert manifest["plain_transformers_check"]["wattlens_imported"] is False
    assert all(a.claim.holds for a in result.actions)
    if "prune-layers" in spec:
        assert info["layers"] == 4  # round(0.34 × 6) = 2 blocks removed
        (pl,) = [a for a in result.actions if a.spec.startswith("prune-layers")]
        assert len(pl.details["block_scores"]) == 6 and len(pl.details["removed_blocks"]) == 2
        assert "seeded random token ids" in pl.details["calibration"]
    if spec.endswith("quantize-int8"):
        assert info["quant"] == "TorchAoConfig"
    if spec == "bf16":
        assert info["dtype"] == "torch.bfloat16"


def test_int8_weights_on_disk_are_at_most_0_6_of_fp32(folders, tmp_path):
    out = tmp_path / "q"
    optimize(folders["llama"], "quantize-int8", out, **QUICK)
    fp32 = (folders["llama"] / "model.safetensors").stat().st_size
    int8 = (out / "model.safetensors").stat().st_size
    assert int8 <= 0.6 * fp32, (int8, fp32)


@pytest.mark.parametrize("family, spec, fragment", [
    ("gpt2", "quantize-int8", "Conv1D"),
    ("llama", "prune-heads:0.25", "no transformers config can express"),
])
def test_what_plain_transformers_cannot_express_is_refused_before_running(folders, tmp_path, family, spec, fragment):
    with pytest.raises(BadInputError) as err:
        optimize(folders[family], spec, tmp_path / "out", **QUICK)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_module_file_output_is_a_state_dict_loaded_onto_the_users_class(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    src = tmp_path / "net.pt"
    torch.save(net, src)
    out = tmp_path / "out"
    optimize(src, "quantize-int8", out, trust_pickle=True, **QUICK)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "wattlens-optimization.json"]
    assert str(src) not in json.dumps(json.loads((out / "wattlens-optimization.json").read_text())["actions"])
    fresh = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    model = load_optimized(out, fresh)
    assert "torchao" in type(model[0].weight).__module__
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=0.1)


@pytest.mark.parametrize("spec", ["prune-layers:0.34", "prune-mlp:0.25"])
def test_structural_pruning_of_a_module_file_reloads_onto_a_fresh_instance(tmp_path, spec):
    """A pickled transformers module has a config but no folder: the saved state dict is smaller
    than a fresh instance of the class, so the loader rebuilds the pruned shape first."""
    from transformers import GPT2LMHeadModel

    net = tiny_gpt2(n_layer=6)
    src = tmp_path / "net.pt"
    torch.save(net, src)
    out = tmp_path / "out"
    optimize(src, spec, out, trust_pickle=True, **QUICK)
    model = load_optimized(out, GPT2LMHeadModel(net.config))
    expected = st.load_file(str(out / "model.safetensors"))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    if spec.startswith("prune-layers"):
        assert len(model.transformer.h) == 4 and model.config.num_hidden_layers == 4
    else:
        assert model.transformer.h[0].mlp.c_fc.weight.shape[1] == 3 * net.config.n_embd
    inputs = random_inputs(model, 2, 8)
    assert torch.isfinite(forward(model, inputs)).all()
