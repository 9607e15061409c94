"""The Sessions and Export screens on a database of real sessions: list, open (plots, figures,
layers from the database), compare, rename, delete with confirmation, export md/json/csv."""

from __future__ import annotations

import csv
import json
import os
import re

from PySide6.QtWidgets import QInputDialog, QMessageBox

from wattlens.app.report.formats import FORMATS
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures"]  # shared fixtures, registered once (session scope works)


def _sessions_ready(w, qtbot, n):
    w.tabs.setCurrentWidget(w.sessions_view)
    qtbot.waitUntil(lambda: w.sessions_view.table.rowCount() == n, timeout=10000)
    return w.sessions_view


def test_open_a_stored_session(make_window, qtbot, stored_db):
    w = make_window(stored_db)
    sv = _sessions_ready(w, qtbot, 2)
    names = {sv.table.item(r, 1).text() for r in range(2)}
    assert names == {"with layers", "baseline"}
    assert all(sv.table.item(r, 7).text() == "completed" for r in range(2))
    assert sv.compare_button.isEnabled() is False
    sv.select_ids([1])
    assert sv.open_button.isEnabled()
    progress = []
    sv.progress.valueChanged.connect(progress.append)
    sv.open_button.click()
    qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.detail, timeout=15000)
    assert progress and max(progress) == 100
    d = sv.detail
    assert d.headline.text().startswith("Session 1: with layers")
    curve = d.panel.power_plot.curves["target/power_w"]
    assert len(curve.xData) > 5
    assert d.panel.power_plot.item.viewRange()[0][0] == 0.0
    cards = {t: v for t, v, _ in d.panel.cards.texts()}
    assert cards["Energy, target process"].endswith("Wh") and cards["Mean power"].startswith("target")
    assert d.panel.layers.table.topLevelItemCount() > 0, "layer rows stored by the stack sampler"
    assert "stack sampling" in d.panel.layers.caption.text()


def test_compare_two_sessions(make_window, qtbot, stored_db):
    w = make_window(stored_db)
    sv = _sessions_ready(w, qtbot, 2)
    sv.select_ids([1, 2])
    assert sv.compare_button.isEnabled() and not sv.open_button.isEnabled()
    sv.compare_button.click()
    qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.compare, timeout=15000)
    cv = sv.compare
    assert "compared with session" in cv.title.text()
    assert len(cv.plot.curves) == 2
    assert all("target process power" in t for t in cv.plot.legend_texts())
    rows = {cv.table.item(r, 0).text(): [cv.table.item(r, c).text() for c in range(1, 5)]
            for r in range(cv.table.rowCount())}
    assert rows["Energy, target"][3].endswith("%")
    assert rows["Energy per token"] == ["n/a", "n/a", "n/a", "n/a"]  # unknown, never 0


def test_rename_and_delete_with_confirmation(make_window, qtbot, stored_db, monkeypatch):
    w = make_window(stored_db)
    sv = _sessions_ready(w, qtbot, 2)
    sv.select_ids([2])
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("renamed run", True))
    sv.rename_button.click()
    qtbot.waitUntil(lambda: sv.model.get(2) is not None and sv.model.get(2).name == "renamed run", timeout=10000)
    # a name the store cannot hold (as `run --name` would be): one line in the status, name kept
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("x" * 300, True))
    sv.select_ids([2])
    sv.rename_button.click()
    qtbot.waitUntil(lambda: "300 characters long" in sv.status.text(), timeout=10000)
    assert sv.model.get(2).name == "renamed run"

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.No)
    sv.select_ids([2])
    sv.delete_button.click()
    assert asked and "cannot be undone" in asked[0] and "renamed run" in asked[0]
    qtbot.wait(200)
    assert sv.table.rowCount() == 2, "answering No deletes nothing"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.Yes)
    sv.select_ids([2])
    sv.delete_button.click()
    qtbot.waitUntil(lambda: sv.table.rowCount() == 1, timeout=10000)
    w.close()
    s = Store(stored_db)
    assert [r["id"] for r in s.sessions()] == [1]
    s.close()


def test_export_markdown_json_csv(make_window, qtbot, stored_db, tmp_path):
    w = make_window(stored_db)
    _sessions_ready(w, qtbot, 2)
    ev = w.export_view
    w.tabs.setCurrentWidget(ev)
    assert ev.session_box.count() == 2 and ev.compare_box.count() == 2  # never the session itself
    formats = {ev.format_box.itemData(i) for i in range(ev.format_box.count())}
    assert formats == set(FORMATS) >= {"html", "pdf", "md", "json", "csv", "trace"}  # one registry
    for fmt in ("md", "json", "csv", "trace"):
        path = tmp_path / f"out.{fmt}"
        ev.choose(1, fmt, str(path), compare_id=2 if fmt == "md" else None)
        progress = []
        ev.progress.valueChanged.connect(progress.append)
        ev.export_button.click()
        qtbot.waitUntil(lambda: not ev._running, timeout=20000)
        assert ev.result.text() == f"Saved to {path}", ev.result.text()
        assert "Report saved to" in w.messages.text
        assert progress, "progress was reported"
    md = (tmp_path / "out.md").read_text()
    assert "# wattlens report — with layers (session 1)" in md and "Compared with session 2" in md
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["session"]["id"] == 1 and doc["summary"]["target"]["energy_j"] > 0
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["series"] for r in rows} >= {"target/power_w", "cpu-model/power_w"}
    assert {r["method"] for r in rows if r["series"] == "cpu-model/power_w"} == {"estimated"}
    trace = json.loads((tmp_path / "out.trace").read_text())
    assert any(e["ph"] == "C" and e["name"] == "target/power_w (W)" for e in trace["traceEvents"])
    if os.environ.get("WATTLENS_SHOW_EXPORT"):
        ev.grab().save(str(tmp_path / "export.png"))
        print(tmp_path / "export.png")


def test_export_default_path_follows_the_choice(make_window, qtbot, stored_db, tmp_path):
    w = make_window(stored_db)
    _sessions_ready(w, qtbot, 2)
    ev = w.export_view
    ev.choose(2, "json", compare_id=1)
    assert ev.path.text().endswith("wattlens-session-2-vs-1.json")
    ev.path.setText(str(tmp_path / "mine.json"))
    ev._on_path_edited("")
    ev.choose(2, "csv")
    assert ev.path.text() == str(tmp_path / "mine.csv"), "a path the user typed keeps its name"


def test_a_stored_training_attach_shades_where_native_reads_stopped_the_target(make_window, qtbot, torch_child,
                                                                                 tmp_path, monkeypatch):
    """Native stack reads stop the target (their dip shows in the target's curves): the opened
    session shades each native run's span and says, under the power plot, what the runs cost the
    target — the figure the backward note states."""
    monkeypatch.setenv("WATTLENS_NATIVE_LITE", "0")  # py-spy's runs from the start (lite reads unavailable)
    from tests.conftest import run_cli

    db = tmp_path / "train.db"
    child = torch_child(60)
    r = run_cli("attach", str(child.pid), "--duration", "12", "--db", str(db), "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["session_id"]
    store = Store(db)
    events = store.events(sid)
    store.close()
    runs = [run for e in events for run in (e.data.get("native_runs") or ())]
    assert runs, [e.kind for e in events]  # the training loop's first backward starts the first run
    w = make_window(db)
    sv = _sessions_ready(w, qtbot, 1)
    sv.open_session(sid)
    qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.detail, timeout=30000)
    d = sv.detail
    start_ns, duration_s = d.stored.series.start_ns, d.stored.session["duration_s"]
    for plot in (d.panel.power_plot, d.panel.util_plot):
        shaded = [tuple(region.getRegion()) for region in plot.spans]
        assert len(shaded) == len(runs)
        for (x0, x1), run in zip(shaded, runs, strict=True):
            assert x0 == (run["t_start_ns"] - start_ns) / 1e9 and x1 == (run["t_end_ns"] - start_ns) / 1e9
            assert 0 <= x0 < x1 <= duration_s + 1.0  # within the session (its end is a little after stop)
    note = d.panel.power_plot.span_note
    assert note.startswith("shaded: native stack reads") and re.search(r"\d+ native runs? cost the target about", note)
    assert d.panel.util_plot.span_note == "", "said once, under the power plot"
    spent = note.split("about ")[1].split(" s")[0]
    told = [e.message for e in events if re.search(r"native runs? cost the target about", e.message)]
    assert told and f"cost the target about {spent} s" in told[0], (note, told)  # one figure, both places
    path = os.path.join(os.environ.get("WATTLENS_SCREENSHOTS", str(tmp_path)), "native_spans.png")
    w.resize(1280, 860)
    qtbot.wait(100)
    assert w.grab().save(path)
    print(f"screenshot: {path}")
