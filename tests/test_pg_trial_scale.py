"""Defects of the PostgreSQL trial at scale (notes/trial_scale.md, items 1 to 6), on both backends
where both apply: a database error that is not an OperationalError never kills the store writer,
the high-volume tables' row ids are 64-bit on a server, a lost connection at the end is waited
for and said as such, a role that may not write is refused before anything is launched, a session
id beyond the column's range is absent, and a name too long for its column is refused alike."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli
from wattlens.profiler.errors import StoreError
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord
from wattlens.profiler.runmode import RunSession
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store
from wattlens.profiler.store import models as m
from wattlens.profiler.store.writer import StoreWriter

pytest_plugins = ["tests.pg"]

T0 = time.monotonic_ns()


def _engine(db: str) -> sa.Engine:
    return sa.create_engine(db if "://" in db else f"sqlite:///{db}")


def _session(store: Store, name: str = "s") -> tuple[int, dict[str, int]]:
    return store.create_session(name=name, kind="run", started_at=time.time(), start_ns=T0,
                                series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")])


def _layer(i: int) -> LayerCost:
    return LayerCost(T0 + i, T0 + i + 10, f"Model/Layer{i}", "instance", "agent-timing", 0.1, 0.5)


def _refuse_layer_rows(db: str) -> None:
    """Make the database refuse every new layer row for good, as a shared store whose id sequence
    reached its end does (PostgreSQL: the sequence's end; SQLite: a trigger)."""
    engine = _engine(db)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql("ALTER SEQUENCE layer_costs_id_seq MAXVALUE 3")
        else:
            c.exec_driver_sql("CREATE TRIGGER full_ids BEFORE INSERT ON layer_costs "
                              "BEGIN SELECT RAISE(ABORT, 'no more ids'); END")
    engine.dispose()


# ---- item 1: any database error goes the writer's way ------------------------------------------
def test_a_refused_kind_of_record_is_counted_and_the_writer_keeps_writing_the_rest(any_db):
    store = Store(any_db)
    sid, series = _session(store)
    _refuse_layer_rows(any_db)
    w = StoreWriter(store, sid, series, commit_interval_s=0.05)
    w.start()
    w([SamplePoint("cpu-model/power_w", T0 + i * 10**7, 5.0) for i in range(100)])
    w.put([_layer(i) for i in range(10)])  # 10 rows: the 4th id is past the end
    w.put(StepRecord(0, T0, T0 + 10**9, samples=8, energy_j=1.0))
    deadline = time.monotonic() + 120
    while w.last_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.last_error is not None
    assert w._thread.is_alive()  # the thread lives on and writes what comes next
    w([SamplePoint("cpu-model/power_w", T0 + (100 + i) * 10**7, 6.0) for i in range(50)])
    w.put(StepRecord(1, T0 + 10**9, T0 + 2 * 10**9, samples=8, energy_j=1.0))
    loss = w.stop()
    assert loss is not None and loss.records == 10 and loss.samples == 0
    assert "database error in" in loss.reason and "\n" not in loss.reason
    assert len(store.series_data(sid)["cpu-model/power_w"][0]) == 150
    assert [s.step for s in store.steps(sid)] == [0, 1]
    assert store.layer_costs(sid) == []
    store.close()


def test_a_session_whose_layer_rows_are_refused_ends_partial_saying_what_was_lost(any_db):
    store = Store(any_db)
    s = ProfilingSession(store, name="ids at their end", interval_s=0.02, discovery=discover(gpu=False))
    sid = s.start()
    _refuse_layer_rows(any_db)
    s.add_layer_costs([_layer(i) for i in range(10)])
    s.add_step(StepRecord(0, s.start_ns, s.start_ns + 10**6, samples=4, energy_j=0.5))
    deadline = time.monotonic() + 120
    while s.writer.last_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    summary = s.stop("completed", "done")
    assert summary["status"] == "partial"
    assert summary["loss"]["records"] == 10 and "database error in" in summary["loss"]["reason"]
    assert "could not be written" in summary["notes"][-1]
    stored = store.session(sid)
    assert stored["status"] == "partial" and "could not be written" in stored["end_reason"]
    assert len(store.steps(sid)) == 1  # the rest of the session was stored
    store.close()


# ---- item 2: 64-bit row ids on a server ---------------------------------------------------------
def test_row_ids_of_the_high_volume_tables_are_64_bit_after_the_upgrade(pg_url):
    """A database at revision 0004 (int4 ids and sequences) upgrades to BIGINT ids keeping its
    rows, and then stores rows whose ids pass 2^31."""
    store = Store(pg_url)
    sid, series = _session(store, "old")
    store.write_batch(sid, [], [_layer(0)], [StepRecord(0, T0, T0 + 1)], [EventRecord(T0, "note", "old", {})])
    store.close()
    engine = _engine(pg_url)
    with engine.begin() as c:  # as revision 0004 built it
        for t in ("layer_costs", "steps", "events"):
            c.exec_driver_sql(f"ALTER TABLE {t} ALTER COLUMN id TYPE integer")
            c.exec_driver_sql(f"ALTER SEQUENCE {t}_id_seq AS integer")
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '0004_split_se_s'")
    engine.dispose()

    store = Store(pg_url)
    engine = _engine(pg_url)
    with engine.begin() as c:
        for t in ("layer_costs", "steps", "events"):
            (col,) = [x for x in sa.inspect(c).get_columns(t) if x["name"] == "id"]
            assert isinstance(col["type"], sa.BigInteger), (t, col["type"])
            c.exec_driver_sql(f"ALTER SEQUENCE {t}_id_seq RESTART WITH 2147483650")
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == m.SCHEMA_REVISION
    engine.dispose()
    store.write_batch(sid, [], [_layer(1)], [StepRecord(1, T0, T0 + 1)], [EventRecord(T0 + 1, "note", "new", {})])
    assert [lc.path for lc in store.layer_costs(sid)] == ["Model/Layer0", "Model/Layer1"]
    assert [s.step for s in store.steps(sid)] == [0, 1]
    assert [e.message for e in store.events(sid)] == ["old", "new"]
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT max(id) FROM layer_costs").scalar() == 2147483650
    store.close()


def test_row_ids_stay_the_rowid_on_sqlite(db_path):
    Store(db_path).close()
    engine = _engine(str(db_path))
    with engine.connect() as c:
        for t in ("layer_costs", "steps", "events", "samples"):
            ddl = c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (t,)).scalar()
            key = "rowid" if t == "samples" else "id"
            assert f"{key} INTEGER NOT NULL" in ddl, ddl  # INTEGER PRIMARY KEY: the rowid alias
    engine.dispose()


# ---- item 3: a lost connection at the end -------------------------------------------------------
def _lost_connection(store: Store) -> StoreError:
    from wattlens.profiler.store.store import store_error

    return store_error(f"cannot connect to database {store.display_name}: Connection refused",
                       hint="start the server", kind="connection")


def _server_back_after(store: Store, monkeypatch, failures: int) -> list:
    """Make the store's writes fail as a lost connection ``failures`` times, then succeed; the
    returned list grows by one per try."""
    real, calls = store.write_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise _lost_connection(store)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "write_batch", flaky)
    return calls


def test_a_lost_connection_at_the_end_is_waited_for_before_anything_is_given_up(db_path, monkeypatch, caplog):
    store = Store(db_path)
    sid, series = _session(store)
    _server_back_after(store, monkeypatch, 3)  # the server is back after three tries
    w = StoreWriter(store, sid, series, commit_interval_s=3600)  # no flush before stop
    w.start()
    w([SamplePoint("cpu-model/power_w", T0 + i, 1.0) for i in range(20)])
    with caplog.at_level(logging.WARNING, logger="wattlens.profiler.store.writer"):
        loss = w.stop()
    assert loss is None and len(store.series_data(sid)["cpu-model/power_w"][0]) == 20
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1 and "30 s" in waits[0].getMessage()
    store.close()


def test_a_session_that_cannot_reach_its_server_at_the_end_says_so_not_free_some_space(db_path, monkeypatch):
    store = Store(db_path)
    s = ProfilingSession(store, name="server gone", interval_s=0.02, discovery=discover(gpu=False))
    s.start()
    s.writer.reconnect_wait_s = 1.0

    def gone(*args, **kwargs):
        raise _lost_connection(store)

    monkeypatch.setattr(store, "write_batch", gone)
    monkeypatch.setattr(store, "finish_session", gone)
    time.sleep(0.1)
    with pytest.raises(StoreError) as err:
        s.stop("completed", "done")
    text = str(err.value)
    assert "\n" not in text and "are lost" in text and "Connection refused" in text
    assert "free some space" not in text
    assert "could not be reached" in text and "stays 'running'" in text and "'interrupted'" in text
    store.close()


# ---- item 4: a role that may not write ----------------------------------------------------------
def _read_only_url(pg_url: str, role: str) -> str:
    Store(pg_url).close()  # the schema, by its owner
    engine = _engine(pg_url)
    with engine.begin() as c:
        c.exec_driver_sql(f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        c.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{engine.url.database}" TO {role}')
        c.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    engine.dispose()
    return pg_url.replace("postgres@", f"{role}@", 1)


def test_run_with_a_role_that_may_not_write_launches_nothing(pg_url, tmp_path):
    url = _read_only_url(pg_url, "ro_run")
    marker = tmp_path / "launched"
    r = run_cli("run", "--db", url, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("wattlens: error: cannot write to the database")
    assert "role ro_run" in lines[0] and "grant INSERT/UPDATE" in lines[0] and "another --db" in lines[0]
    time.sleep(0.5)
    assert not marker.exists()


def test_attach_with_a_role_that_may_not_write_says_the_same_line(pg_url):
    url = _read_only_url(pg_url, "ro_attach")
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        r = run_cli("attach", str(target.pid), "--duration", "1", "--no-stacks", "--db", url)
    finally:
        target.kill()
        target.wait()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("wattlens: error: cannot write to the database") and "grant INSERT/UPDATE" in lines[0]


def test_a_command_launched_before_a_failure_is_stopped_not_orphaned(db_path, monkeypatch):
    def broken(self):
        raise RuntimeError("the session could not start")

    monkeypatch.setattr(ProfilingSession, "start", broken)
    run = RunSession(Store(db_path), [sys.executable, "-c", "import time; time.sleep(120)"],
                     discovery=discover(gpu=False))
    with pytest.raises(RuntimeError):
        run.start()
    assert run.proc is not None and run.proc.poll() is not None  # ended and reaped


# ---- item 5: ids beyond the column --------------------------------------------------------------
def test_a_session_id_beyond_the_column_is_no_session_on_both_backends(any_db):
    store = Store(any_db)
    _session(store)
    big = 2**31
    assert store.steps(big) == [] and store.layer_costs(big) == [] and store.events(big) == []
    assert store.series_data(big) == {} and store.recommendations(big) == [] and store.actions(big) == []
    store.close()
    for command in ("show", "report"):
        extra = ["--format", "json", "-o", "-"] if command == "report" else []
        r = run_cli(command, str(big), *extra, "--db", any_db)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"no session {big} in" in lines[0] and "internal error" not in lines[0]


# ---- item 6: a name longer than its column ------------------------------------------------------
def test_a_name_too_long_is_refused_before_anything_runs_on_both_backends(any_db, tmp_path):
    marker = tmp_path / "launched"
    r = run_cli("run", "--db", any_db, "--name", "y" * 5000, "--", sys.executable, "-c",
                f"open({str(marker)!r}, 'w')")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--name is 5000 characters long" in lines[0] and "at most 200" in lines[0]
    time.sleep(0.5)
    assert not marker.exists()
    assert Store(any_db).sessions() == []


def test_a_connection_back_during_the_session_is_said_once_with_what_was_held(db_path, monkeypatch, caplog):
    """helper-38 left this: during a run the lost connection was said, its return never was."""
    store = Store(db_path)
    sid, series = _session(store)
    calls = _server_back_after(store, monkeypatch, 2)
    w = StoreWriter(store, sid, series, commit_interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="wattlens.profiler.store.writer"):
        w.start()
        w([SamplePoint("cpu-model/power_w", T0 + i, 1.0) for i in range(20)])
        deadline = time.monotonic() + 60  # a hang guard: it is back on the third try
        while (len(calls) < 3 or w.rows_written < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.stop() is None
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert back == ["the database is reachable again: the 20 records held meanwhile are written"]
    store.close()
