"""The app on a shared PostgreSQL store (a throwaway server, tests/pg.py): sessions of two hosts
listed, each target naming its host, and the filter box narrowing the list to one host."""

from __future__ import annotations

import time

from wattlens.profiler.records import SeriesSpec
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures", "tests.pg"]


def test_the_app_lists_a_postgresql_stores_sessions_and_filters_by_host(make_window, qtbot, pg_url, monkeypatch):
    store = Store(pg_url)
    for host in ("node-a", "node-b"):
        monkeypatch.setenv("WATTLENS_HOST", host)
        sid, series = store.create_session(name=f"job on {host}", kind="run", started_at=time.time(),
                                           start_ns=time.monotonic_ns(),
                                           series=[SeriesSpec("cpu-model/power_w", "W", "estimated", None)])
        store.write_batch(sid, [(series["cpu-model/power_w"], time.monotonic_ns() + k, 5.0) for k in range(10)])
        store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0)
    store.close()
    monkeypatch.delenv("WATTLENS_HOST")

    w = make_window(pg_url)
    assert w.store_error is None
    w.tabs.setCurrentWidget(w.sessions_view)
    sv = w.sessions_view
    qtbot.waitUntil(lambda: sv.table.rowCount() == 2, timeout=20000)
    targets = {sv.table.item(r, 1).text(): sv.table.item(r, 2).text() for r in range(2)}
    assert targets["job on node-a"].startswith("node-a: ") and targets["job on node-b"].startswith("node-b: ")
    sv.filter.setText("node-b")
    qtbot.waitUntil(lambda: sv.table.rowCount() == 1, timeout=10000)
    assert sv.table.item(0, 1).text() == "job on node-b"
    sv.filter.clear()
    qtbot.waitUntil(lambda: sv.table.rowCount() == 2, timeout=10000)
