"""One session, every view: `show --json`, the app's cards and Compare, and every report format
print the same energy, mean power and energy per step (the figures come from one place)."""

from __future__ import annotations

import json
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
    assert rows["Energy, target"].this == si(energy_j, "J")
    assert rows["Mean power, target"].this == si(power_w, "W")
    assert rows["Energy per step"].this == si(step_j, "J")


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
