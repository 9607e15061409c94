"""Sessions are never lost: records the database cannot take when a session ends go to the local
spool (profiler/store/spool.py) and are written, once, the next time wattlens opens that store.

The database is made unreachable for real: a PostgreSQL database that stops accepting connections
(its live ones terminated), an SQLite file locked by another connection, SQLite's own "database or
disk is full" raised at the DB-API boundary, a spool folder the OS cannot create."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from tests.conftest import run_cli
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store, spool
from wattlens.profiler.store import store as store_mod
from wattlens.profiler.store.writer import StoreWriter

pytest_plugins = ["tests.pg"]

T0 = time.monotonic_ns()
POWER = "cpu-model/power_w"


@pytest.fixture
def spool_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "spool"
    monkeypatch.setenv(spool.SPOOL_ENV, str(folder))
    return folder


@pytest.fixture
def short_busy(monkeypatch):
    """SQLite waits 0.1 s (not 5 s) for another connection's lock before "locked"."""
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 100)


def _session(store: Store) -> tuple[int, dict[str, int]]:
    return store.create_session(name="s", kind="run", started_at=time.time(), start_ns=T0,
                                sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
                                series=[SeriesSpec(POWER, "W", "estimated", "cpu-model")])


@contextlib.contextmanager
def _locked(db: Path):
    """Another program holds the SQLite file's write lock."""
    con = sqlite3.connect(db, timeout=0)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.rollback()
        con.close()


def _cut(pg_url: str, allow: bool) -> None:
    """The PostgreSQL database stops (or starts again) accepting connections; its live ones end."""
    u = make_url(pg_url)
    with psycopg.connect(host=u.query["host"], user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{u.database}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                          "AND pid <> pg_backend_pid()", (u.database,))


def _wait_for(cond, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s  # a bound against hanging forever, not a speed claim
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _header(path: Path) -> dict:
    return json.loads(path.read_text().split("\n")[0])


def _spooled_writer(db: Path, n: int = 300) -> tuple[Store, int, StoreWriter]:
    """A writer whose records are all still pending when it stops on a locked SQLite file."""
    store = Store(db)
    sid, series = _session(store)
    w = StoreWriter(store, sid, series, commit_interval_s=3600)  # no flush before stop
    w.start()
    w([SamplePoint(POWER, T0 + i * 10**7, float(i)) for i in range(n)])
    w.put(StepRecord(0, T0, T0 + 10**9, samples=8, energy_j=1.5))
    w.put(LayerCost(T0, T0 + 10**9, "Model/Block", "class", "stack-sampling", 0.5, 0.5, 1.0, 0.5, 1.0))
    w.put(EventRecord(T0 + 1, "note", "hello", {"k": [1, 2]}))
    with _locked(db):
        loss = w.stop()
    assert loss is None
    return store, sid, w


# ---- the headline: a server gone at the end --------------------------------------------------------
def test_a_server_gone_at_the_end_keeps_every_record_and_the_next_command_writes_them(
        pg_url, spool_dir, capsys):
    store = Store(pg_url)
    s = ProfilingSession(store, name="server gone", interval_s=0.02, discovery=discover(gpu=False))
    sid = s.start()
    s.writer.reconnect_wait_s = 1.0
    _wait_for(lambda: s.writer.rows_written > 0, "a first commit")
    _cut(pg_url, allow=False)
    _wait_for(lambda: s.writer.last_error is not None, "the writer to meet the lost connection")
    s.add_step(StepRecord(0, s.start_ns, s.start_ns + 10**6, samples=4, energy_j=0.5))
    summary = s.stop("completed", "done")  # no StoreError: nothing is lost

    assert summary["status"] == "completed" and "loss" not in summary
    (path,) = spool_dir.glob("*.jsonl")
    note = summary["notes"][-1]
    assert f"are held in the local spool at {path}" in note and "when it is reachable again" in note
    assert "lost" not in note and "\n" not in note
    header = _header(path)
    assert header["session_id"] == sid and header["db"] == make_url(pg_url).render_as_string(hide_password=True)
    live_t, _ = s.rings.snapshot()[POWER]

    _cut(pg_url, allow=True)
    r = run_cli("sessions", "--json", "--db", pg_url)  # any command that opens the store writes them
    assert r.returncode == 0, r.stderr
    (said,) = [ln for ln in r.stderr.splitlines() if "local spool" in ln]
    assert said.startswith(f"wattlens: wrote session {sid}'s ") and "held in the local spool since " in said
    assert said.endswith("(the database was unreachable when it ended)")
    listed = {x["id"]: x for x in json.loads(r.stdout)}[sid]
    assert listed["status"] == "completed" and not path.exists()

    again = Store(pg_url)
    t, _ = again.series_data(sid)[POWER]
    assert len(t) == len(live_t) and (t == live_t).all()  # every sample the session measured, once
    assert [st.step for st in again.steps(sid)] == [0]
    stored = again.session(sid)
    assert stored["end_reason"] == "done" and stored["summary"]["steps"] is not None  # refigured from every row
    assert "held in the local spool" in stored["summary"]["notes"][-1]
    assert [e.kind for e in again.events(sid)].count("spool") == 1
    again.close()
    r = run_cli("sessions", "--json", "--db", pg_url)  # nothing left to write: said nothing
    assert "local spool" not in r.stderr
    store.close()


def test_the_spool_header_names_the_database_without_its_password(tmp_path, spool_dir):
    held = spool.hold("postgresql+psycopg://alice:s3cret@db.example:5432/w", 7, [(1, 2, 3.0)], reason="gone")
    text = held.path.read_text()
    assert "s3cret" not in text and _header(held.path)["db"] == "postgresql+psycopg://alice:***@db.example:5432/w"
    assert held.path.stat().st_mode & 0o077 == 0


# ---- SQLite: locked by another program -----------------------------------------------------------
def test_a_locked_sqlite_file_at_the_end_is_spooled_and_written_at_the_next_open(db_path, spool_dir, short_busy,
                                                                               caplog):
    store = Store(db_path)
    s = ProfilingSession(store, name="locked", interval_s=0.02, discovery=discover(gpu=False))
    sid = s.start()
    _wait_for(lambda: s.writer.rows_written > 0, "a first commit")
    with _locked(db_path):
        _wait_for(lambda: s.writer.last_error is not None, "the writer to meet the lock")
        summary = s.stop("completed", "done")
    assert summary["status"] == "completed" and "held in the local spool" in summary["notes"][-1]
    assert store.session(sid)["status"] == "running"  # not finished yet: the finish is in the spool
    live_t, _ = s.rings.snapshot()[POWER]
    store.close()

    with caplog.at_level(logging.WARNING, logger="wattlens.profiler.store.store"):
        again = Store(db_path)
    assert any(f"wrote session {sid}'s" in r.getMessage() for r in caplog.records)
    assert again.session(sid)["status"] == "completed"
    t, _ = again.series_data(sid)[POWER]
    assert (t == live_t).all() and not list(spool_dir.glob("*.jsonl"))


def test_what_the_writer_holds_goes_to_one_file_and_comes_back_whole(db_path, spool_dir, short_busy):
    store, sid, w = _spooled_writer(db_path)
    assert w.held is not None and w.held.records == 303 and w.held.samples == 300 and w.pending == 0
    back = spool.read(w.held.path)
    assert back.samples_rows == w.held.samples_rows and back.steps == w.held.steps
    assert back.layers == w.held.layers and back.events == w.held.events and back.finish is None
    _finish(w)
    assert spool.read(w.held.path).finish["status"] == "completed"
    assert not [p for p in spool_dir.iterdir() if p.name.startswith(".")]  # no temp file left


# ---- one transaction per file: never twice, never half -----------------------------------------
def _finish(w: StoreWriter) -> None:
    spool.add_finish(w.held.path, {"status": "completed", "end_reason": "done", "ended_at": time.time(),
                                   "duration_s": 3.0, "summary": {"notes": []}})


def test_a_crash_after_the_commit_does_not_write_the_records_twice(db_path, spool_dir, short_busy, monkeypatch):
    store, sid, w = _spooled_writer(db_path)
    _finish(w)
    with monkeypatch.context() as mp:
        mp.setattr(spool, "remove", lambda path: None)  # as if killed between the commit and the unlink
        assert store.replay_spool_file(w.held.path) == sid
    assert w.held.path.exists()
    store.close()
    again = Store(db_path)  # the next open finds the file again
    assert len(again.series_data(sid)[POWER][0]) == 300 and len(again.steps(sid)) == 1
    assert [e.kind for e in again.events(sid)] == ["note", "spool"]
    assert not w.held.path.exists()


def test_a_replay_that_fails_keeps_the_file_says_why_and_writes_nothing_of_it(db_path, spool_dir, short_busy,
                                                                              caplog):
    store, sid, w = _spooled_writer(db_path)
    _finish(w)
    with store.engine.begin() as c:  # the database refuses the file's events (after its samples went in)
        c.exec_driver_sql("CREATE TRIGGER no_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END")
    store.close()
    with caplog.at_level(logging.WARNING, logger="wattlens.profiler.store.store"):
        again = Store(db_path)
    (said,) = [r.getMessage() for r in caplog.records if r.name == store_mod.log.name and "local spool" in r.getMessage()]
    assert f"session {sid}'s 300 samples and 3 other records held in the local spool at {w.held.path}" in said
    assert "could not be written yet" in said and "no" in said and "\n" not in said
    assert w.held.path.exists()
    assert len(again.series_data(sid)[POWER][0]) == 0  # rolled back with the events: nothing half-written
    with again.engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER no_events")
    again.close()
    third = Store(db_path)
    assert len(third.series_data(sid)[POWER][0]) == 300 and third.session(sid)["status"] == "completed"
    assert not w.held.path.exists()


def test_a_damaged_spool_file_is_moved_aside_not_deleted(db_path, spool_dir, short_busy, caplog):
    store, sid, w = _spooled_writer(db_path)
    store.close()
    text = w.held.path.read_text()
    cut = text[: text.rindex('{"end"')]  # cut short at a line's start: every line whole, no end line
    w.held.path.write_text(cut)
    with caplog.at_level(logging.WARNING, logger="wattlens.profiler.store.store"):
        again = Store(db_path)
    aside = w.held.path.with_name(w.held.path.name + ".corrupt")
    (said,) = [r.getMessage() for r in caplog.records if r.name == store_mod.log.name and "local spool" in r.getMessage()]
    assert said == (f"the local spool file {w.held.path} cannot be written: it is damaged: it ends before its "
                    f"records do (no end line); moved aside to {aside}")
    assert aside.read_text() == cut and not w.held.path.exists()
    assert len(again.series_data(sid)[POWER][0]) == 0
    Store(db_path).close()  # never read again
    assert aside.exists()


def test_a_file_whose_session_is_still_ending_is_left_to_its_process(db_path, spool_dir, short_busy):
    store, sid, w = _spooled_writer(db_path)  # no finish yet, and its writer (this process) lives
    store.close()
    Store(db_path).close()
    assert w.held.path.exists()


KILLED_AFTER_SPOOLING = textwrap.dedent("""
    import os, sqlite3, sys, time
    from wattlens.profiler.records import SamplePoint, SeriesSpec
    from wattlens.profiler.store import Store
    from wattlens.profiler.store import store as store_mod
    from wattlens.profiler.store.writer import StoreWriter
    store_mod.BUSY_TIMEOUT_MS = 100
    db = sys.argv[1]
    store = Store(db)
    sid, series = store.create_session(name="k", kind="run", started_at=time.time(), start_ns=0,
                                       series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")])
    w = StoreWriter(store, sid, series, commit_interval_s=3600)
    w.start()
    w([SamplePoint("cpu-model/power_w", i * 10**7, 1.0) for i in range(50)])
    con = sqlite3.connect(db, timeout=0)
    con.execute("BEGIN IMMEDIATE")
    w.stop()
    print(sid, w.held.path, flush=True)
    os._exit(9)  # dies before its session could add the finish
""")


def test_a_profiler_killed_after_spooling_reopens_interrupted_with_every_record(db_path, spool_dir):
    r = subprocess.run([sys.executable, "-c", KILLED_AFTER_SPOOLING, str(db_path)], capture_output=True,
                       text=True, timeout=120)
    sid, path = r.stdout.split()
    assert r.returncode == 9 and Path(path).exists(), r.stderr
    store = Store(db_path)
    assert store.session(int(sid))["status"] == "interrupted"
    assert len(store.series_data(int(sid))[POWER][0]) == 50 and not Path(path).exists()


def test_another_databases_spool_files_are_left_alone(tmp_path, spool_dir, short_busy):
    store, sid, w = _spooled_writer(tmp_path / "a.db")
    _finish(w)
    store.close()
    Store(tmp_path / "b.db").close()
    assert w.held.path.exists()


# ---- when the spool is not used ----------------------------------------------------------------
def test_a_refused_record_is_still_counted_lost_not_spooled(db_path, spool_dir):
    store = Store(db_path)
    sid, series = _session(store)
    with store.engine.begin() as c:
        c.exec_driver_sql("CREATE TRIGGER full_ids BEFORE INSERT ON steps BEGIN SELECT RAISE(ABORT, 'no ids'); END")
    w = StoreWriter(store, sid, series, commit_interval_s=3600)
    w.start()
    w.put(StepRecord(0, T0, T0 + 1))
    loss = w.stop()
    assert loss is not None and loss.records == 1 and w.held is None and not spool_dir.exists()


def _disk_full(store: Store) -> None:
    """Sample inserts fail as SQLite fails on a full disk (raised at the DB-API boundary)."""
    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO samples"):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(store.engine, "before_cursor_execute", before)


def _full_disk_stop(db: Path) -> tuple[StoreWriter, object]:
    store = Store(db)
    sid, series = _session(store)
    _disk_full(store)
    w = StoreWriter(store, sid, series, commit_interval_s=3600)
    w.start()
    w([SamplePoint(POWER, T0 + i, 1.0) for i in range(20)])
    return w, w.stop()


def test_a_full_sqlite_disk_is_not_spooled_onto_the_same_disk(db_path, spool_dir):
    w, loss = _full_disk_stop(db_path)
    assert loss is not None and loss.samples == 20 and "full" in loss.reason
    assert w.held is None and not spool_dir.exists()


def test_a_full_sqlite_disk_is_spooled_onto_another_filesystem(db_path, monkeypatch):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == db_path.parent.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        monkeypatch.setenv(spool.SPOOL_ENV, other)
        w, loss = _full_disk_stop(db_path)
        assert loss is None and w.held is not None and w.held.path.parent == Path(other)


def test_a_spool_that_cannot_be_written_falls_back_to_the_counted_loss_with_why(tmp_path, monkeypatch,
                                                                                 short_busy):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(spool.SPOOL_ENV, str(blocker / "spool"))  # the OS cannot create it
    store = Store(tmp_path / "w.db")
    sid, series = _session(store)
    w = StoreWriter(store, sid, series, commit_interval_s=3600)
    w.start()
    w([SamplePoint(POWER, T0 + i, 1.0) for i in range(20)])
    with _locked(tmp_path / "w.db"):
        loss = w.stop()
    assert loss is not None and loss.samples == 20 and w.held is None
    assert "locked" in loss.reason and f"the local spool {blocker / 'spool'} could not hold them either" in loss.reason


def test_a_second_ctrl_c_stops_the_wait_for_a_lost_database_and_the_records_are_spooled(pg_url, spool_dir):
    """Carried from the trials: while a session's end waited (up to 30 s) for a lost database, a
    second Ctrl-C changed nothing. Now it stops the wait; the records go to the local spool."""
    import os
    import signal
    import threading

    from wattlens.profiler.session import StopSignals, run_until_end

    store = Store(pg_url)
    s = ProfilingSession(store, name="impatient", interval_s=0.02, discovery=discover(gpu=False))
    signals = StopSignals((signal.SIGINT,))
    with signals:
        s.start()
        s.writer.reconnect_wait_s = 3600.0  # without the second Ctrl-C the stop would wait an hour
        _wait_for(lambda: s.writer.rows_written > 0, "a first commit")
        _cut(pg_url, allow=False)
        _wait_for(lambda: s.writer.last_error is not None, "the writer to meet the lost connection")

        def user() -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the session stops, and waits for the database
            _wait_for(lambda: signals.on_repeat is not None, "the stop to begin")
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again

        threading.Thread(target=user, daemon=True).start()
        summary = run_until_end(s, signals=signals)
    _cut(pg_url, allow=True)
    assert summary["status"] == "stopped" and "loss" not in summary
    (path,) = spool_dir.glob("*.jsonl")
    assert f"are held in the local spool at {path}" in summary["notes"][-1]
    store.close()
