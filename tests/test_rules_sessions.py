"""Rules on features of REAL recorded sessions: a child Python process running torch, measured by
ProfilingSession into a tmp Store; layer costs built by the stack sampler's own aggregation
(``profiler.stacks.parse.aggregate``) from sample counts, as the stack sampler would store them.
GPU sessions use the fake NVML (the hardware boundary) with an H100 / T4 name.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests import fake_nvml
from tests.conftest import start_torch_child
from wattlens.advisor.features import extract_features
from wattlens.advisor.rules import RULES, evaluate_all
from wattlens.profiler.process import Target
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.stacks.parse import Attribution, aggregate
from wattlens.profiler.store import Store

# A Linear-heavy inference loop (GPT-2-like MLP widths), one thread, no autograd.
INFERENCE_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).eval()
x = torch.randn(8, 256)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
with torch.no_grad():
    while time.monotonic() < end:
        m(x)
"""

GPT2 = "GPT2LMHeadModel/GPT2Model/GPT2Block"
BERT = "BertModel/BertEncoder/BertLayer"

# Sample counts per attribution (leaf paths; aggregate() builds every ancestor row).
MLP_HEAVY = {
    f"{GPT2}/GPT2MLP/Conv1D": 120, f"{GPT2}/GPT2MLP/NewGELUActivation": 10,
    f"{GPT2}/GPT2Attention/Conv1D": 30, f"{GPT2}/GPT2Attention": 10,
    "GPT2LMHeadModel/Linear": 20, f"{GPT2}/LayerNorm": 5,
}
ATTENTION_HEAVY = {
    f"{BERT}/BertAttention/BertSelfAttention/Linear": 60, f"{BERT}/BertAttention/BertSelfAttention": 50,
    f"{BERT}/BertAttention/BertSelfOutput/Linear": 20, f"{BERT}/BertIntermediate/Linear": 15,
    f"{BERT}/BertOutput/Linear": 15, "[bucket]data loading": 60,
}
TRAINING = {
    f"{GPT2}/GPT2MLP/Conv1D": 80, f"{GPT2}/GPT2Attention/Conv1D": 40,
    "[bucket]backward": 100, "[bucket]optimizer": 20,
}


def _counts(spec: dict[str, int]) -> Counter:
    out: Counter = Counter()
    for key, n in spec.items():
        if key.startswith("[bucket]"):
            out[Attribution((), key.removeprefix("[bucket]"))] += n
        else:
            out[Attribution(tuple(key.split("/")))] += n
    return out


def _record(store: Store, pid: int | None, *, layers: dict[str, int] | None = None, gpu: bool = False,
            seconds: float = 2.0, name: str = "test") -> int:
    """One real session of ``pid`` (None: the whole machine); layer rows as the stack sampler
    stores them, with the window energy attributed by the session itself."""
    session = ProfilingSession(store, target=Target(pid) if pid else None, kind="attach", name=name,
                               interval_s=0.1, discovery=discover(gpu=gpu), stacks=False)
    sid = session.start()
    time.sleep(seconds)
    if layers:
        t0 = session.start_ns
        t1 = session.start_ns + int((seconds - 0.3) * 1e9)
        rows = aggregate(_counts(layers), window_start_ns=t0, window_end_ns=t1, rate_hz=100.0,
                         window_energy_j=session.attributed_energy_between(t0, t1))
        session.add_layer_costs(rows)
    session.stop("completed", "test duration reached")
    return sid


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Sessions recorded once for the module: {label: session id} and the store."""
    store = Store(tmp_path_factory.mktemp("rules") / "w.db")
    # children that outlive every recording however slow the machine (they are killed below)
    child = subprocess.Popen([sys.executable, "-c", INFERENCE_CHILD, "600"], stdout=subprocess.PIPE, text=True)
    trainer = start_torch_child(600)
    try:
        assert child.stdout.readline().strip() == "ready"
        ids = {
            "mlp": _record(store, child.pid, layers=MLP_HEAVY, name="cpu inference, MLP-heavy"),
            "attention": _record(store, child.pid, layers=ATTENTION_HEAVY, name="attention + data loading"),
            "training": _record(store, trainer.pid, layers=TRAINING, name="training"),
            "bare": _record(store, None, seconds=1.0, name="machine only"),
            "no-layers": _record(store, child.pid, name="no layer costs"),
        }
        from wattlens.profiler.sources import nvml

        # the GPU's idle power as an earlier session measured it (the fake GPU is always busy here)
        store.record_gpu_idle("GPU-fake-0", 60.0, 5.0)
        for label, gpu_name in (("h100", "NVIDIA H100 80GB HBM3"), ("t4", "Tesla T4")):
            mp = pytest.MonkeyPatch()
            try:
                gpu = fake_nvml.FakeGpu(name=gpu_name, power_w=120.0)
                gpu.sm_util = {child.pid: 20}
                gpu.processes = {child.pid: 8 * 2**30}
                fake_nvml.install(mp, [gpu])
                ids[label] = _record(store, child.pid, layers=MLP_HEAVY, gpu=True, name=label)
            finally:
                mp.undo()
                nvml.shutdown()
    finally:
        for p in (child, trainer):
            p.kill()
            p.wait(timeout=10)
            p.stdout.close()
    yield store, ids
    store.close()


def _by_rule(store, sid):
    feats = extract_features(store, sid)
    recs, silent = evaluate_all(feats)
    return feats, {r.rule: r for r in recs}, {s["rule"] for s in silent}


def test_cpu_inference_mlp_heavy_session(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["mlp"])
    # the features are what the recording measured
    assert f.gpus == () and f.cpu_inference is True and f.is_training is False
    assert f.target_cpu_pct_mean is not None and 0 < f.target_cpu_pct_mean <= 100 * f.cpu.logical_cores
    assert f.layer_method == "stack-sampling"
    assert f.mlp_share_of_model == pytest.approx(130 / 195)
    assert f.attention_share_of_model == pytest.approx(40 / 195)
    assert f.linear_share_of_model == pytest.approx(170 / 195)
    assert f.outside_model_share == 0.0
    assert f.dtype is None and "dtype" in f.reasons
    # rules that have their evidence fire; the others stay silent
    assert "prune-mlp" in recs and "prune-heads" in silent
    assert recs["prune-mlp"].action == "prune-mlp:0.25"
    layers = recs["prune-layers"]  # blocks take (130 + 40) / 195 of the model's time
    assert layers.action == "prune-layers:0.25" and "--action prune-layers:0.25" in layers.command
    assert layers.predicted_saving.high <= f.mlp_share + f.attention_share + 1e-9
    assert "--heal-steps" in layers.risk.text
    assert recs["prune-mlp"].predicted_saving.method.startswith("rule of thumb")
    assert recs["prune-mlp"].confidence == "low"
    assert any("GPT2MLP" in e.what for e in recs["prune-mlp"].evidence)  # layer names in the evidence
    assert "bf16" in silent and "input-pipeline" in silent
    unstructured = recs["prune-unstructured"]
    assert unstructured.predicted_saving.fraction == 0.0 and "no speed" in unstructured.rationale
    cpu_int8_capable = f.cpu.flags is None or bool(set(f.cpu.flags) & {"avx2", "avx512f", "asimd"})
    assert ("quantize-int8" in recs) == cpu_int8_capable
    if cpu_int8_capable:
        q = recs["quantize-int8"]
        assert q.action == "quantize-int8" and "--action quantize-int8" in q.command
        ps = q.predicted_saving
        assert ps.low <= ps.fraction <= ps.high and ps.high <= f.linear_share + 1e-9


def test_attention_heavy_with_data_loading(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["attention"])
    assert f.attention_share_of_model == pytest.approx(130 / 160)
    assert f.outside_shares["data loading"] == pytest.approx(60 / 220)
    assert "prune-heads" in recs and "prune-mlp" in silent
    assert recs["prune-heads"].action == "prune-heads:0.25"
    assert recs["prune-heads"].risk.level == "high"
    pipe = recs["input-pipeline"]
    assert pipe.action is None and "num_workers" in pipe.rationale
    assert pipe.predicted_saving.high == pytest.approx(60 / 220, abs=1e-6)


def test_training_session_gets_no_int8_and_a_training_risk(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["training"])
    assert f.is_training is True and "backward" in f.training_evidence
    assert "quantize-int8" in silent
    if "batch-size" in recs:
        assert recs["batch-size"].risk.level == "medium" and "learning rate" in recs["batch-size"].risk.text


def test_session_without_evidence_gets_silence(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["bare"])
    assert recs == {}
    assert silent == {r.RULE for r in RULES}
    assert f.layer_method is None and f.target_cpu_pct_mean is None and f.is_training is None
    assert {"layers", "gpu", "target_cpu_pct_mean", "is_training"} <= set(f.reasons)


def test_no_layer_costs_silences_layer_rules(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["no-layers"])
    assert {"quantize-int8", "prune-heads", "prune-mlp", "prune-layers", "prune-unstructured",
            "input-pipeline"} <= silent
    assert f.is_training is None
    # the only evidence is the target's CPU use: one thread on this machine's cores
    # (on a machine other processes kept busy the rule says contention or nothing: see below)
    contended = 1.0 - f.cpu_util_mean_pct / 100.0 < 0.25
    if f.cpu.logical_cores >= 2 and f.target_core_fraction < 0.6 and not contended:
        b = recs["batch-size"]
        assert b.predicted_saving.is_measure_first and "--batch-sizes" in b.predicted_saving.measure_command
    elif contended:
        assert "batch-size" in silent


def test_h100_with_low_utilisation(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["h100"])
    assert f.gpu_names == ("NVIDIA H100 80GB HBM3",)
    assert f.gpu_util_mean_pct == pytest.approx(20.0)
    assert f.gpus[0].idle_power_w == 60.0  # the remembered idle, not this busy session's minimum
    assert f.gpu_memory_headroom_fraction == pytest.approx(0.9)
    assert f.gpu_used_by_target is True and f.cpu_inference is False
    bf = recs["bf16"]
    assert bf.action == "bf16" and "Hopper" in bf.title
    assert any(e.value == "NVIDIA H100 80GB HBM3" for e in bf.evidence)
    assert "quantize-int8" in silent  # the model is on the GPU
    batch = recs["batch-size"]
    assert any(e.what == "GPU utilisation, mean" for e in batch.evidence)
    ps = batch.predicted_saving
    assert ps.method.startswith("rule of thumb") and ps.low == 0.0 and ps.high <= 0.8 + 1e-9


def test_t4_gets_no_bf16(recorded):
    store, ids = recorded
    f, recs, silent = _by_rule(store, ids["t4"])
    assert f.gpu_names == ("Tesla T4",) and "bf16" in silent
    assert "batch-size" in recs


def test_stored_sweep_and_ab_history_turn_rules_into_regressions(recorded):
    store, ids = recorded
    sid = ids["mlp"]
    # a batch-size sweep of this session's model (power law) and 3 earlier A/B results of int8
    # (Store.add_measurements is one executemany: every row of one call carries the same keys)
    store.add_measurements([
        {"kind": "batch-sweep", "session_id": sid, "model_key": "m", "batch_size": b,
         "energy_per_sample_j": e, "payload": {"status": "ok" if e else "oom"}}
        for b, e in [(b, 0.5 * b ** -0.6) for b in (1, 2, 4, 8, 16)] + [(32, None)]])
    store.add_measurements([
        {"kind": "ab", "model_key": f"other-{p}", "action": "quantize-int8", "saving_fraction": s,
         "params": p} for p, s in ((10**6, 0.10), (10**7, 0.20), (10**8, 0.30))])
    try:
        f, recs, _ = _by_rule(store, sid)
        assert f.energy_per_sample_trend == "falling" and f.energy_per_sample_slope == pytest.approx(-0.6)
        b = recs["batch-size"]
        assert b.title == "Raise the batch size to 16"  # the largest that fit: 32 ran out of memory
        assert any("32 did not fit" in n for n in b.notes)
        # the session reported no samples per step: the saving cannot be stated, so measure first
        assert b.predicted_saving.is_measure_first
        # with the batch size known (the agent reports samples per step), the regression states it
        known = _rules(dataclasses.replace(f, samples_per_step=2.0))["batch-size"].predicted_saving
        assert known.method.startswith("regression (power law") and "LOO CV error" in known.method
        assert known.fraction == pytest.approx(1 - (16 / 2) ** -0.6)
        assert _rules(dataclasses.replace(f, samples_per_step=16.0)).get("batch-size") is None  # already best
        if "quantize-int8" in recs:
            q = recs["quantize-int8"].predicted_saving
            # model params unknown for this session → the mean of earlier savings, with its LOO error
            assert q.method.startswith("regression (mean of earlier savings")
            assert q.fraction == pytest.approx(0.20)
    finally:
        with store.engine.begin() as c:
            c.exec_driver_sql("DELETE FROM measurements")


# ---- gating: the same real features with one piece of evidence changed --------------------------

def _mlp_features(recorded):
    store, ids = recorded
    return extract_features(store, ids["mlp"])


def _rules(f):
    return {r.rule: r for r in evaluate_all(f)[0]}


def _cpu(f, **kw):
    return dataclasses.replace(f, cpu=dataclasses.replace(f.cpu, **kw))


def test_int8_is_gated_on_cpu_instructions_and_layer_shapes(recorded):
    f = _mlp_features(recorded)
    fast = _rules(_cpu(f, flags=("avx2", "avx512_vnni"), int8_dot_product=True))["quantize-int8"]
    slow = _rules(_cpu(f, flags=("avx2",), int8_dot_product=False))["quantize-int8"]
    assert fast.predicted_saving.low > 0  # VNNI: a saving even at the low end
    assert slow.predicted_saving.low < 0 < slow.predicted_saving.high  # without VNNI int8 can be slower
    assert any("no" == e.value for e in slow.evidence if "dot-product" in e.what)
    assert "quantize-int8" not in _rules(_cpu(f, flags=("sse4_2",), int8_dot_product=False))
    unknown = _rules(_cpu(f, flags=None, int8_dot_product=None))["quantize-int8"]
    assert any("flags unknown" in n for n in unknown.notes)
    # shapes: small Linear layers (64×64) → silent; large (768×3072) → fires with the shape as evidence
    assert "quantize-int8" not in _rules(dataclasses.replace(f, linear_params_median=64 * 64.0))
    big = _rules(dataclasses.replace(f, linear_params_median=768 * 3072.0, linear_params_source="agent"))
    assert any(e.what == "median Linear weight size" for e in big["quantize-int8"].evidence)


def test_dtype_and_training_gates(recorded):
    f = _mlp_features(recorded)
    assert "quantize-int8" not in _rules(dataclasses.replace(f, dtype="bfloat16"))
    assert "quantize-int8" not in _rules(dataclasses.replace(f, is_training=True))
    assert "quantize-int8" not in _rules(dataclasses.replace(f, is_training=None))


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA A100-SXM4-80GB", "Ampere"), ("NVIDIA H200", "Hopper"), ("NVIDIA L4", "Ada Lovelace"),
    ("NVIDIA GeForce RTX 3090", "Ampere"), ("NVIDIA GeForce RTX 4090", "Ada Lovelace"),
    ("NVIDIA RTX A6000", "Ampere"), ("NVIDIA RTX 6000 Ada Generation", "Ada Lovelace"),
    ("Tesla V100-SXM2-16GB", None), ("Tesla T4", None), ("NVIDIA GeForce RTX 2080 Ti", None),
])
def test_bf16_architecture_by_name(name, expected):
    from wattlens.advisor.rules.bf16 import bf16_architecture

    ok, arch = bf16_architecture(name)
    assert arch == expected and (ok is True) == (expected is not None)


@pytest.mark.parametrize("path,sep,cat", [
    ("BertModel/BertEncoder/BertLayer/BertAttention/BertSelfOutput/Linear", "/", "attention"),
    ("BertModel/BertEncoder/BertLayer/BertOutput/Linear", "/", "mlp"),
    ("BertModel/BertEncoder/BertLayer/BertIntermediate/Linear", "/", "mlp"),
    ("GPT2LMHeadModel/Linear", "/", "other"),
    ("encoder.layer.0.attention.output.dense", ".", "attention"),
    ("encoder.layer.0.output.dense", ".", "mlp"),
    ("model.layers.3.mlp.down_proj", ".", "mlp"),
    ("output", ".", "other"),
])
def test_layer_categories(path, sep, cat):
    from wattlens.advisor.features import category_of

    assert category_of(path, sep) == cat


def test_batch_size_rule_blames_contention_not_small_batches(tmp_path):
    """Issue 11: a one-thread inference target recorded while other processes kept every core busy.
    The batch-size rule must not say "small batches leave the other cores idle": silent, or a
    contention note. The same features on a quiet machine (machine busy = target busy) do say it."""
    import os

    from wattlens.advisor.rules import batch_size

    store = Store(tmp_path / "w.db")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    child = subprocess.Popen([sys.executable, "-c", INFERENCE_CHILD, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        sid = _record(store, child.pid, seconds=2.0, name="inference on a busy machine")
    finally:
        for p in (*busy, child):
            p.kill()
            p.wait(timeout=10)
        child.stdout.close()
    f = extract_features(store, sid)
    store.close()
    assert f.cpu_inference is True and f.others_core_fraction is not None
    assert f.others_core_fraction > 0.3, (f.cpu_util_mean_pct, f.target_core_fraction)  # the busy loops
    recs = batch_size.evaluate(f)
    machine_idle = 1.0 - f.cpu_util_mean_pct / 100.0
    if machine_idle < batch_size.MACHINE_IDLE_MIN:
        assert all("idle" not in r.rationale for r in recs)
        assert all(any("contention" in n for n in r.notes) for r in recs)
    quiet = dataclasses.replace(f, cpu_util_mean_pct=f.target_core_fraction * 100.0)
    if f.target_core_fraction < batch_size.CPU_CORE_FRACTION_LOW and f.cpu.logical_cores >= 2:
        (rec,) = batch_size.evaluate(quiet)
        assert "leave the other cores idle" in rec.rationale and not rec.notes


def test_quantize_card_names_each_share_once(recorded):
    """Issue 11: one card said "Linear 77 %" and then "74 %". Each share has one label and one value."""
    from wattlens.advisor.rules._common import pct

    store, ids = recorded
    f, recs, _silent = _by_rule(store, ids["mlp"])
    rec = recs.get("quantize-int8")
    if rec is None:
        pytest.skip("this CPU has no int8 kernels worth having: the rule is silent")
    assert f"spends {pct(f.linear_share_of_model)} of its time in Linear" in rec.rationale
    by_what = {e.what: e.value for e in rec.evidence}
    assert by_what["Linear/Conv1D share of the model's time"] == pytest.approx(f.linear_share_of_model, abs=1e-5)
    if f.linear_share is not None and pct(f.linear_share) != pct(f.linear_share_of_model):
        assert by_what["Linear/Conv1D share of all sampled time"] == pytest.approx(f.linear_share, abs=1e-5)
        assert f"({pct(f.linear_share)} of all sampled time" in rec.rationale
    if rec.predicted_saving.method.startswith("rule of thumb"):
        assert f"share of all sampled time ({pct(f.linear_share or f.linear_share_of_model)})" in \
            rec.predicted_saving.method


def test_top_layer_evidence_names_the_phases_it_adds_up():
    """show lists a module's forward and backward rows apart; the advisor's figure adds them up
    for an agent-timed training model, so its name says so (one figure, one name)."""
    from types import SimpleNamespace

    from wattlens.advisor.features import LayerShare
    from wattlens.advisor.rules._common import top_layer_evidence

    top = (LayerShare("transformer.h.3.mlp.act", "mlp", False, 3.6, 0.036),)
    train = SimpleNamespace(top_layers=top, layer_method="agent-timing", is_training=True)
    (e,) = top_layer_evidence(train)
    assert e.what == "forward + backward self time share of transformer.h.3.mlp.act"
    infer = SimpleNamespace(top_layers=top, layer_method="agent-timing", is_training=False)
    sampled = SimpleNamespace(top_layers=top, layer_method="stack-sampling", is_training=True)
    assert [top_layer_evidence(f)[0].what for f in (infer, sampled)] == \
        ["self time share of transformer.h.3.mlp.act"] * 2  # forward rows only: show's figure
