"""`wattlens optimize` end to end on a real (tiny) GPT-2-style model folder."""

import hashlib
import json

import pytest

from tests.conftest import run_cli
from wattlens.app import present
from wattlens.profiler.store import Store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("model") / "gpt"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A folder plain transformers quantizes through torchao (GPT-2's Conv1D it leaves in float)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("model") / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                                 max_position_embeddings=64, bos_token_id=0, eos_token_id=0)).save_pretrained(d)
    return d


def _hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_an_action_is_verified_stored_and_leaves_the_input_alone(model_dir, tmp_path):
    before = _hashes(model_dir)
    db, out = tmp_path / "w.db", tmp_path / "int8"
    r = run_cli("optimize", str(model_dir), "--action", "bf16", "--out", str(out), "--rounds", "2",
                "--db", str(db), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    # torchao's notices about kernels for CUDA or another CPython are not wattlens failing
    assert "Failed to load" not in r.stderr and "Detected no triton" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "verified"
    assert (out / "wattlens-optimization.json").is_file()
    assert _hashes(model_dir) == before
    assert "earlier A/B results" in doc["predicted_text"]  # nothing stored yet: measure first, no guess
    store = Store(db)
    (action,) = store.actions(doc["session_id"])
    assert action["kind"] == "bf16" and action["status"] == "verified"
    assert action["result"]["measured_text"] == doc["measured_text"]
    (ab,) = store.measurements("ab")
    assert ab["action"] == "bf16" and ab["params"] > 0
    assert store.session(doc["session_id"])["status"] == "completed"
    md = tmp_path / "r.md"
    assert run_cli("report", str(doc["session_id"]), "--format", "md", "-o", str(md), "--db", str(db)).returncode == 0
    # the stored "verified" is shown as its interval reads (never bare beside "no difference")
    shown = present.action_status_text("verified", action["result"]["verification"]["saving_interval"])
    assert doc["status_text"] == shown and shown.startswith("measured: ")
    assert f"bf16 (#1) — {shown}" in md.read_text() and "— verified" not in md.read_text()
    # this run is the measurement: its A/B line says no prediction existed, not "measure first: <this command>"
    (ab_line,) = [line for line in md.read_text().splitlines() if line.startswith("- **A/B result")]
    assert "no prediction before this run" in ab_line and "measure first" not in ab_line


def test_applied_from_a_session_shows_predicted_and_measured_in_its_reports(llama_dir, tmp_path):
    """Done-when of issue 11: apply from a stored session; its JSON, HTML and Markdown reports show
    recommended → applied → measured with the card's prediction beside the A/B result."""
    import os

    from wattlens.advisor.recommend import Evidence, Recommendation, Risk, rule_of_thumb

    db = tmp_path / "w.db"
    r = run_cli("attach", str(os.getpid()), "--duration", "1", "--no-stacks", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]
    rec = Recommendation(
        rule="quantize-int8", title="Quantize the Linear layers to dynamic int8",
        rationale="Linear layers take most of the time.",
        evidence=(Evidence("Linear share of the model's time", 0.62, "fraction", "stack sampling"),),
        predicted_saving=rule_of_thumb(0.18, 0.42, "published CPU int8 results", central=0.3),
        confidence="medium", risk=Risk("low", "top-1 agreement is usually above 99 %"), action="quantize-int8")
    store = Store(db)
    store.add_recommendations(sid, [rec.to_dict()])
    store.close()
    predicted = "−30.0 % energy per sample (saving), interval −42.0 % … −18.0 %"

    r = run_cli("optimize", str(llama_dir), "--action", "quantize-int8", "--out", str(tmp_path / "int8"),
                "--rounds", "2", "--from-session", str(sid), "--db", str(db), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["predicted_text"] == rec.predicted_saving.text  # the card's prediction, not "0 earlier A/B results"
    store = Store(db)
    (action,) = store.actions(source_session_id=sid)
    assert action["session_id"] == doc["session_id"] and action["params"]["recommendation"]["rule"] == "quantize-int8"
    store.close()

    out = {}
    for fmt_name in ("json", "html", "md"):
        path = tmp_path / f"r.{fmt_name}"
        rr = run_cli("report", str(sid), "--format", fmt_name, "-o", str(path), "--db", str(db))
        assert rr.returncode == 0, rr.stderr
        out[fmt_name] = path.read_text(encoding="utf-8")
    (applied,) = json.loads(out["json"])["applied"]
    assert applied["predicted"].startswith(predicted) and applied["optimize_session_id"] == doc["session_id"]
    assert "energy per sample" in applied["measured"] and "top-1 agreement" in applied["fidelity"]
    saving = action["result"]["verification"]["saving_fraction"]
    low, high = action["result"]["verification"]["saving_interval"] or (saving, saving)
    # FLAGGED where the measurement contradicts the prediction: its interval misses 18 … 42 %
    assert applied["flagged"] == (high < 0.18 or low > 0.42)
    assert applied["flag_text"].startswith("FLAGGED" if applied["flagged"] else
                                           "within" if 0.18 <= saving <= 0.42 else "measured")
    measured = applied["measured"].split(",")[0]
    for text in (out["html"], out["md"]):
        assert "recommended → applied → measured" in text
        assert predicted.split(",")[0] in text and measured in text
    assert "not applied" not in out["md"]
    shown = run_cli("show", str(sid), "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    assert "recommended: Quantize the Linear layers" in shown.stdout and f"predicted: {applied['predicted']}" in shown.stdout
    assert f"measured:  {applied['measured']}" in shown.stdout
    best = next(h for h in json.loads(out["json"])["headline"] if h["text"].startswith("quantize-int8: "))
    assert best["text"].startswith(f"quantize-int8: {applied['measured']}") and "risk to quality: low" in best["text"]
    # labelled for what it is: a measured cost is not called a saving
    assert (best["label"] == "Largest measured saving") == (saving >= 0.0005 and low > 0)
    # the optimize session's report leads with its A/B result, not the optimizer's own energy
    for fmt_name in ("json", "md"):
        assert run_cli("report", str(doc["session_id"]), "--format", fmt_name, "-o", str(tmp_path / f"o.{fmt_name}"),
                       "--db", str(db)).returncode == 0
    opt = json.loads((tmp_path / "o.json").read_text(encoding="utf-8"))
    assert opt["headline"][0]["label"].startswith("A/B result — quantize-int8")
    assert opt["headline"][1]["label"] == "This run's own energy"
    opt_md = (tmp_path / "o.md").read_text(encoding="utf-8")
    assert "verification.baseline" not in opt_md and "baseline.energy_per_sample_j" not in opt_md
    assert "tensor elements" in opt_md and "scales" in opt_md


def test_from_session_needs_a_stored_session(model_dir, tmp_path):
    r = run_cli("optimize", str(model_dir), "--action", "bf16", "--out", str(tmp_path / "o"),
                "--from-session", "99", "--db", str(tmp_path / "w.db"))
    assert r.returncode == 2 and "no session 99" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_quality_limit_refuses_and_writes_nothing(model_dir, tmp_path):
    db, out = tmp_path / "w.db", tmp_path / "pruned"
    r = run_cli("optimize", str(model_dir), "--action", "prune-mlp:0.9", "--out", str(out), "--rounds", "1",
                "--max-quality-loss", "0", "--db", str(db), timeout=600)
    assert r.returncode == 1
    assert "exceeds --max-quality-loss 0 by" in r.stderr.strip().splitlines()[-1]
    assert not out.exists()  # nothing written: the same --out takes a run with a larger limit
    (action,) = Store(db).actions()
    assert action["status"] == "refused" and action["result"]["verification"] is not None
    # the failed run is kept, and the number it is announced under exists
    sid = action["session_id"]
    assert f"recorded this run as session {sid} (failed)" in r.stdout
    assert Store(db).session(sid)["status"] == "failed"


def test_a_run_whose_input_fails_once_opened_announces_no_session(model_dir, tmp_path):
    """prune-layers:0.25 removes 0 of this model's 2 blocks: found only once the model is loaded,
    inside the recorded run, whose session is then removed (bad input keeps none) — so no session
    number may have been announced."""
    db = tmp_path / "w.db"
    r = run_cli("optimize", str(model_dir), "--action", "prune-layers:0.25", "--out", str(tmp_path / "o"),
                "--db", str(db), timeout=600)
    assert r.returncode == 2 and "removes 0 of 2 blocks" in r.stderr and "prune-layers:0.5" in r.stderr
    assert "session" not in r.stdout + r.stderr
    assert Store(db).sessions() == []


def test_a_python_script_as_model_is_named_for_what_it_is(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\n")
    db = tmp_path / "w.db"
    r = run_cli("optimize", str(script), "--action", "prune-mlp:0.25", "--out", str(tmp_path / "o"),
                "--db", str(db))
    (line,) = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Python source file" in line and "pickle" not in line
    assert "config.json" in line and "torch.save(model" in line  # what to pass instead
    assert not db.exists() or Store(db).sessions() == []


def test_bad_input_is_one_line_exit_2(model_dir, tmp_path):
    r = run_cli("optimize", str(model_dir), "--action", "make-faster", "--out", str(tmp_path / "o"),
                "--db", str(tmp_path / "w.db"))
    assert r.returncode == 2 and "quantize-int8" in r.stderr  # names the valid actions
    r = run_cli("optimize", str(tmp_path / "nope"), "--action", "bf16", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    r = run_cli("optimize", str(model_dir), "--batch-sizes", "1,x")
    assert r.returncode == 2 and "--batch-sizes" in r.stderr
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    r = run_cli("optimize", str(tmp_path / "junk"), "--action", "bf16", "--out", str(tmp_path / "o2"),
                "--db", str(tmp_path / "w.db"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("optimize", str(model_dir), "--action", "bf16", "--out", str(tmp_path / "o3"),
                "--eval-text", str(tmp_path / "missing.txt"), "--db", str(tmp_path / "w.db"))
    assert r.returncode == 2 and "--eval-text" in r.stderr
    for bad in (["--rounds", "0"], ["--max-quality-loss", "nan"]):
        r = run_cli("optimize", str(model_dir), "--action", "bf16", "--out", str(tmp_path / "o4"), *bad,
                    "--db", str(tmp_path / "w.db"))
        assert r.returncode == 2 and bad[0] in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # issue 9: bad input never leaves a "failed" session behind (nothing was measured)
    assert not (tmp_path / "w.db").exists() or Store(tmp_path / "w.db").sessions() == []


def test_batch_sweep_is_stored_for_the_regression(model_dir, tmp_path):
    db = tmp_path / "w.db"
    r = run_cli("optimize", str(model_dir), "--batch-sizes", "1,2,4", "--db", str(db), "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [row["batch_size"] for row in doc["rows"]] == [1, 2, 4]
    rows = Store(db).measurements("batch-sweep")
    assert [m["batch_size"] for m in rows] == [1, 2, 4]
    assert all(m["session_id"] == doc["session_id"] and m["payload"]["status"] == "ok" for m in rows)
    assert doc["advice"]["status"] in ("ok", "measure-first")
