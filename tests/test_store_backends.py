"""The store on both backends: every record kind, the listing commands and several hosts writing
at once, on an SQLite file and on a real (throwaway) PostgreSQL server (tests/pg.py)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import run_cli
from wattlens.profiler.figures import AGENT_TIMING
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord
from wattlens.profiler.store import Store
from wattlens.profiler.store.writer import StoreWriter

pytest_plugins = ["tests.pg"]

BIG_NS = time.monotonic_ns() + 10**15  # past 2^31 and 2^50: a 32-bit column would overflow


def _session(store, name="s"):
    return store.create_session(name=name, kind="run", started_at=time.time(), start_ns=BIG_NS,
                                sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
                                series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")])


def test_nanosecond_times_ranks_and_large_counts_round_trip(any_db):
    store = Store(any_db)
    sid, series = _session(store)
    w = StoreWriter(store, sid, series)
    w.start()
    w([SamplePoint("cpu-model/power_w", BIG_NS + i * 10_000_000, 10.0 + i) for i in range(5000)])
    steps = [StepRecord(i, BIG_NS + i * 10**9, BIG_NS + (i + 1) * 10**9, samples=8, tokens=4096, energy_j=2.5,
                        rank=r, local_rank=r, world_size=2) for i in range(3) for r in (0, 1)]
    for s in steps:
        w.put(s)
    lc = LayerCost(BIG_NS, BIG_NS + 10**9, "LlamaModel/LlamaDecoderLayer", "class", "stack-sampling", 1.0, 0.5,
                   2.0, 0.2, 0.4, 10, flops=7 * 10**12, params=3 * 10**9, rank=1, split_se_s=0.0625)
    w.put(lc)
    w.put(EventRecord(BIG_NS + 5, "note", "hello ünïcode", {"k": [1, 2], "s": "é"}))
    w.stop()
    store.close()

    again = Store(any_db)
    t, v = again.series_data(sid)["cpu-model/power_w"]
    assert len(t) == 5000 and int(t[0]) == BIG_NS and int(t[-1]) == BIG_NS + 4999 * 10_000_000
    assert v[-1] == 5009.0
    assert sorted(again.steps(sid), key=lambda s: (s.step, s.rank)) == steps
    (back,) = again.layer_costs(sid)
    assert back == lc
    (ev,) = again.events(sid)
    assert ev.t_ns == BIG_NS + 5 and ev.message == "hello ünïcode" and ev.data == {"k": [1, 2], "s": "é"}
    assert again.session(sid)["start_ns"] == BIG_NS


def test_advisor_records_and_gpu_idle_round_trip(any_db):
    store = Store(any_db)
    sid, _ = _session(store)
    store.add_recommendations(sid, [{"rule": "bf16", "title": "Use bf16", "saving": 0.3}])
    store.add_recommendations(sid, [{"rule": "batch", "title": "Batch 64", "saving": 0.1}])  # replaces
    assert store.recommendations(sid) == [{"rule": "batch", "title": "Batch 64", "saving": 0.1}]
    aid = store.add_action(kind="bf16", status="applied", params={"p": 1}, result={}, session_id=sid)
    store.update_action(aid, status="verified", result={"saving": 0.25})
    linked = store.add_action(kind="int8", status="applied", params={}, result={}, source_session_id=sid)
    assert [(a["id"], a["status"], a["result"]) for a in store.actions(sid)] == [(aid, "verified", {"saving": 0.25})]
    assert [a["id"] for a in store.actions(source_session_id=sid)] == [linked]
    store.add_measurements([{"kind": "batch-sweep", "model_key": "m", "batch_size": 8, "flops": 5 * 10**12,
                             "params": 7 * 10**9, "payload": {"x": 1}}])
    (meas,) = store.measurements("batch-sweep")
    assert meas["flops"] == 5 * 10**12 and meas["params"] == 7 * 10**9 and meas["payload"] == {"x": 1}
    store.record_gpu_idle("GPU-1", 30.0, 5.0)
    store.record_gpu_idle("GPU-1", 28.0, 6.0)  # the newest wins
    assert {k: v for k, v in store.gpu_idle("GPU-1").items() if k != "measured_at"} == {
        "idle_power_w": 28.0, "stretch_s": 6.0}
    assert store.gpu_idle("GPU-2") is None
    count, last, running, _ = store.sessions_fingerprint()
    assert (count, last, running) == (1, sid, 1)
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0)
    assert store.sessions_fingerprint()[2] == 0
    store.delete_session(sid)
    assert store.sessions() == [] and store.recommendations(sid) == []


def test_sessions_carry_their_host_and_list_by_host(any_db, monkeypatch):
    store = Store(any_db)
    monkeypatch.setenv("WATTLENS_HOST", "node-a")
    a, _ = _session(store, "on a")
    monkeypatch.setenv("WATTLENS_HOST", "node-b")
    b, _ = _session(store, "on b")
    assert [s["id"] for s in store.sessions(host="node-a")] == [a]
    assert [s["host"] for s in store.sessions()] == ["node-b", "node-a"]
    assert store.sessions(host="node-c") == []


def test_listing_commands_read_the_store_by_db(any_db, monkeypatch, tmp_path):
    monkeypatch.setenv("WATTLENS_HOST", "node-a")
    store = Store(any_db)
    sid, series = _session(store, "listed")
    store.write_batch(sid, [(series["cpu-model/power_w"], BIG_NS + i * 10**8, 20.0) for i in range(20)])
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.9,
                         summary=store.stored_summary(sid))
    store.close()
    r = run_cli("sessions", "--db", any_db, "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["id"] == sid and row["name"] == "listed" and row["host"] == "node-a"
    r = run_cli("sessions", "--db", any_db, "--host", "node-a")
    assert r.returncode == 0 and "listed" in r.stdout
    r = run_cli("sessions", "--db", any_db, "--host", "elsewhere")
    assert r.returncode == 0 and "listed" not in r.stdout and "no sessions of host elsewhere" in r.stdout
    r = run_cli("show", str(sid), "--db", any_db, "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["session"]["id"] == sid and shown["session"]["host"] == "node-a"
    r = run_cli("report", str(sid), "--format", "md", "-o", str(tmp_path / "r.md"), "--db", any_db)
    assert r.returncode == 0, r.stderr
    assert "listed" in (tmp_path / "r.md").read_text()
    r = run_cli("advise", str(sid), "--db", any_db, "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), (dict, list))
    r = run_cli("show", str(sid + 100), "--db", any_db)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "wattlens sessions" in r.stderr


WRITER = textwrap.dedent("""
    import sys, time
    from wattlens.profiler.records import SeriesSpec
    from wattlens.profiler.store import Store
    store = Store(sys.argv[1])
    for i in range(int(sys.argv[2])):
        sid, series = store.create_session(name=f"job {i}", kind="run", started_at=time.time(),
                                           start_ns=time.monotonic_ns(),
                                           series=[SeriesSpec("cpu-model/power_w", "W", "estimated", None)])
        store.write_batch(sid, [(series["cpu-model/power_w"], time.monotonic_ns() + k, 1.0) for k in range(500)])
        store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=0.5)
""")


def test_two_hosts_write_sessions_concurrently_into_one_postgresql_database(pg_url):
    Store(pg_url).close()  # the schema exists; then both hosts write at once
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "6"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WATTLENS_HOST": host}) for host in ("node-a", "node-b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    r = run_cli("sessions", "--db", pg_url, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted((x["host"], x["name"]) for x in rows) == sorted(
        (h, f"job {i}") for h in ("node-a", "node-b") for i in range(6))
    assert {x["status"] for x in rows} == {"completed"}
    listing = run_cli("sessions", "--db", pg_url).stdout
    assert "node-a / job 5" in listing and "node-b / job 5" in listing
    only_b = json.loads(run_cli("sessions", "--db", pg_url, "--host", "node-b", "--json").stdout)
    assert len(only_b) == 6 and {x["host"] for x in only_b} == {"node-b"}
    store = Store(pg_url)
    assert all(len(store.series_data(x["id"])["cpu-model/power_w"][0]) == 500 for x in rows)


def test_two_processes_creating_the_schema_of_a_new_postgresql_database_at_once_both_succeed(pg_url):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "1"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WATTLENS_HOST": f"node-{i}"}) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert len(Store(pg_url).sessions()) == 3


def test_an_older_postgresql_database_gains_new_columns_and_keeps_its_rows(pg_url):
    from sqlalchemy import create_engine, text

    store = Store(pg_url)
    sid, _ = _session(store)
    old = store.add_action(kind="bf16", status="verified", params={"a": 1}, result={}, session_id=sid)
    store.close()
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE actions DROP COLUMN source_session_id"))
        c.execute(text("ALTER TABLE steps DROP COLUMN rank"))
        c.execute(text("UPDATE meta SET value='2' WHERE key='schema_version'"))
        c.execute(text("DROP TABLE alembic_version"))  # from before Alembic: stamped by meta only
    engine.dispose()
    store = Store(pg_url)
    (row,) = store.actions(sid)
    assert row["id"] == old and row["source_session_id"] is None
    store.write_batch(sid, [], steps=[StepRecord(0, BIG_NS, BIG_NS + 1, rank=1, world_size=2)])
    assert store.steps(sid)[0].rank == 1


def test_a_postgresql_database_of_another_program_is_refused(pg_url):
    from sqlalchemy import create_engine, text

    from wattlens.profiler.errors import CorruptDatabaseError

    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE invoices (id INTEGER)"))
    engine.dispose()
    with pytest.raises(CorruptDatabaseError, match="another program"):
        Store(pg_url)


def test_a_final_split_replaces_only_its_rows(any_db):
    """The end-of-session re-split (profiler/session.py) on both backends: the backward's and an
    optimizer part's rows of the given windows are swapped; a forward row whose class path starts
    like a bucket, another window and another session keep theirs ('_' is no wildcard)."""
    store = Store(any_db)
    sid, _ = _session(store)
    other, _ = _session(store, "other")

    def lc(w, path, t, gran="bucket"):
        return LayerCost(BIG_NS + w, BIG_NS + w + 1, path, gran, "stack-sampling", t, 0.1, None, t, None)

    old = [lc(0, "backward", 0.0), lc(0, "backward/MmBackward0", 1.0), lc(0, "optimizer/_single_tensor_adam", 0.0),
           lc(0, "optimizer/_single_tensor_adam/mul_", 0.5), lc(0, "optimizer/_singleXtensor_adam/mul_", 0.5),
           lc(0, "backwardish/Linear", 2.0, "class"), lc(9, "backward/MmBackward0", 1.0)]
    for s in (sid, other):
        store.write_batch(s, [], layer_costs=old)
    parents = [lc(0, "backward", 1.0), lc(0, "optimizer/_single_tensor_adam", 0.5)]
    new = [lc(0, "backward", 0.0), lc(0, "backward/SiluBackward0", 1.0), lc(0, "optimizer/_single_tensor_adam", 0.0),
           lc(0, "optimizer/_single_tensor_adam/add_", 0.5)]
    store.replace_split_rows(sid, parents, new)
    got = sorted((r.window_start_ns - BIG_NS, r.path) for r in store.layer_costs(sid))
    assert got == sorted([(0, "backward"), (0, "backward/SiluBackward0"), (0, "optimizer/_single_tensor_adam"),
                          (0, "optimizer/_single_tensor_adam/add_"), (0, "optimizer/_singleXtensor_adam/mul_"),
                          (0, "backwardish/Linear"), (9, "backward/MmBackward0")])
    assert len(store.layer_costs(other)) == len(old)
    store.close()


def test_replace_rows_swaps_only_the_named_rows(any_db):
    """The end-of-session fold of torn class paths (StackSampler.final_tree) on both backends:
    the named rows of the given window, path and rank go and their replacements come; the agent's
    row of the same path, another rank, another window and another session keep theirs."""
    store = Store(any_db)
    sid, _ = _session(store)
    other, _ = _session(store, "other")

    def lc(w, path, t, rank=None, method="stack-sampling"):
        return LayerCost(BIG_NS + w, BIG_NS + w + 1, path, "class", method, t, 0.1, None, t, None, rank=rank)

    old = [lc(0, "M/Out", 1.0), lc(0, "M/Out/GELU", 0.2), lc(0, "M/Out", 1.0, rank=1),
           lc(0, "M/Out", 1.0, method=AGENT_TIMING), lc(9, "M/Out/GELU", 0.2)]
    for s in (sid, other):
        store.write_batch(s, [], layer_costs=old)
    store.replace_rows(sid, [lc(0, "M/Out", 1.0), lc(0, "M/Out/GELU", 0.2)], [lc(0, "M/Out", 1.2)])
    got = sorted((r.window_start_ns - BIG_NS, r.path, r.rank or 0, r.method, r.self_time_s) for r in store.layer_costs(sid))
    assert got == sorted([(0, "M/Out", 0, "stack-sampling", 1.2), (0, "M/Out", 1, "stack-sampling", 1.0),
                          (0, "M/Out", 0, AGENT_TIMING, 1.0), (9, "M/Out/GELU", 0, "stack-sampling", 0.2)])
    assert len(store.layer_costs(other)) == len(old)
    store.close()
