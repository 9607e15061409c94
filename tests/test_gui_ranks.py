"""The per-rank table in the Sessions screen: a stored 2-rank gloo session (real torchrun job)
opened in the app shows rank | steps | mean step | collective share | busy / step | energy
(method), "other" and the job total — the same rows `show` and the reports print — and a
single-process session shows no Ranks tab."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wattlens.app.report.data import build_report
from wattlens.app.report.ranks import HEADER, rank_rows
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures", "tests.ranks_jobs"]


def _open(w, qtbot, sid):
    sv = w.sessions_view
    w.tabs.setCurrentWidget(sv)
    qtbot.waitUntil(lambda: sv.table.rowCount() >= 1, timeout=15000)
    sv.open_session(sid)
    qtbot.waitUntil(lambda: sv.stack.currentWidget() is sv.detail and sv.detail.stored is not None
                    and sv.detail.stored.id == sid, timeout=20000)
    return sv.detail.panel


@pytest.mark.slow
def test_a_stored_two_rank_session_shows_its_rank_table(make_window, qtbot, heavy_rank0_job, tmp_path):
    db, sid = heavy_rank0_job
    store = Store(db, create=False)
    try:
        expected = rank_rows(build_report(store, sid)["ranks"])
    finally:
        store.close()
    w = make_window(db)
    panel = _open(w, qtbot, sid)
    tab = panel.tabs.indexOf(panel.ranks)
    assert tab >= 0 and panel.tabs.tabText(tab) == "Ranks"
    panel.tabs.setCurrentIndex(tab)
    table = panel.ranks.table
    assert [table.horizontalHeaderItem(i).text() for i in range(table.columnCount())] == list(HEADER)
    shown = [tuple(panel.ranks.cell(r, c) for c in range(table.columnCount())) for r in range(table.rowCount())]
    assert shown == expected  # the figures `show` and the reports print
    assert [row[0] for row in shown] == ["0", "1", "other", "job"]
    assert shown[0][6] == "per-rank CPU time" and shown[-1][5].endswith(" J")
    assert "Straggler spread" in panel.ranks.notes.text()
    w.resize(1100, 820)
    qtbot.wait(50)
    path = Path(os.environ.get("WATTLENS_SCREENSHOTS", tmp_path)) / "ranks.png"  # to look at it
    assert panel.grab().save(str(path))
    print(f"screenshot: {path}")


def test_a_single_process_session_has_no_ranks_tab(make_window, qtbot, stored_db):
    w = make_window(stored_db)
    panel = _open(w, qtbot, 1)
    assert panel.tabs.indexOf(panel.ranks) < 0
    # nor an empty rank table drawn over the first card (it was, at the panel's top left)
    assert panel.isVisible() and not panel.ranks.isVisible()
    panel.set_ranks(None)  # idempotent
    assert panel.tabs.indexOf(panel.ranks) < 0
    assert not panel.ranks.isVisible()
