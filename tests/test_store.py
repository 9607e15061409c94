import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from wattlens.profiler.errors import CorruptDatabaseError, SessionNotFoundError, StoreError
from wattlens.profiler.records import EventRecord, LayerCost, SeriesSpec, StepRecord
from wattlens.profiler.store import Store
from wattlens.profiler.store.writer import StoreWriter

pytest_plugins = ["tests.pg"]  # any_db: the both-backends tests run on SQLite and PostgreSQL


def _new_session(store, **kw):
    return store.create_session(name="s", kind="attach", started_at=time.time(), start_ns=time.monotonic_ns(),
                                sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
                                series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")], **kw)


def test_round_trip_of_every_record_kind(any_db):
    db_path = any_db
    store = Store(db_path)
    sid, series = _new_session(store, target={"pid": 123, "cmdline": ["python", "x.py"]})
    w = StoreWriter(store, sid, series)
    w.start()
    from wattlens.profiler.records import SamplePoint

    w([SamplePoint("cpu-model/power_w", 1_000 + i, float(i)) for i in range(1000)])
    w([SamplePoint("cpu-model/util_pct", 5, 50.0)])  # unregistered key: registered on the fly
    w.put(LayerCost(0, 10, "GPT2Model/GPT2Block", "class", "stack-sampling", 1.0, 0.5, 2.0, 0.2, 0.4, 10))
    w.put(StepRecord(0, 0, 100, samples=8, tokens=512, energy_j=1.5))
    w.put(EventRecord(5, "note", "hello", {"k": 1}))
    w.stop()
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0,
                         summary={"energy_j": 3.0})
    store.close()

    again = Store(db_path)
    s = again.session(sid)
    assert s["status"] == "completed" and s["target_cmdline"] == ["python", "x.py"]
    assert s["sources"][0]["method"] == "estimated" and s["summary"] == {"energy_j": 3.0}
    data = again.series_data(sid)
    t, v = data["cpu-model/power_w"]
    assert len(t) == 1000 and v[-1] == 999.0 and list(t[:2]) == [1000, 1001]
    assert data["cpu-model/util_pct"][1].tolist() == [50.0]
    (lc,) = again.layer_costs(sid)
    assert lc.path == "GPT2Model/GPT2Block" and lc.self_energy_j == 0.4 and lc.n_samples == 10
    assert again.steps(sid) == [StepRecord(0, 0, 100, 8, 512, 1.5)]
    assert again.events(sid)[0].data == {"k": 1}
    again.rename_session(sid, "renamed")
    assert again.sessions()[0]["name"] == "renamed"
    again.delete_session(sid)
    assert again.sessions() == []
    with pytest.raises(SessionNotFoundError, match="wattlens sessions"):
        again.session(sid)


def test_a_file_that_is_not_sqlite_is_refused_and_untouched(db_path):
    db_path.write_bytes(b"this is my thesis, not a database" * 100)
    before = db_path.read_bytes()
    with pytest.raises(CorruptDatabaseError) as exc:
        Store(db_path)
    assert "not a wattlens database" in str(exc.value) and "--db" in str(exc.value)
    assert exc.value.exit_code == 2
    assert db_path.read_bytes() == before


def test_a_damaged_sqlite_file_is_refused_and_untouched(db_path):
    Store(db_path).close()
    raw = bytearray(db_path.read_bytes())
    raw[100:4000] = b"\xff" * 3900  # scribble over the schema page
    db_path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDatabaseError, match="damaged|not a"):
        Store(db_path)
    assert db_path.read_bytes() == bytes(raw)


def test_another_programs_database_is_refused(db_path):
    con = sqlite3.connect(db_path)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(CorruptDatabaseError, match="another program"):
        Store(db_path)
    con = sqlite3.connect(db_path)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_newer_schema_is_refused(db_path):
    Store(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(CorruptDatabaseError, match="newer wattlens"):
        Store(db_path)


def test_unwritable_location_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError) as exc:
        Store(blocker / "sub" / "w.db")  # a folder can't be made under a file
    assert exc.value.exit_code == 2 and "--db" in str(exc.value)


CRASHER = textwrap.dedent("""
    import sys, time
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.store import Store
    s = ProfilingSession(Store(sys.argv[1]), interval_s=0.05, name="doomed")
    sid = s.start()
    print(sid, flush=True)
    time.sleep(60)
""")


def _stored_points(db_path, key: str) -> tuple[int, int | None]:
    """(committed samples, the latest one's t_ns) of one series, read-only with plain sqlite3
    (no Store opened here); a server database through SQLAlchemy."""
    query = ("SELECT count(*), max(samples.t_ns) FROM samples JOIN series ON samples.series_id = series.id "
             "WHERE series.key = {}")
    if "://" in str(db_path):
        from sqlalchemy import create_engine, text

        engine = create_engine(db_path)
        try:
            with engine.connect() as c:
                n, t = c.execute(text(query.format(":k")), {"k": key}).one()
                return n, t
        except Exception:  # noqa: BLE001 - not created yet
            return 0, None
        finally:
            engine.dispose()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        n, t = con.execute(query.format("?"), (key,)).fetchone()
        return n, t
    except sqlite3.OperationalError:
        return 0, None  # not created yet
    finally:
        con.close()


def test_killed_profiler_session_reopens_interrupted_losing_at_most_a_second(any_db):
    db_path = any_db
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(db_path)], stdout=subprocess.PIPE, text=True)
    sid = int(proc.stdout.readline())
    deadline = time.monotonic() + 120  # until 21 power samples are stored, however busy the machine is
    while (seen := _stored_points(db_path, "cpu-model/power_w"))[0] <= 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    kill_ns = time.monotonic_ns()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    store = Store(db_path)
    s = store.session(sid)
    assert s["status"] == "interrupted"
    assert "killed or crashed" in s["end_reason"]
    t, v = store.series_data(sid)["cpu-model/power_w"]
    assert len(t) > 20 and t[-1] >= seen[1]  # nothing that was committed is lost
    # The writer commits every 0.5 s, so at most about a second is lost; on a loaded machine its
    # thread (and the read above, for PostgreSQL a new connection) can lag by more, so the bound
    # here is what a commit interval gone wrong would break, not a speed figure.
    assert (kill_ns - t[-1]) / 1e9 <= 5.0
    assert s["duration_s"] == pytest.approx((t[-1] - s["start_ns"]) / 1e9)


def test_the_writer_commits_on_its_interval_not_only_at_stop(tmp_path, monkeypatch):
    """What bounds the loss of a killed profiler: the writer commits every ``commit_interval_s``.
    Its clock is patched (the module's ``time``), so the test counts commits, not seconds."""
    from wattlens.profiler.records import SamplePoint
    from wattlens.profiler.store import writer as writer_mod

    clock = [1000.0]
    monkeypatch.setattr(writer_mod.time, "monotonic", lambda: clock[0])
    db = tmp_path / "w.db"
    store = Store(db)
    sid, series = _new_session(store)
    w = StoreWriter(store, sid, series, commit_interval_s=0.5)
    w.start()
    try:
        w([SamplePoint("cpu-model/power_w", 1, 1.0)])
        deadline = time.perf_counter() + 60
        while w.pending == 0 and time.perf_counter() < deadline:  # taken in by the writer's thread
            time.sleep(0.01)
        time.sleep(0.3)  # a few of the writer's 0.1-s waits, with its clock standing still
        assert _stored_points(db, "cpu-model/power_w")[0] == 0  # not committed before its interval
        clock[0] += 0.6  # the interval has passed
        while _stored_points(db, "cpu-model/power_w")[0] == 0 and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert _stored_points(db, "cpu-model/power_w") == (1, 1)  # committed without a stop
    finally:
        w.stop()
        store.close()


def test_a_running_session_of_a_live_profiler_is_not_marked_interrupted(any_db):
    db_path = any_db
    store = Store(db_path)
    sid, _ = _new_session(store)
    assert Store(db_path).session(sid)["status"] == "running"  # our own process is alive


def test_disk_full_keeps_samples_in_memory_and_retries(any_db, monkeypatch):
    db_path = any_db
    from wattlens.profiler.records import SamplePoint

    store = Store(db_path)
    sid, series = _new_session(store)
    w = StoreWriter(store, sid, series)
    real = store.write_batch
    calls = {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise StoreError("the disk holding x is full; samples are kept in memory")
        return real(*a, **k)

    monkeypatch.setattr(store, "write_batch", full)
    w([SamplePoint("cpu-model/power_w", i, 1.0) for i in range(10)])
    w._drain()
    w._flush()
    assert w.pending == 10 and "full" in str(w.last_error)
    w._flush()
    w._flush()
    assert w.pending == 0 and w.last_error is None
    assert len(store.series_data(sid)["cpu-model/power_w"][0]) == 10


def test_a_version_2_file_gains_the_action_link_and_keeps_its_rows(db_path):
    """Schema 3 adds actions.source_session_id; opening an older file adds the column (NULL in old rows)."""
    store = Store(db_path)
    sid, _ = _new_session(store)
    old = store.add_action(kind="bf16", status="verified", params={"a": 1}, result={"r": 2}, session_id=sid)
    store.close()
    con = sqlite3.connect(db_path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql LIKE '%source_session_id%'"):
        con.execute(f"DROP INDEX {name}")
    con.execute("ALTER TABLE actions DROP COLUMN source_session_id")
    con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    con.execute("DROP TABLE alembic_version")  # a file from before Alembic: stamped by meta only
    con.commit()
    con.close()

    store = Store(db_path)
    (row,) = store.actions(sid)
    assert row["id"] == old and row["params"] == {"a": 1} and row["source_session_id"] is None
    new = store.add_action(kind="quantize-int8", status="verified", params={}, result={}, session_id=None,
                           source_session_id=sid)
    assert [a["id"] for a in store.actions(source_session_id=sid)] == [new]
    store.close()
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("3",)
    con.close()
