"""The schema as Alembic migrations (profiler/store/migrations/): on SQLite and on a throwaway
PostgreSQL server (tests/pg.py), old databases built with the exact DDL of their version upgrade to
the head revision on open keeping every row, new ones are built by the migrations, many processes
opening one database at once all succeed, a revision this wattlens does not know is refused in
one line, the migrations build exactly what models.py declares, a revision written by
`python -m wattlens.profiler.store.migrations new` runs and keeps every row, and a read-only user
still reads a database it may not upgrade."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli
from wattlens.profiler.errors import CorruptDatabaseError
from wattlens.profiler.records import StepRecord
from wattlens.profiler.store import Store, migrations
from wattlens.profiler.store import models as m

pytest_plugins = ["tests.pg"]

# The DDL SQLAlchemy emitted on SQLite for models.py of schema 1 (commit 3b4cee5), verbatim.
V1_DDL = """
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE sessions (id INTEGER NOT NULL, name VARCHAR(200) NOT NULL, kind VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL, end_reason TEXT, target_pid INTEGER, target_cmdline TEXT,
    host VARCHAR(200) NOT NULL, hardware_json TEXT NOT NULL, settings_json TEXT NOT NULL,
    started_at FLOAT NOT NULL, start_ns INTEGER NOT NULL, ended_at FLOAT, duration_s FLOAT,
    interval_s FLOAT, profiler_pid INTEGER, profiler_create_time FLOAT, summary_json TEXT, PRIMARY KEY (id));
CREATE TABLE actions (id INTEGER NOT NULL, session_id INTEGER, created_at FLOAT NOT NULL,
    kind VARCHAR(80) NOT NULL, status VARCHAR(20) NOT NULL, params_json TEXT NOT NULL, result_json TEXT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_actions_session_id ON actions (session_id);
CREATE TABLE events (id INTEGER NOT NULL, session_id INTEGER NOT NULL, t_ns INTEGER NOT NULL,
    kind VARCHAR(40) NOT NULL, message TEXT NOT NULL, data_json TEXT NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_events_session_id ON events (session_id);
CREATE TABLE layer_costs (id INTEGER NOT NULL, session_id INTEGER NOT NULL, window_start_ns INTEGER NOT NULL,
    window_end_ns INTEGER NOT NULL, path TEXT NOT NULL, granularity VARCHAR(10) NOT NULL,
    method VARCHAR(30) NOT NULL, phase VARCHAR(10) NOT NULL, time_s FLOAT NOT NULL, share FLOAT NOT NULL,
    energy_j FLOAT, self_time_s FLOAT, self_energy_j FLOAT, n_samples INTEGER, flops INTEGER, params INTEGER,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_layer_costs_session_id ON layer_costs (session_id);
CREATE TABLE measurements (id INTEGER NOT NULL, session_id INTEGER, created_at FLOAT NOT NULL,
    kind VARCHAR(20) NOT NULL, model_key TEXT NOT NULL, action VARCHAR(80), batch_size INTEGER,
    energy_per_sample_j FLOAT, throughput_per_s FLOAT, saving_fraction FLOAT, params INTEGER, flops INTEGER,
    payload_json TEXT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_measurements_session_id ON measurements (session_id);
CREATE TABLE recommendations (id INTEGER NOT NULL, session_id INTEGER NOT NULL, created_at FLOAT NOT NULL,
    rule VARCHAR(80) NOT NULL, title TEXT NOT NULL, payload_json TEXT NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_recommendations_session_id ON recommendations (session_id);
CREATE TABLE series (id INTEGER NOT NULL, session_id INTEGER NOT NULL, "key" VARCHAR(200) NOT NULL,
    unit VARCHAR(10) NOT NULL, method TEXT NOT NULL, source_id VARCHAR(100), label TEXT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_series_session_id ON series (session_id);
CREATE TABLE sources (id INTEGER NOT NULL, session_id INTEGER NOT NULL, source_id VARCHAR(100) NOT NULL,
    kind VARCHAR(10) NOT NULL, method VARCHAR(20) NOT NULL, label TEXT NOT NULL, details_json TEXT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_sources_session_id ON sources (session_id);
CREATE TABLE steps (id INTEGER NOT NULL, session_id INTEGER NOT NULL, step INTEGER NOT NULL,
    t_start_ns INTEGER NOT NULL, t_end_ns INTEGER NOT NULL, samples INTEGER, tokens INTEGER, energy_j FLOAT,
    PRIMARY KEY (id), FOREIGN KEY(session_id) REFERENCES sessions (id) ON DELETE CASCADE);
CREATE INDEX ix_steps_session_id ON steps (session_id);
CREATE TABLE samples (rowid INTEGER NOT NULL, series_id INTEGER NOT NULL, t_ns INTEGER NOT NULL,
    value FLOAT NOT NULL, PRIMARY KEY (rowid), FOREIGN KEY(series_id) REFERENCES series (id) ON DELETE CASCADE);
CREATE INDEX ix_samples_series_t ON samples (series_id, t_ns);
"""
# Schema 2 (commit e3e632c) added one table; the rest was unchanged.
V2_DDL = V1_DDL + """
CREATE TABLE gpu_idle (gpu_key VARCHAR(200) NOT NULL, idle_power_w FLOAT NOT NULL, stretch_s FLOAT NOT NULL,
    measured_at FLOAT NOT NULL, PRIMARY KEY (gpu_key));
"""
BIG_NS = 2**50 + 12345  # past 2^31: an INTEGER column on PostgreSQL would overflow


def _pg_ddl(ddl: str) -> str:
    """PostgreSQL first held wattlens data at schema 3 (commit baec9da): the same tables, with the
    types the models gave it there (SERIAL keys, BIGINT for ns, FLOPs and parameter counts)."""
    ddl = re.sub(r"\b(id|rowid) INTEGER NOT NULL", lambda mo: f"{mo[1]} {'BIGSERIAL' if mo[1] == 'rowid' else 'SERIAL'}"
                 " NOT NULL", ddl)
    return re.sub(r"\b(\w*_ns|flops|params) INTEGER", r"\1 BIGINT", ddl)


def _engine(db: str) -> sa.Engine:
    return sa.create_engine(db if "://" in db else f"sqlite:///{db}")


def _old_database(db: str, ddl: str, version: int) -> dict[str, tuple[list[str], list]]:
    """A database of schema ``version`` built with its exact DDL and a row in every table; returns
    each table's columns and rows as read back (what the upgrade must keep)."""
    engine = _engine(db)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            ddl = _pg_ddl(ddl)
        for statement in filter(str.strip, ddl.split(";")):
            c.exec_driver_sql(statement)
        c.execute(sa.text("INSERT INTO meta VALUES ('app', 'wattlens'), ('schema_version', :v), "
                          "('created_at', '1700000000.0')"), {"v": str(version)})
        c.execute(sa.text(
            "INSERT INTO sessions (name, kind, status, end_reason, host, hardware_json, settings_json, started_at, "
            "start_ns, ended_at, duration_s, interval_s, summary_json) VALUES ('old run', 'run', 'completed', 'done', "
            "'node-a', '{\"gpus\": []}', '{}', 1700000000.5, :ns, 1700000002.5, 2.0, 0.1, '{\"energy_j\": 3.5}')"),
            {"ns": BIG_NS})
        sid = c.execute(sa.text("SELECT id FROM sessions")).scalar()
        c.execute(sa.text("INSERT INTO sources (session_id, source_id, kind, method, label, details_json) "
                          "VALUES (:s, 'cpu-model', 'cpu', 'estimated', 'CPU', '{}')"), {"s": sid})
        c.execute(sa.text("INSERT INTO series (session_id, key, unit, method, source_id, label) "
                          "VALUES (:s, 'cpu-model/power_w', 'W', 'estimated', 'cpu-model', 'CPU power')"), {"s": sid})
        series_id = c.execute(sa.text("SELECT id FROM series")).scalar()
        c.execute(sa.text("INSERT INTO samples (series_id, t_ns, value) VALUES (:i, :t, :v)"),
                  [{"i": series_id, "t": BIG_NS + k * 10**8, "v": 10.0 + k} for k in range(20)])
        c.execute(sa.text(
            "INSERT INTO layer_costs (session_id, window_start_ns, window_end_ns, path, granularity, method, phase, "
            "time_s, share, energy_j, n_samples, flops, params) VALUES (:s, :a, :b, 'GPT2Model/GPT2Block', 'class', "
            "'stack-sampling', 'forward', 1.0, 0.5, 2.0, 10, 7000000000000, 3000000000)"),
            {"s": sid, "a": BIG_NS, "b": BIG_NS + 10**9})
        c.execute(sa.text("INSERT INTO steps (session_id, step, t_start_ns, t_end_ns, samples, tokens, energy_j) "
                          "VALUES (:s, 0, :a, :b, 8, 512, 1.5)"), {"s": sid, "a": BIG_NS, "b": BIG_NS + 10**9})
        c.execute(sa.text("INSERT INTO events (session_id, t_ns, kind, message, data_json) "
                          "VALUES (:s, :t, 'note', 'hello ünïcode', '{\"k\": 1}')"), {"s": sid, "t": BIG_NS + 5})
        c.execute(sa.text("INSERT INTO recommendations (session_id, created_at, rule, title, payload_json) "
                          "VALUES (:s, 1.0, 'bf16', 'Use bf16', '{\"rule\": \"bf16\"}')"), {"s": sid})
        c.execute(sa.text("INSERT INTO actions (session_id, created_at, kind, status, params_json, result_json) "
                          "VALUES (:s, 2.0, 'bf16', 'verified', '{\"a\": 1}', '{}')"), {"s": sid})
        c.execute(sa.text("INSERT INTO measurements (session_id, created_at, kind, model_key, batch_size, flops, "
                          "params, payload_json) VALUES (:s, 3.0, 'batch-sweep', 'm', 8, 5000000000000, "
                          "7000000000, '{}')"), {"s": sid})
        if version >= 2:
            c.execute(sa.text("INSERT INTO gpu_idle VALUES ('GPU-1', 31.5, 5.0, 1700000001.0)"))
    inspector = sa.inspect(engine)
    columns = {t: [col["name"] for col in inspector.get_columns(t)] for t in inspector.get_table_names()}
    rows = _rows(engine, columns)
    engine.dispose()
    return {t: (columns[t], rows[t]) for t in columns}


def _rows(engine: sa.Engine, columns: dict[str, list[str]]) -> dict[str, list]:
    """Every row of each table (its ``columns``), in key order."""
    out = {}
    with engine.connect() as c:
        for table, cols in sorted(columns.items()):
            quoted = ", ".join(f'"{col}"' for col in cols)
            out[table] = [tuple(r) for r in c.exec_driver_sql(f'SELECT {quoted} FROM {table} ORDER BY "{cols[0]}"')]
    return out


def _stamp(db: str) -> tuple[list, dict]:
    engine = _engine(db)
    with engine.connect() as c:
        revisions = [r[0] for r in c.exec_driver_sql("SELECT version_num FROM alembic_version")]
        meta = dict(c.exec_driver_sql("SELECT key, value FROM meta").all())
    engine.dispose()
    return revisions, meta


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_database_upgrades_to_head_keeping_every_row(any_db, version):
    before = _old_database(any_db, V1_DDL if version == 1 else V2_DDL, version)
    store = Store(any_db)
    if store.is_sqlite:  # the connection that ran the migrations goes back to the pool as a writer's
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.close()
    revisions, meta = _stamp(any_db)
    assert revisions == [m.SCHEMA_REVISION]
    assert meta["schema_version"] == str(m.SCHEMA_VERSION) and meta["app"] == "wattlens"
    assert meta["created_at"] == "1700000000.0"  # the database's own, kept
    engine = _engine(any_db)
    after = _rows(engine, {t: cols for t, (cols, _) in before.items()})
    assert sorted(after.pop("meta")) == sorted(
        [r for r in before.pop("meta")[1] if r[0] != "schema_version"] + [("schema_version", str(m.SCHEMA_VERSION))])
    assert after == {t: rows for t, (_, rows) in before.items()}  # every row of every table, every old column
    names = {t: {c["name"] for c in sa.inspect(engine).get_columns(t)} for t in ("steps", "layer_costs", "actions")}
    assert {"rank", "local_rank", "world_size"} <= names["steps"] and "rank" in names["layer_costs"]
    assert "source_session_id" in names["actions"]
    assert "gpu_idle" in sa.inspect(engine).get_table_names()
    engine.dispose()

    store = Store(any_db)  # and the store reads and writes it as any other
    (s,) = store.sessions()
    # its cached summary is refigured for this wattlens (sessions), but the energy its rows cannot
    # give again (no energy series in that old session) is kept, never replaced by n/a
    assert s["name"] == "old run" and s["start_ns"] == BIG_NS and s["summary"]["energy_j"] == 3.5
    t, v = store.series_data(s["id"])["cpu-model/power_w"]
    assert len(t) == 20 and int(t[-1]) == BIG_NS + 19 * 10**8 and v[-1] == 29.0
    assert store.steps(s["id"]) == [StepRecord(0, BIG_NS, BIG_NS + 10**9, 8, 512, 1.5)]  # rank None
    (lc,) = store.layer_costs(s["id"])
    assert lc.flops == 7 * 10**12 and lc.rank is None
    assert store.events(s["id"])[0].message == "hello ünïcode"
    assert store.actions(s["id"])[0]["source_session_id"] is None
    assert store.gpu_idle("GPU-1") == (None if version == 1 else
                                       {"idle_power_w": 31.5, "stretch_s": 5.0, "measured_at": 1700000001.0})
    new, _ = store.create_session(name="new", kind="run", started_at=time.time(), start_ns=BIG_NS)
    assert new != s["id"]
    store.write_batch(new, (), steps=[StepRecord(0, BIG_NS, BIG_NS + 1, rank=1, world_size=2)])
    store.record_gpu_idle("GPU-2", 40.0, 3.0)
    assert store.steps(new)[0].rank == 1 and store.gpu_idle("GPU-2")["idle_power_w"] == 40.0
    store.close()


@pytest.mark.parametrize("missing", [("actions", "source_session_id"), ("steps", "rank")])
def test_a_schema_3_file_of_either_branch_gets_the_columns_it_lacks(db_path, missing):
    """Before Alembic, the rank columns and the action link each arrived as "schema 3" on their
    own branch: a file stamped 3 may lack either, and upgrading fills in what is missing."""
    Store(db_path).close()
    engine = _engine(str(db_path))
    with engine.begin() as c:
        c.exec_driver_sql("DROP INDEX IF EXISTS ix_actions_source_session_id")
        c.exec_driver_sql(f"ALTER TABLE {missing[0]} DROP COLUMN {missing[1]}")
        c.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()
    Store(db_path).close()
    engine = _engine(str(db_path))
    assert missing[1] in {c["name"] for c in sa.inspect(engine).get_columns(missing[0])}
    assert "ix_actions_source_session_id" in {i["name"] for i in sa.inspect(engine).get_indexes("actions")}
    engine.dispose()
    assert _stamp(str(db_path))[0] == [m.SCHEMA_REVISION]


def test_a_new_database_is_built_by_the_migrations_at_head(any_db):
    Store(any_db).close()
    revisions, meta = _stamp(any_db)
    assert revisions == [migrations.head()] == [m.SCHEMA_REVISION]
    assert sorted(meta) == ["app", "created_at", "schema_version"] and meta["schema_version"] == str(m.SCHEMA_VERSION)


def test_the_migrations_build_exactly_the_models(any_db):
    """Autogenerate's comparison of a database built by the migrations with models.py: no
    difference. A model change without a migration fails here (checked below with one)."""
    Store(any_db).close()
    engine = _engine(any_db)
    with engine.connect() as c:
        assert migrations.differences(c, m.Base.metadata) == []
        changed = sa.MetaData()
        for table in m.Base.metadata.sorted_tables:
            table.to_metadata(changed)
        changed.tables["steps"].append_column(sa.Column("new_col", sa.Integer, nullable=True))
        diff = migrations.differences(c, changed)
    engine.dispose()
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "steps", "new_col")]


def test_the_revisions_are_one_line_ending_at_the_head_the_store_knows():
    script = migrations.script_directory()
    assert script.get_heads() == [m.SCHEMA_REVISION]  # one head: no unmerged branches
    chain = [s.revision for s in script.walk_revisions()][::-1]
    assert chain == ["0001_baseline", "0002_gpu_idle", "0003_ranks_and_action_link", "0004_split_se_s",
                     "0005_bigint_row_ids"]
    assert set(migrations.LEGACY_REVISIONS.values()) <= set(chain)


OPEN_AT_GO = textwrap.dedent("""
    import os, sys, time
    from wattlens.profiler.store import Store
    go = sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.005)
    Store(sys.argv[1]).close()
""")


@pytest.mark.parametrize("start", ["new", "version 1"])
def test_many_processes_opening_one_database_at_once_all_succeed(any_db, tmp_path, start):
    if start == "version 1":
        before = _old_database(any_db, V1_DDL, 1)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_GO, any_db, str(go)], stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    time.sleep(1.0)  # let them import (a late start only makes the race less likely)
    go.touch()
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [rc for rc, _ in results] == [0] * len(procs), [err for rc, err in results if rc]
    revisions, meta = _stamp(any_db)
    assert revisions == [m.SCHEMA_REVISION] and meta["schema_version"] == str(m.SCHEMA_VERSION)
    if start == "version 1":
        engine = _engine(any_db)
        kept = {t: before[t][0] for t in ("sessions", "samples", "steps")}
        assert _rows(engine, kept) == {t: before[t][1] for t in kept}
        engine.dispose()


def test_a_revision_unknown_to_this_wattlens_is_refused_in_one_line(any_db):
    Store(any_db).close()
    engine = _engine(any_db)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    engine.dispose()
    sqlite_bytes = Path(any_db).read_bytes() if "://" not in any_db else None
    with pytest.raises(CorruptDatabaseError, match="newer wattlens") as exc:
        Store(any_db)
    assert "0099_from_the_future" in str(exc.value) and "upgrade wattlens" in str(exc.value)
    r = run_cli("sessions", "--db", any_db)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "newer wattlens" in lines[0], r.stderr
    assert _stamp(any_db)[0] == ["0099_from_the_future"]
    if sqlite_bytes is not None:
        assert hashlib.sha256(Path(any_db).read_bytes()).digest() == hashlib.sha256(sqlite_bytes).digest()


OPENS_WITHOUT_ALEMBIC = textwrap.dedent("""
    import json, sys
    from wattlens.profiler.store import Store
    Store(sys.argv[1]).close()
    print(json.dumps("alembic" in sys.modules))
""")


def test_opening_an_up_to_date_database_does_not_import_alembic(any_db):
    Store(any_db).close()
    r = subprocess.run([sys.executable, "-c", OPENS_WITHOUT_ALEMBIC, any_db], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) is False


def test_a_new_revision_written_by_the_tool_upgrades_a_database_keeping_its_rows(tmp_path, monkeypatch, any_db):
    """`python -m wattlens.profiler.store.migrations new` on a model change that SQLite cannot
    ALTER (a column's type: the table is rebuilt): the revision it writes runs on open, the
    database then matches the changed models, and no row is lost (a rebuilt ``sessions`` table
    must not cascade-delete the rows that reference it)."""
    import shutil

    from wattlens.profiler.store.migrations.__main__ import write_revision

    store = Store(any_db)
    sid, series = store.create_session(name="kept", kind="run", started_at=time.time(), start_ns=BIG_NS)
    store.write_batch(sid, [])
    store.close()
    engine = _engine(any_db)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO series (session_id, key, unit, method, label) VALUES (:s, 'k', 'W', 'm', '')"),
                  {"s": sid})
        series_id = c.execute(sa.text("SELECT id FROM series")).scalar()
        c.execute(sa.text("INSERT INTO samples (series_id, t_ns, value) VALUES (:i, :t, 1.5)"),
                  [{"i": series_id, "t": BIG_NS + k} for k in range(50)])
    engine.dispose()

    folder = tmp_path / "migrations"
    shutil.copytree(migrations.HERE / "versions", folder / "versions", ignore=shutil.ignore_patterns("__pycache__"))
    changed = sa.MetaData()
    for table in m.Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["sessions"].c.name.type = sa.Text()
    changed.tables["sessions"].append_column(sa.Column("note", sa.Text(), nullable=True))
    path = write_revision("sessions name as text", changed, folder)
    n_revisions = len(list(migrations.script_directory().walk_revisions()))
    assert path is not None and path.name == f"{n_revisions + 1:04d}_sessions_name_as_text.py"
    assert write_revision("again", m.Base.metadata, migrations.HERE) is None  # the real models: nothing to write

    monkeypatch.setattr(migrations, "HERE", folder)
    monkeypatch.setattr(m, "SCHEMA_REVISION", path.stem)
    store = Store(any_db)
    assert [s["name"] for s in store.sessions()] == ["kept"]
    assert len(store.series_data(sid)["k"][0]) == 50
    store.close()
    assert _stamp(any_db)[0] == [path.stem]
    engine = _engine(any_db)
    with engine.connect() as c:
        assert migrations.differences(c, changed) == []
    engine.dispose()


def test_a_reader_that_may_not_write_still_reads_a_current_schema_from_before_alembic(pg_url):
    """A read-only PostgreSQL role (an analyst's) on a shared database of schema 3 from before
    Alembic: listing works without upgrading it; a command that writes is refused in one line."""
    store = Store(pg_url)
    sid, _ = store.create_session(name="shared", kind="run", started_at=time.time(), start_ns=BIG_NS)
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0)
    store.close()
    engine = _engine(pg_url)
    database = engine.url.database
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE alembic_version")  # as a database from before Alembic
        c.exec_driver_sql("DO $$ BEGIN CREATE ROLE reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        c.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{database}" TO reader')
        c.exec_driver_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
        c.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    engine.dispose()
    reader_url = pg_url.replace("postgres@", "reader@", 1)
    r = run_cli("sessions", "--db", reader_url, "--json")
    assert r.returncode == 0, r.stderr
    assert [row["name"] for row in json.loads(r.stdout)] == ["shared"]
    r = run_cli("attach", "1", "--duration", "1", "--db", reader_url)  # a writer must be able to upgrade it
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "permission denied" in lines[0] and "allowed to change its tables" in lines[0]
    engine = _engine(pg_url)
    assert "alembic_version" not in sa.inspect(engine).get_table_names()  # not upgraded by the reader
    engine.dispose()
    Store(pg_url).close()  # its owner upgrades it
    assert _stamp(pg_url)[0] == [m.SCHEMA_REVISION]
