"""Live Apply / Revert in run mode (issue 5): real models, real child processes, real agent link."""

import json
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WORKLOADS, run_cli
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.store import Store

LOOP = str(WORKLOADS / "live_apply_loop.py")


def _checksums(text: str) -> list[str]:
    """The child's per-step output hashes, in step order (our own stderr notes may share its lines)."""
    by_step = {int(i): h for i, h in re.findall(r"(\d+) ([0-9a-f]{40})\b", text)}
    return [by_step[i] for i in range(len(by_step))]


# ---- the agent side, in process: apply then revert gives back the exact model ------------------
def _gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)).eval()
    return torch, model, torch.randint(0, 256, (2, 16))


def test_quantize_swaps_conv1d_and_revert_restores_the_same_modules_and_outputs():
    from wattlens.profiler.agent import live

    torch, model, ids = _gpt2()
    with torch.no_grad():
        before = model(ids).logits.clone()
    c_fc = model.transformer.h[0].mlp.c_fc
    rec = live.Applied(id="q", action="quantize-int8", step=3)
    live.apply(torch, model, rec)
    assert "torchao" in type(model.transformer.h[0].mlp.c_fc.weight).__module__  # Conv1D → int8 Linear
    assert "torchao" in type(model.lm_head.weight).__module__
    with torch.no_grad():
        quantized = model(ids).logits
    assert not torch.equal(quantized, before)
    assert torch.allclose(quantized, before, atol=0.5)  # same model, int8 weights
    live.revert(torch, rec)
    assert model.transformer.h[0].mlp.c_fc is c_fc  # the original module object is back
    assert model.lm_head.weight is model.transformer.wte.weight  # tying intact
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_prune_is_permanent_until_revert_which_restores_exact_weights():
    from wattlens.profiler.agent import live

    torch, model, ids = _gpt2()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    rec = live.Applied(id="p", action="prune-unstructured:0.5", step=0)
    live.apply(torch, model, rec)
    w = model.transformer.h[0].attn.c_attn.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert not hasattr(model.transformer.h[0].attn.c_attn, "weight_orig")  # made permanent
    live.revert(torch, rec)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_unknown_actions_and_bf16_on_cpu_are_refused_without_touching_the_model():
    from wattlens.profiler.agent import live

    torch, model, _ = _gpt2()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    for action, why in (("frobnicate", "unknown live action"), ("bf16", "only where the model runs on CUDA"),
                        ("prune-unstructured:2", "between 0 and 1")):
        with pytest.raises(live.Refused, match=why):
            live.apply(torch, model, live.Applied(id="x", action=action, step=0))
    assert all(torch.equal(v, original[k]) and v.dtype == original[k].dtype
               for k, v in model.state_dict().items())


# ---- end to end through `wattlens run` ------------------------------------------------------------
def test_run_apply_quantize_then_revert_reports_before_after_and_restores_outputs(tmp_path):
    db = tmp_path / "w.db"
    steps = 200  # the host applies and reverts while the loop runs on: room for a slow host
    r = run_cli("run", "--db", str(db), "--json", "--apply", "quantize-int8", "--after-steps", "12",
                "--revert-after-steps", "36", "--", sys.executable, LOOP, "gpt2", str(steps), "0.02",
                str(tmp_path / "sums.txt"), timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (action,) = doc["actions"]
    assert action["action"] == "quantize-int8" and action["status"] == "reverted"
    first, back = action["step_applied"], action["step_reverted"]
    assert 12 <= first < back <= steps
    sums = _checksums((tmp_path / "sums.txt").read_text())  # apart from torch/torchao's own stderr lines
    assert len(sums) == steps
    # the forward of step `first` is the first one on the quantized model; `back` the first after
    assert set(sums[:first]) == {sums[0]}
    assert sums[0] not in sums[first:back]
    assert set(sums[back:]) == {sums[0]}  # reverted: bit-identical outputs again
    assert action["before_j_per_sample"] > 0 and action["after_j_per_sample"] > 0
    assert action["before_steps"] >= first - 1 and action["after_steps"] >= back - first - 2
    assert "J/sample" in action["measured_text"] and action["predicted_text"] == "no prediction (live apply)"
    # the change as every other measured saving reads: signed, with its direction and interval
    # (it read a bare "(-0.9%)")
    b, f = action["before_j_per_sample"], action["after_j_per_sample"]
    assert action["saving_fraction"] == pytest.approx((b - f) / b)
    low, high = action["saving_interval"]
    assert low < action["saving_fraction"] < high
    assert "energy per sample (" in action["measured_text"] and "95 % CI" in action["measured_text"]
    store = Store(db)
    (row,) = store.actions(doc["session_id"])
    assert row["kind"] == "quantize-int8" and row["status"] == "reverted"
    assert row["result"]["before_j_per_sample"] == action["before_j_per_sample"]
    kinds = [e.kind for e in store.events(doc["session_id"])]
    assert "action-applied" in kinds and "action-reverted" in kinds
    assert len(store.steps(doc["session_id"])) == steps  # steps after the apply are stored too


def test_run_apply_rejects_an_action_that_cannot_run_live(tmp_path):
    r = run_cli("run", "--db", str(tmp_path / "w.db"), "--apply", "distill", "--", sys.executable, "-c", "0")
    assert r.returncode == 2
    assert "live actions are: quantize-int8" in r.stderr and "Traceback" not in r.stderr


# ---- RunSession: refusals and the batch_size knob -------------------------------------------------
def _wait(cond, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the target"
        time.sleep(0.05)


@pytest.fixture
def run_session(tmp_path):
    from wattlens.profiler.runmode import RunSession
    from wattlens.profiler.sources import discover

    out = open(tmp_path / "child.out", "w")
    sessions = []

    def make(*args: str):
        run = RunSession(Store(tmp_path / "w.db"), [sys.executable, LOOP, *args],
                         discovery=discover(gpu=False), stdout=out)
        sessions.append(run)
        run.start()
        return run

    yield make, Path(out.name)
    for run in sessions:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    out.close()


def test_refusals_are_events_and_rows_and_a_live_prune_reverts_exactly(run_session):
    make, out_path = run_session
    run = make("linear", "100000", "0.01")  # runs until the test is done with it (killed below)
    _wait(lambda: run.steps_seen >= 5)
    with pytest.raises(BadInputError, match="live actions are"):
        run.apply("distill")
    bf16 = run.apply("bf16")  # valid spec, but the model runs on CPU: the agent says no
    # an unknown action that reaches the agent anyway is refused there, never executed
    run.server._send_to_model_clients({"type": "apply", "action": "rm -rf", "id": "raw"})
    prune = run.apply("prune-unstructured:0.5")
    _wait(lambda: run.actions[prune]["status"] == "applied")
    applied_at = run.steps_seen
    _wait(lambda: run.steps_seen >= applied_at + 10)
    run.revert(prune)
    _wait(lambda: run.actions[prune]["status"] == "reverted")
    reverted_at = run.steps_seen
    _wait(lambda: run.steps_seen >= reverted_at + 10)
    summary = run.stop()
    assert run.actions[bf16]["status"] == "refused" and "only where the model runs on CUDA" in run.actions[bf16]["reason"]
    by_action = {a["action"]: a for a in summary["actions"]}
    assert by_action["bf16"]["before_j_per_sample"] is None and "refused" in by_action["bf16"]["measured_text"]
    assert by_action["prune-unstructured:0.5"]["status"] == "reverted"
    assert by_action["prune-unstructured:0.5"]["after_j_per_sample"] is not None
    store = run.store
    sid = run.session.session_id
    rows = {r["kind"]: r for r in store.actions(sid)}
    assert rows["distill"]["status"] == "refused" and rows["bf16"]["status"] == "refused"
    assert rows["prune-unstructured:0.5"]["status"] == "reverted"
    refused = [e for e in store.events(sid) if e.kind == "action-refused"]
    assert {e.data.get("action") for e in refused} >= {"distill", "bf16", "rm -rf"}
    assert any("unknown live action" in e.data.get("reason", "") for e in refused)
    a = by_action["prune-unstructured:0.5"]
    run.proc.kill()  # no line half-written while we read
    run.proc.wait()
    sums = _checksums(out_path.read_text())
    first, back = a["step_applied"], a["step_reverted"]
    assert set(sums[:first]) == {sums[0]} and sums[0] not in sums[first:back]
    assert set(sums[back:]) == {sums[0]}


def test_batch_size_knob_change_gets_before_after_energy_per_sample(run_session):
    make, _ = run_session
    run = make("knob", "3000", "0.002")
    _wait(lambda: run.steps_seen >= 40)
    run.set_knob("batch_size", 16)
    (key,) = run.actions
    _wait(lambda: run.actions[key]["status"] == "applied")
    applied_at = run.steps_seen
    _wait(lambda: run.steps_seen >= applied_at + 60)  # enough CPU time for the sampler to see
    summary = run.stop()
    (a,) = summary["actions"]
    assert a["action"] == "knob:batch_size=16" and a["status"] == "applied"
    assert a["before_j_per_sample"] > 0 and a["after_j_per_sample"] > 0
    steps = run.store.steps(run.session.session_id)
    assert {s.samples for s in steps} >= {4, 16}
    (row,) = run.store.actions(run.session.session_id)
    assert row["params"] == {"name": "batch_size", "value": 16, "previous": 4}


def test_quantize_is_refused_with_the_reason_where_torchao_is_missing(monkeypatch):
    import sys

    from wattlens.profiler.agent import live

    torch, model, ids = _gpt2()
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao → ImportError, as without it
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    c_fc = model.transformer.h[0].mlp.c_fc
    with pytest.raises(live.Refused, match="needs torchao"):
        live.apply(torch, model, live.Applied(id="q", action="quantize-int8", step=1))
    assert model.transformer.h[0].mlp.c_fc is c_fc
