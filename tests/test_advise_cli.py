"""`wattlens advise` end to end: a real session recorded by `wattlens attach` on a real torch child."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from wattlens.profiler.store import Store


def test_advise_json_on_a_real_session_is_one_document_and_is_stored(torch_child, db_path):
    child = torch_child(30)
    r = run_cli("attach", str(child.pid), "--duration", "2", "--no-stacks", "--db", str(db_path), "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]

    a = run_cli("advise", str(sid), "--db", str(db_path), "--json")
    assert a.returncode == 0, a.stderr
    doc = json.loads(a.stdout)  # stdout is exactly one JSON document
    assert doc["session_id"] == sid
    assert doc["features"]["target_cpu_pct_mean"] > 0
    assert doc["features"]["layer_method"] is None and "layers" in doc["features"]["reasons"]
    rules = {r["rule"] for r in doc["recommendations"]} | {s["rule"] for s in doc["silent_rules"]}
    assert rules == {"batch-size", "quantize-int8", "bf16", "prune-heads", "prune-mlp", "prune-layers",
                     "prune-unstructured", "input-pipeline", "straggler", "collective-share", "idle-rank",
                     "fewer-ranks"}
    for rec in doc["recommendations"]:
        assert rec["evidence"] and rec["confidence"] in ("low", "medium", "high")
        ps = rec["predicted_saving"]
        assert ps["method"] == "measure first" or ps["low"] <= ps["fraction"] <= ps["high"]
    store = Store(db_path)
    try:
        assert store.recommendations(sid) == doc["recommendations"]
    finally:
        store.close()

    human = run_cli("advise", str(sid), "--db", str(db_path))
    assert human.returncode == 0, human.stderr
    assert f"session {sid}" in human.stdout and "rules with nothing to say" in human.stdout
    if doc["recommendations"]:
        assert "1. " in human.stdout and "confidence:" in human.stdout


def test_unknown_session_is_one_line_exit_2(db_path):
    Store(db_path).close()
    r = run_cli("advise", "4242", "--db", str(db_path), "--json")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattlens: error: no session 4242")
