"""Rules on a REAL agent session: a child launched with the in-process agent (AgentServer +
launch, as `wattlens run` does), its per-instance layer timing, steps, FLOPs and model report
stored by a ProfilingSession. The agent link's hello info is stored as an event, which is where
the features read the model's dtype, device and module table from.
"""

from __future__ import annotations

import sys

import pytest

from tests.agent_sessions import record_agent_session
from wattlens.advisor.features import extract_features
from wattlens.advisor.rules import evaluate_all
from wattlens.profiler.store import Store

CHILD = """
import sys, time, torch
from torch import nn
from wattlens.profiler import agent
torch.set_num_threads(1)
class Attention(nn.Module):
    def __init__(s, d):
        super().__init__(); s.qkv = nn.Linear(d, 3 * d); s.out = nn.Linear(d, d)
    def forward(s, x):
        q, k, v = s.qkv(x).chunk(3, -1)
        return s.out(torch.softmax(q @ k.transpose(-1, -2) / 8, -1) @ v)
class MLP(nn.Module):
    def __init__(s, d):
        super().__init__(); s.fc = nn.Linear(d, 4 * d); s.proj = nn.Linear(4 * d, d)
    def forward(s, x):
        return s.proj(nn.functional.gelu(s.fc(x)))
class Block(nn.Module):
    def __init__(s, d):
        super().__init__(); s.attn = Attention(d); s.mlp = MLP(d)
    def forward(s, x):
        x = x + s.attn(x)
        return x + s.mlp(x)
class Net(nn.Module):
    def __init__(s, d=192, n=2):
        super().__init__(); s.blocks = nn.ModuleList([Block(d) for _ in range(n)])
    def forward(s, x):
        for b in s.blocks:
            x = b(x)
        return x
m = Net().eval()
agent.watch(m)
x = torch.randn(8, 32, 192)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
with torch.no_grad():
    while time.monotonic() < end:
        m(x)
        agent.step(samples=8, tokens=8 * 32)
"""


@pytest.fixture(scope="module")
def agent_session(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("agent") / "w.db")
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(CHILD)
    sid = record_agent_session(store, [sys.executable, str(script), "8"], name="agent run", wait_s=120)
    yield store, sid
    store.close()


def test_agent_session_features(agent_session):
    store, sid = agent_session
    f = extract_features(store, sid)
    assert f.layer_method == "agent-timing"
    assert f.dtype == "float32" and f.device == "cpu" and f.model_class == "Net"
    assert f.model_params == 2 * (192 * 576 + 576 + 192 * 192 + 192 + 192 * 768 + 768 + 768 * 192 + 192)
    assert (f.flops_per_forward or 0) > 0 or "FLOPs" in f.reasons["flops_per_forward"]
    assert f.is_training is False and f.cpu_inference is True
    assert f.samples_per_step == 8.0 and f.energy_per_sample_j and f.energy_per_token_j
    # instance rows: every Linear is a leaf, shares are of the agent's timed window
    assert 0.3 < f.linear_share_of_model <= 1.0
    assert f.attention_share_of_model + f.mlp_share_of_model <= 1.0 + 1e-9
    assert f.linear_params_median >= 192 * 192
    cats = {t.path.split(".")[2]: t.category for t in f.top_layers if t.path.count(".") >= 2}
    assert cats.get("attn", "attention") == "attention" and cats.get("mlp", "mlp") == "mlp"


def test_agent_session_rules(agent_session):
    store, sid = agent_session
    f = extract_features(store, sid)
    recs, silent = evaluate_all(f)
    by = {r.rule: r for r in recs}
    assert "bf16" in {s["rule"] for s in silent}  # no GPU
    dominant = "prune-mlp" if f.mlp_share_of_model >= max(0.4, f.attention_share_of_model) else None
    if dominant:
        assert any("blocks." in e.what for e in by[dominant].evidence)  # instance names as evidence
    if f.cpu.flags is None or set(f.cpu.flags) & {"avx2", "avx512f", "asimd"}:
        q = by["quantize-int8"]
        assert any(e.what == "model dtype" and e.value == "float32" for e in q.evidence)
        assert any(e.what == "median Linear weight size" for e in q.evidence)
