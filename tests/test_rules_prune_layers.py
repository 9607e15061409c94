"""The prune-layers rule suggests a fraction `wattlens optimize` accepts: it reads the block count
from the session (a user trial got `prune-layers:0.25` for a 2-block model, which removes 0 blocks
and was refused) and stays silent on a model of one block. Sessions are REAL agent runs of a
GPT-2 built from a small config."""

from __future__ import annotations

import sys

import pytest

from tests.agent_sessions import record_agent_session
from wattlens.advisor.actions import parse_action
from wattlens.advisor.features import extract_features
from wattlens.advisor.rules import evaluate_all, prune_layers
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.store import Store

CHILD = """
import sys, time, torch
from transformers import GPT2Config, GPT2LMHeadModel
from wattlens.profiler import agent
torch.set_num_threads(1)
torch.manual_seed(0)
m = GPT2LMHeadModel(GPT2Config(n_layer=int(sys.argv[2]), n_embd=128, n_head=2, vocab_size=1000,
                               n_positions=128)).eval()
agent.watch(m)
x = torch.randint(0, 1000, (4, 64))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
with torch.no_grad():
    while time.monotonic() < end:
        m(input_ids=x)
        agent.step(samples=4, tokens=4 * 64)
"""


def gpt2(n_layer: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100,
                                      n_positions=32)).eval()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("blocks") / "w.db")
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(CHILD)
    ids = {n: record_agent_session(store, [sys.executable, str(script), "6", str(n)],
                                   name=f"gpt2 {n} blocks", wait_s=180) for n in (2, 1)}
    yield store, ids
    store.close()


def test_a_two_block_model_gets_a_fraction_optimize_accepts(sessions):
    store, ids = sessions
    f = extract_features(store, ids[2])
    assert f.n_blocks == 2 and f.n_blocks_source == "agent module table"
    assert f.is_training is False and f.attention_share_of_model + f.mlp_share_of_model >= 0.6
    recs, _ = evaluate_all(f)
    (rec,) = [r for r in recs if r.rule == "prune-layers"]
    assert rec.action == "prune-layers:0.5" and "--action prune-layers:0.5" in rec.command
    assert rec.title.startswith("Prune 1 of the 2 decoder blocks")
    assert any(e.what == "blocks in the model" and e.value == 2 for e in rec.evidence)
    # the prediction is for the suggested fraction: 30–50 % of the blocks' share of the time
    share = f.attention_share + f.mlp_share
    ps = rec.predicted_saving
    assert ps.high == pytest.approx(0.5 * share, abs=1e-6) and ps.low == pytest.approx(0.3 * share, abs=1e-6)
    # and the action accepts it on the same model: one block goes
    model = gpt2(2)
    action = parse_action(rec.action)
    action.check_applicable(model)
    assert len(action.apply(model).transformer.h) == 1


def test_a_one_block_model_gets_no_block_pruning_and_says_why(sessions):
    store, ids = sessions
    f = extract_features(store, ids[1])
    assert f.n_blocks == 1
    recs, silent = evaluate_all(f)
    assert "prune-layers" not in {r.rule for r in recs}
    (entry,) = [s for s in silent if s["rule"] == "prune-layers"]
    assert "1 block" in entry["reason"] and "prune-mlp" in entry["reason"]


@pytest.mark.parametrize("n", range(1, 9))
def test_the_planned_fraction_removes_what_it_says_on_a_real_model(n):
    model = gpt2(n)
    plan = prune_layers.plan(n)
    if n < 2:
        assert plan is None
        with pytest.raises(BadInputError, match="none to spare"):
            parse_action("prune-layers:0.25").check_applicable(model)
        return
    fraction, k = plan
    assert 1 <= k <= n - 1
    if round(0.25 * n) >= 1:
        assert fraction == 0.25  # the quarter stays where it removes a block
    action = parse_action(f"prune-layers:{fraction:g}")
    action.check_applicable(model)
    assert len(action.apply(model).transformer.h) == n - k


def test_a_refused_fraction_names_one_that_works():
    with pytest.raises(BadInputError) as err:
        parse_action("prune-layers:0.25").check_applicable(gpt2(2))
    assert "removes 0 of 2 blocks" in str(err.value) and "prune-layers:0.5" in str(err.value)
    assert "between 1 and 1" not in str(err.value)
