"""One session, every view: `show --json`, the app's cards and Compare, and every report format
print the same energy, mean power and energy per step (the figures come from one place)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import WORKLOADS, run_cli
from wattlens.app.gui.models.format import energy_pair, si
from wattlens.app.gui.models.sessions_model import compare_sessions, load_stored_session
from wattlens.app.report.formats import fmt, write_report
from wattlens.profiler.store import Store

GRID = 300.0


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    db = tmp_path_factory.mktemp("truth") / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / "gpt2_infer.py"), "25",
                timeout=300)
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]
    shown = run_cli("show", str(sid), "--db", str(db), "--json")
    assert shown.returncode == 0, shown.stderr
    return db, sid, json.loads(shown.stdout)["summary"]


def _truth(summary: dict) -> tuple[float, float, float]:
    tgt, steps = summary["target"], summary["steps"]
    assert tgt["energy_j"] and tgt["mean_power_w"] and steps["energy_per_step_j"]
    return tgt["energy_j"], tgt["mean_power_w"], steps["energy_per_step_j"]


def test_app_cards_and_compare_show_the_numbers_of_show(session):
    db, sid, shown = session
    energy_j, power_w, step_j = _truth(shown)
    stored = load_stored_session(Store(db), sid, grid_g_per_kwh=GRID)
    assert _truth(stored.summary) == (energy_j, power_w, step_j)
    cards = {c.title: c.value for c in stored.cards(GRID)}
    assert cards["Energy, target process"] == energy_pair(energy_j)
    assert f"target {si(power_w, 'W')}" in cards["Mean power"]
    assert cards["Energy per step"].startswith(f"{si(step_j, 'J')}/step")
    other = load_stored_session(Store(db), sid, grid_g_per_kwh=GRID)
    rows = {r.figure: r for r in compare_sessions(stored, other).rows}
    # the same figures, with the estimate mark where the machine has no power meter
    mark = " (estimated)" if "estimated" in (shown["target"].get("method") or "") else ""
    assert rows["Energy, target"].this == si(energy_j, "J") + mark
    assert rows["Mean power, target"].this == si(power_w, "W") + mark
    assert rows["Energy per step"].this == si(step_j, "J") + mark


def test_the_app_list_prints_the_duration_sessions_prints(session):
    """helper-37's trial: 4.36 s in `sessions` and `show`, 4.4 s in the app's list."""
    from wattlens.app.gui.models.format import duration
    from wattlens.app.report.formats import fmt

    db, sid, _ = session
    listed = json.loads(run_cli("sessions", "--db", str(db), "--json").stdout)
    (row,) = [r for r in listed if r["id"] == sid]
    assert duration(row["duration_s"]) == fmt(row["duration_s"], "s")
    for seconds in (4.36, 0.512, 23.74, 4.0):
        assert duration(seconds) == fmt(seconds, "s")
    assert duration(83.4) == "1 min 23 s"


def test_every_report_format_prints_the_numbers_of_show(session, tmp_path):
    db, sid, shown = session
    energy_j, power_w, step_j = _truth(shown)
    store = Store(db)
    doc = json.loads(write_report(store, sid, "json", tmp_path / "r.json").read_text())
    assert _truth(doc["summary"]) == (energy_j, power_w, step_j)
    for name in ("md", "html"):
        text = write_report(store, sid, name, tmp_path / f"r.{name}").read_text()
        for value, unit in ((energy_j, "J"), (power_w, "W"), (step_j, "J")):
            assert fmt(value, unit) in text, f"{name} report lacks {fmt(value, unit)}"


def test_the_markdown_layer_table_prints_the_self_energy_of_show(session, tmp_path):
    """The Markdown table printed each row's inclusive energy where `show` prints the self
    energy beside the same share (transformer.h.0.attn: 37.9 J there, 22.3 J in show), had no
    phase (a backward row read as a second forward row) and an empty name for the model root."""
    from wattlens.app.gui.models.format import layer_label

    db, sid, shown = session
    text = write_report(Store(db), sid, "md", tmp_path / "r.md").read_text()
    table = text.split("## Costliest layers", 1)[1]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    assert "" not in rows and "(model root)" in rows
    assert shown["top_layers"]
    for lr in shown["top_layers"][:5]:
        cells = [c.strip() for c in rows[layer_label(lr["path"])].split("|")[1:-1]]
        assert cells[2] == lr["phase"] and cells[-1] == fmt(lr["self_energy_j"], "J"), (lr, cells)


# ---- complete exports: every step and layer row, CSV of each, a Chrome trace -------------------
def _layer_keys(store, sid) -> set[tuple[str, str, str]]:
    return {(lc.path, lc.granularity, lc.phase) for lc in store.layer_costs(sid)}


def test_json_holds_every_step_and_every_layer_row_and_follows_its_schema(session, tmp_path):
    from tests.test_report_views import SCHEMA_PATH, validate

    db, sid, shown = session
    store = Store(db)
    doc = json.loads(write_report(store, sid, "json", tmp_path / "r.json").read_text())
    validate(doc, json.loads(SCHEMA_PATH.read_text()))
    keys = _layer_keys(store, sid)
    assert len(keys) > 10  # more than the top 10 the text views show
    assert {(r["path"], r["granularity"], r["phase"]) for r in doc["layers"]} == keys
    assert len(doc["steps"]) == 25 == shown["steps"]["count"]
    with_e = [s["energy_j"] for s in doc["steps"] if s["energy_j"] is not None]
    assert len(with_e) == shown["steps"]["with_energy"]
    assert sum(with_e) / len(with_e) == pytest.approx(shown["steps"]["energy_per_step_j"], rel=1e-12)


@pytest.mark.parametrize("what", ["samples", "steps", "layers"])
def test_csv_exports_samples_steps_or_layers(session, tmp_path, what):
    import csv

    db, sid, _ = session
    store = Store(db)
    out = tmp_path / f"{what}.csv"
    r = run_cli("report", str(sid), "--db", str(db), "--format", "csv", "--what", what, "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    if what == "samples":
        assert len(rows) == sum(len(t) for t, _ in store.series_data(sid).values())
    elif what == "steps":
        assert [int(r["step"]) for r in rows] == [s.step for s in store.steps(sid)]
        assert all(float(r["energy_j"]) > 0 for r in rows if r["energy_j"])
    else:
        assert len(rows) == len(store.layer_costs(sid))
        assert {(r["path"], r["granularity"], r["phase"]) for r in rows} == _layer_keys(store, sid)
        # the root's name as show and Markdown print it (its path is empty: the cell was blank)
        assert all(r["name"] == (r["path"] or "(model root)") for r in rows)
        assert any(r["name"] == "(model root)" for r in rows) == any(not r["path"] for r in rows)


def test_what_without_csv_is_a_one_line_usage_error(session, tmp_path):
    db, sid, _ = session
    r = run_cli("report", str(sid), "--db", str(db), "--format", "md", "--what", "steps", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--what" in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_comparison_where_it_cannot_be_is_a_usage_error_and_dash_is_stdout(session, tmp_path):
    """`--compare` with csv was silently ignored, and a session compared with itself accepted;
    `-o -` wrote a file named '-'."""
    db, sid, _ = session
    for extra in (["--format", "csv", "--compare", str(sid + 1)], ["--format", "md", "--compare", str(sid)]):
        r = run_cli("report", str(sid), "--db", str(db), *extra, "-o", str(tmp_path / "x"))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--compare" in r.stderr, r.stderr
        assert not (tmp_path / "x").exists()
    r = subprocess.run([sys.executable, "-m", "wattlens.app", "report", str(sid), "--db", str(db),
                        "--format", "md", "-o", "-"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == write_report(Store(db), sid, "md", tmp_path / "r.md").read_text()
    assert not (tmp_path / "-").exists()


def test_trace_has_steps_layer_tracks_power_counters_and_events(session, tmp_path):
    from pathlib import Path

    from tests.test_report_views import validate

    db, sid, _ = session
    store = Store(db)
    out = tmp_path / "t.trace.json"
    r = run_cli("report", str(sid), "--db", str(db), "--format", "trace", "-o", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    validate(doc, json.loads((Path(__file__).resolve().parents[1] / "docs" / "trace-schema.json").read_text()))
    ev = doc["traceEvents"]
    by_ph: dict[str, list] = {}
    for e in ev:
        by_ph.setdefault(e["ph"], []).append(e)
    steps = [e for e in by_ph["X"] if e["cat"] == "step"]
    assert len(steps) == 25
    assert all(e["dur"] > 0 and e["args"]["energy_j"] is not None for e in steps[1:])
    layer_tracks = {e["tid"] for e in by_ph["X"] if e["cat"].startswith("layer")}
    assert len(layer_tracks) == len(_layer_keys(store, sid))
    names = {e["tid"]: e["args"]["name"] for e in by_ph["M"] if e["name"] == "thread_name"}
    assert layer_tracks <= set(names) and names[1] == "steps"
    for e in by_ph["X"]:
        if e["cat"].startswith("layer"):
            assert e["args"]["window_start_us"] <= e["ts"] and e["ts"] + e["dur"] <= e["args"]["window_end_us"] + 1e-6
    data = store.series_data(sid)
    counters = [e for e in by_ph["C"] if e["name"] == "target/power_w (W)"]
    assert len(counters) == len(data["target/power_w"][0])
    assert [c["args"]["W"] for c in counters] == data["target/power_w"][1].tolist()
    assert any(e["name"].endswith("/power_w (W)") and not e["name"].startswith("target/") for e in by_ph["C"])
    assert len(by_ph.get("i", [])) == len(store.events(sid))


def test_the_advisor_reads_the_same_energy_per_step(session):
    from wattlens.advisor.features import extract_features

    db, sid, shown = session
    assert extract_features(Store(db), sid).energy_per_step_j == _truth(shown)[2]
