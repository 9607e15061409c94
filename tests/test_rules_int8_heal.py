"""Issue 13: the int8 rules never recommend a command `wattlens optimize` refuses, static int8 is
recommended where calibration text is given, and healing where a stored pruning result exceeded
its --max-quality-loss.

Sessions are REAL: a child process loads a GPT-2 or a Llama folder (built from a config, saved
with save_pretrained) with plain transformers and runs inference under the in-process agent (as
`wattlens run` does); the pruning result is a real `wattlens optimize` run stored by the CLI. Each
recommended command is then parsed with the CLI's own parser and run through `optimize`: it must
not be refused as bad input.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.agent_sessions import record_agent_session
from tests.test_actions_helpers import save_char_tokenizer, save_hf, tiny_gpt2
from wattlens.advisor.features import extract_features
from wattlens.advisor.optimize import QualityLossError, optimize
from wattlens.advisor.rules import evaluate_all
from wattlens.app.cli import build_parser
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.store import Store

TEXT = Path(__file__).parent / "fixtures" / "text" / "heal.txt"
QUICK = {"n_rounds": 1, "warmup_batches": 1, "min_window_s": 0.02, "batch_size": 2, "seq_len": 16}

CHILD = """
import sys, time, torch
from transformers import AutoModelForCausalLM
from wattlens.profiler import agent
torch.set_num_threads(1)
m = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
agent.watch(m)
x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
with torch.no_grad():
    while time.monotonic() < end:
        m(input_ids=x)
        agent.step(samples=4, tokens=4 * 32)
"""


def _gpt2(folder: Path) -> Path:
    # width 256: the Linear weights are large enough (≥ 256 × 256) for the int8 rule's size gate
    save_hf(tiny_gpt2(n_layer=2, n_embd=256, n_head=4), folder)
    save_char_tokenizer(folder)
    return folder


def _llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=688, vocab_size=256, max_position_embeddings=128)
    save_hf(LlamaForCausalLM(config).eval(), folder)
    save_char_tokenizer(folder)
    return folder


def _agent_session(store: Store, script: Path, folder: Path, name: str, seconds: float = 8.0) -> int:
    return record_agent_session(store, [sys.executable, str(script), str(seconds), str(folder)],
                                name=name, wait_s=300)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    store = Store(root / "w.db")
    script = root / "child.py"
    script.write_text(CHILD)
    folders = {"gpt2": _gpt2(root / "gpt2"), "llama": _llama(root / "llama")}
    ids = {k: _agent_session(store, script, f, f"{k} inference") for k, f in folders.items()}
    yield store, ids, folders
    store.close()


def _recs(store, sid, **texts):
    f = extract_features(store, sid, **texts)
    recs, silent = evaluate_all(f)
    return f, {r.rule: r for r in recs}, {s["rule"]: s for s in silent}


def _run_command(command: str, notes: tuple[str, ...], folder: Path, tmp: Path, **kwargs):
    """Do what the card says: the export lines (if any) with MODEL = ``folder``, then the command,
    parsed by the CLI's parser, through ``optimize``. Returns the OptimizeResult."""
    import torch
    import transformers

    pt = tmp / "model.pt"
    for note in notes:
        m = re.search(r"`import torch, transformers` and `(torch\.save\(.*?\))`", note)
        if m:
            exec(m.group(1).replace('"MODEL"', repr(str(folder))).replace('"MODEL.pt"', repr(str(pt))),
                 {"torch": torch, "transformers": transformers})
            assert pt.is_file()
    argv = shlex.split(command)
    assert argv[:2] == ["wattlens", "optimize"]
    text = " ".join(argv[2:])
    text = text.replace("MODEL.pt", str(pt))
    text = re.sub(r"--out \S+", f"--out {tmp / 'out'}", text)
    text = text.replace("MODEL", str(folder))
    args = build_parser().parse_args(["optimize", *shlex.split(text)])
    try:
        return optimize(args.model, args.action, args.out, trust_pickle=args.trust_pickle,
                        calibration=args.calibration, tokenizer=args.tokenizer, heal_steps=args.heal_steps,
                        heal_text=args.heal_text, max_quality_loss=args.max_quality_loss, **QUICK, **kwargs)
    except QualityLossError as exc:  # measured and refused by the user's bound: not bad input
        return exc.result


def test_features_see_gpt2_conv1d_and_none_in_llama(sessions):
    store, ids, _ = sessions
    gpt2, llama = extract_features(store, ids["gpt2"]), extract_features(store, ids["llama"])
    assert gpt2.model_class == "GPT2LMHeadModel" and llama.model_class == "LlamaForCausalLM"
    assert gpt2.conv1d_share_of_linear > 0.5  # the blocks' projections; only lm_head is a Linear
    assert not llama.conv1d_share_of_linear
    for f in (gpt2, llama):
        assert f.is_training is False and f.cpu_inference is True and f.linear_params_median >= 256 * 256


def test_gpt2_int8_card_gives_the_module_file_path_and_it_is_accepted(sessions, tmp_path):
    store, ids, folders = sessions
    f, recs, _ = _recs(store, ids["gpt2"])
    rec = recs["quantize-int8"]
    # the folder command would be refused: the card must not give it
    with pytest.raises(BadInputError, match="Conv1D"):
        optimize(folders["gpt2"], "quantize-int8", tmp_path / "refused", **QUICK)
    assert rec.command.startswith("wattlens optimize MODEL.pt --trust-pickle --action quantize-int8 ")
    assert any("Conv1D share" in e.what for e in rec.evidence)
    assert any("transformers.GPT2LMHeadModel.from_pretrained" in n and "Conv1D" in n for n in rec.notes)
    result = _run_command(rec.command, rec.notes, folders["gpt2"], tmp_path)
    quant = result.actions[-1]
    assert quant.claim.holds and quant.details["conv1d_converted"] == 8


def test_llama_int8_card_keeps_the_folder_command_and_it_is_accepted(sessions, tmp_path):
    store, ids, folders = sessions
    _, recs, _ = _recs(store, ids["llama"])
    rec = recs["quantize-int8"]
    # the child loaded the folder with from_pretrained: the agent said which, so the card names it
    folder = folders["llama"]
    assert rec.command == f"wattlens optimize {folder} --action quantize-int8 --out {folder}-quantize-int8"
    assert not any(e.what.startswith("Conv1D share") for e in rec.evidence)
    result = _run_command(rec.command, rec.notes, folders["llama"], tmp_path)
    assert result.actions[-1].claim.holds and "TorchAoConfig" in result.actions[-1].details["backend"]


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_static_int8_needs_calibration_text_and_its_command_is_accepted(sessions, tmp_path, model):
    store, ids, folders = sessions
    _, recs, silent = _recs(store, ids[model])
    assert "quantize-int8-static" not in recs and "--calibration" in silent["quantize-int8-static"]["needs"]
    _, recs, _ = _recs(store, ids[model], calibration_text=str(TEXT))
    rec = recs["quantize-int8-static"]
    # static scales never fit a folder's config.json: always the module-file path, on the user's text
    assert rec.command.startswith("wattlens optimize MODEL.pt --trust-pickle --action quantize-int8-static ")
    # the tokenizer is the folder the child loaded (the agent said which)
    assert f"--tokenizer {folders[model]} --calibration {TEXT}" in rec.command
    assert rec.predicted_saving.method.startswith("rule of thumb") and "regression:" in " ".join(rec.notes)
    result = _run_command(rec.command, rec.notes, folders[model], tmp_path)
    static = result.actions[-1]
    assert static.claim.holds and str(TEXT) in static.details["calibration"]
    assert static.details["calibration_samples"] >= 1


def test_static_int8_prediction_learns_from_stored_static_results(sessions):
    store, ids, _ = sessions
    f = extract_features(store, ids["llama"], calibration_text=str(TEXT))
    from wattlens.advisor.features import ab_points
    from wattlens.advisor.rules import quantize_int8_static

    rows = [{"action": "quantize-int8-static", "saving_fraction": s, "params": f.model_params * k,
             "model_key": f"m{k}"} for k, s in ((1, 0.2), (2, 0.25), (4, 0.3))]
    import dataclasses

    rec, = quantize_int8_static.evaluate(dataclasses.replace(f, ab_history=ab_points(rows)))
    assert rec.predicted_saving.method.startswith("regression (mean of earlier savings on 3 earlier A/B results "
                                                  "of quantize-int8-static")
    assert rec.predicted_saving.fraction == pytest.approx(0.25)


# --------------------------------------------------------------------------- healing


@pytest.fixture(scope="module")
def refused_pruning(tmp_path_factory):
    """Real `wattlens optimize ... --max-quality-loss` runs, refused by their bound and stored by the
    CLI: prune-layers on a GPT-2 folder with a tokenizer, prune-heads on a GPT-2 module file."""
    from wattlens.app.cli import main

    root = tmp_path_factory.mktemp("heal")
    folder = save_hf(tiny_gpt2(n_layer=4), root / "gpt2")
    save_char_tokenizer(folder)
    import torch

    torch.save(tiny_gpt2(n_layer=4), root / "gpt2.pt")
    db = root / "w.db"
    # prune-heads on the module file: it is the pruning that exists only there (prune-layers on a
    # module file does not reload yet: its config change is not replayed by load_optimized)
    for model, spec, out in ((folder, "prune-layers:0.5", "out"), (root / "gpt2.pt", "prune-heads:0.5", "out-pt")):
        extra = ["--trust-pickle"] if str(model).endswith(".pt") else []
        code = main(["optimize", str(model), "--action", spec, "--max-quality-loss", "0.0001",
                     "--out", str(root / out), "--rounds", "2", "--db", str(db), "--json", *extra])
        assert code == 1  # refused: the loss exceeds the bound, nothing written
        assert not (root / out).exists()
    store = Store(db)
    sids = sorted(s["id"] for s in store.sessions())  # folder run first, module file second
    yield store, sids, folder
    store.close()


def test_heal_rule_recommends_healing_with_the_measured_loss_and_the_command_runs(refused_pruning, tmp_path):
    store, (sid, _), folder = refused_pruning
    _, recs, silent = _recs(store, sid)
    assert "heal" not in recs
    assert "--heal-text FILE" in silent["heal"]["reason"] and "0.0001" in silent["heal"]["reason"]
    _, recs, _ = _recs(store, sid, heal_text=str(TEXT))
    rec = recs["heal"]
    stored = store.actions(sid)[0]
    loss = stored["result"]["fidelity"]["quality_loss"]
    assert loss > 0.0001 and stored["status"] == "refused"
    ev = {e.what: e.value for e in rec.evidence}
    assert ev[f"quality loss of prune-layers:0.5 ({stored['result']['fidelity']['quality_metric']})"] == \
        pytest.approx(loss, abs=1e-6)
    assert ev["your --max-quality-loss"] == 0.0001
    measured = stored["result"]["verification"]["saving_fraction"]
    assert rec.predicted_saving.fraction == pytest.approx(measured)
    assert rec.predicted_saving.method.startswith(f"measured A/B of optimize result #{stored['id']}")
    assert rec.command == (f"wattlens optimize {folder} --action prune-layers:0.5 --heal-steps 100 "
                           f"--heal-text {TEXT} --max-quality-loss 0.0001 --out {folder}-prune-layers-05-healed")
    command = rec.command.replace("--heal-steps 100", "--heal-steps 20")  # the same command, shorter
    result = _run_command(command, rec.notes, folder, tmp_path)
    assert result.healing["steps"] == 20
    assert result.healing["held_out_kl_after"] < result.healing["held_out_kl_before"]


def test_heal_rule_is_silent_with_the_reason_for_a_module_file(refused_pruning):
    store, (_, sid_pt), _ = refused_pruning
    _, recs, silent = _recs(store, sid_pt, heal_text=str(TEXT))
    assert "heal" not in recs
    assert "no tokenizer" in silent["heal"]["reason"]


def test_tokenizer_markers_are_files_the_loader_reads():
    from wattlens.advisor.features import TOKENIZER_MARKERS
    from wattlens.advisor.modelio import TOKENIZER_FILES

    assert set(TOKENIZER_MARKERS) <= set(TOKENIZER_FILES)


def test_tokenizer_option_is_for_module_files_and_must_load(tmp_path):
    import torch

    folder = save_hf(tiny_gpt2(), tmp_path / "gpt2")
    with pytest.raises(BadInputError, match="--tokenizer is for a torch module file"):
        optimize(folder, "quantize-int8-static", tmp_path / "out", tokenizer=folder, **QUICK)
    torch.save(tiny_gpt2(), tmp_path / "m.pt")
    with pytest.raises(BadInputError, match="--tokenizer .*no tokenizer files"):
        optimize(tmp_path / "m.pt", "quantize-int8-static", tmp_path / "out", tokenizer=folder,
                 trust_pickle=True, **QUICK)
    assert not (tmp_path / "out").exists()
