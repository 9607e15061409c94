"""Loading MODEL, saving the optimised copy, reloading it: same outputs, input files untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.test_actions_helpers import run, save_hf, tiny_bert, tiny_gpt2, token_ids
from wattlens.advisor.actions import parse_actions
from wattlens.advisor.modelio import MANIFEST_NAME, load_model, load_optimized
from wattlens.advisor.optimize import optimize
from wattlens.profiler.errors import ActionError, BadInputError, ModelLoadError

QUICK = {"n_rounds": 2, "warmup_batches": 1, "min_window_s": 0.05, "batch_size": 2, "seq_len": 8}


def tree_hashes(path: Path) -> dict[str, str]:
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def gpt2_dir(tmp_path) -> Path:
    return save_hf(tiny_gpt2(), tmp_path / "gpt2")


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    return save_hf(tiny_bert(), tmp_path / "bert")


# --------------------------------------------------------------------------- loading


def test_loads_hf_folders_with_auto_classes(gpt2_dir, bert_dir):
    lm = load_model(gpt2_dir)
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and lm.is_causal_lm
    assert lm.kind == "hf-folder" and not lm.model.training
    assert lm.tokenizer is None and "no tokenizer files" in lm.tokenizer_reason
    enc = load_model(bert_dir)
    assert type(enc.model).__name__ == "BertModel" and not enc.is_causal_lm


def test_loads_tokenizer_when_present(gpt2_dir):
    from tests.test_actions_helpers import save_char_tokenizer

    save_char_tokenizer(gpt2_dir)
    loaded = load_model(gpt2_dir)
    assert loaded.tokenizer is not None and loaded.tokenizer_reason is None


def _no_config(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    return d


def _no_weights(tmp_path):
    d = save_hf(tiny_gpt2(), tmp_path / "m")
    (d / "model.safetensors").unlink()
    return d


def _truncated_weights(tmp_path):
    d = save_hf(tiny_gpt2(), tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    return d


def _mismatched_config(tmp_path):
    d = save_hf(tiny_gpt2(), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    d = save_hf(tiny_gpt2(), tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    del tensors["transformer.h.0.mlp.c_fc.bias"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    return d


def _bad_config_json(tmp_path):
    d = save_hf(tiny_gpt2(), tmp_path / "m")
    (d / "config.json").write_text("{not json")
    return d


def _state_dict_file(tmp_path):
    p = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), p)
    return p


def _bare_safetensors(tmp_path):
    d = save_hf(tiny_gpt2(), tmp_path / "m")
    return d / "model.safetensors"


def _not_torch(tmp_path):
    p = tmp_path / "model.pt"
    p.write_text("hello")
    return p


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda t: t / "missing", "no such file or folder"),
        (_no_config, "no config.json"),
        (_no_weights, "no weights file"),
        (_truncated_weights, "does not load"),
        (_mismatched_config, "does not load"),
        (_missing_tensor, "do not match its config.json"),
        (_bad_config_json, "cannot be read"),
        (_state_dict_file, "only weights (a state_dict)"),
        (_bare_safetensors, "only weights, no architecture"),
        (_not_torch, "not a readable torch file"),
    ],
)
def test_what_does_not_load_says_what_is_wrong_in_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    before = tree_hashes(path) if path.exists() else {}
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert " — " in message  # the hint: what to do
    assert err.value.exit_code == 2
    assert (tree_hashes(path) if path.exists() else {}) == before


def test_loads_a_named_torch_module_file(tmp_path):
    p = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), p)
    loaded = load_model(p, trust_pickle=True)
    assert loaded.kind == "torch-module-file" and isinstance(loaded.model, nn.Sequential)


# --------------------------------------------------------------------------- save and reload


CASES = [
    ("gpt2", "bf16"),
    ("gpt2", "prune-mlp:0.5"),
    ("gpt2", "prune-unstructured:0.5"),
    ("gpt2", "prune-mlp:0.25,prune-layers:0.5"),
    ("bert", "quantize-int8"),
    ("bert", "prune-mlp:0.5"),
]


@pytest.mark.parametrize("family, spec", CASES)
def test_saved_model_reloads_with_the_same_outputs_and_input_is_untouched(
    tmp_path, gpt2_dir, bert_dir, family, spec
):
    src = gpt2_dir if family == "gpt2" else bert_dir
    before = tree_hashes(src)
    out = tmp_path / "out"
    result = optimize(src, spec, out, **QUICK)
    reloaded = load_model(out)
    # the candidate, built independently from a fresh load of the input
    candidate = load_model(src).model
    for action in parse_actions(spec):
        candidate = action.apply(candidate)
    assert tree_hashes(src) == before
    ids = token_ids()
    assert torch.allclose(run(reloaded.model, ids), run(candidate, ids), atol=1e-5)
    assert result.reload_max_abs_diff == 0.0  # plain transformers in a fresh process: same outputs
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["layout"] == "transformers"
    assert [a["spec"] for a in manifest["actions"]] == spec.split(",")
    assert all(a["claim"]["holds"] for a in manifest["actions"])
    assert manifest["base"]["path"] == str(src.resolve())
    assert manifest["sizes"]["candidate_params"] > 0
    assert result.out_dir == str(out.resolve())
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert not list(out.glob("*.pt")) and not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))


def test_mlp_pruned_output_is_a_plain_transformers_folder(tmp_path, gpt2_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    optimize(gpt2_dir, "prune-mlp:0.5", out, **QUICK)
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ours = load_model(out).model
    ids = token_ids()
    assert plain.config.n_inner == 128
    assert torch.equal(run(plain, ids), run(ours, ids))


def test_optimising_an_output_again_chains_the_records(tmp_path, gpt2_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    optimize(gpt2_dir, "prune-mlp:0.25", first, **QUICK)
    optimize(first, "prune-unstructured:0.25", second, **QUICK)
    manifest = json.loads((second / MANIFEST_NAME).read_text())
    assert [a["spec"] for a in manifest["actions"]] == ["prune-mlp:0.25", "prune-unstructured:0.25"]
    candidate = load_model(first).model
    candidate = parse_actions("prune-unstructured:0.25")[0].apply(candidate)
    ids = token_ids()
    assert torch.equal(run(load_model(second).model, ids), run(candidate, ids))


def test_a_quantized_output_cannot_be_optimised_further(tmp_path, bert_dir):
    out = tmp_path / "q"
    optimize(bert_dir, "quantize-int8", out, **QUICK)
    with pytest.raises(BadInputError, match="already quantized"):
        optimize(out, "prune-mlp:0.25", tmp_path / "again", **QUICK)


def test_module_file_output_needs_the_users_class_not_the_original_file(tmp_path):
    src = tmp_path / "net.pt"
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), src)
    before = tree_hashes(src)
    out = tmp_path / "out"
    optimize(src, "prune-unstructured:0.5", out, trust_pickle=True, **QUICK)
    assert tree_hashes(src) == before
    with pytest.raises(ModelLoadError, match="needs your module class"):
        load_model(out)
    src.unlink()  # the output does not depend on the original file
    reloaded = load_optimized(out, nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)))
    assert float((reloaded[0].weight == 0).float().mean()) >= 0.5
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_optimized(out, nn.Sequential(nn.Linear(16, 8)))


# --------------------------------------------------------------------------- refusals


def test_out_dir_that_exists_or_sits_inside_the_input_is_refused(tmp_path, gpt2_dir):
    before = tree_hashes(gpt2_dir)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(BadInputError, match="already exists"):
        optimize(gpt2_dir, "bf16", busy, **QUICK)
    assert (busy / "x").read_text() == "keep me"
    with pytest.raises(BadInputError, match="inside the input model"):
        optimize(gpt2_dir, "bf16", gpt2_dir / "optimized", **QUICK)
    assert tree_hashes(gpt2_dir) == before


def test_a_failing_action_writes_nothing_and_leaves_the_input_file_untouched(tmp_path):
    model = tiny_gpt2()
    model.transformer.h[0].attn.c_attn = nn.Identity()  # a layer prune-heads cannot slice
    src = tmp_path / "broken.pt"
    torch.save(model, src)
    before = tree_hashes(src)
    out = tmp_path / "out"
    with pytest.raises(ActionError) as err:
        optimize(src, "prune-heads:0.25", out, trust_pickle=True, **QUICK)
    assert "prune-heads:0.25 failed" in str(err.value) and "\n" not in str(err.value)
    assert tree_hashes(src) == before
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]


def test_a_folder_that_does_not_load_writes_nothing(tmp_path):
    src = _truncated_weights(tmp_path)
    before = tree_hashes(src)
    with pytest.raises(ModelLoadError):
        optimize(src, "bf16", tmp_path / "out", **QUICK)
    assert tree_hashes(src) == before
    assert not (tmp_path / "out").exists()
