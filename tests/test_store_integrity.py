"""Storage integrity: sessions are never lost, foreign files are never changed, and every store
fault is one line (issue 9, storage half). Everything runs for real: real SQLite files, real
processes, a real `wattlens optimize` child; the only injected fault is a disk-full error at the
DBAPI boundary (plus a real full tmpfs where mounting is permitted)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from tests.conftest import run_cli
from tests.test_report_views import SCHEMA_PATH, validate
from wattlens.profiler.errors import CorruptDatabaseError
from wattlens.profiler.records import SeriesSpec
from wattlens.profiler.store import Store

pytest_plugins = ["tests.gui_fixtures"]  # the real app, offscreen, for the app-level WAL test


def _session(store, name="s"):
    sid, _ = store.create_session(
        name=name, kind="attach", started_at=time.time(), start_ns=time.monotonic_ns(),
        sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
        series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")])
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=0.1)
    return sid


def _listed_ids(db: Path) -> list[int]:
    """The sessions a fresh process sees, through the real CLI."""
    r = run_cli("sessions", "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    return sorted(row["id"] for row in json.loads(r.stdout))


def _deleted_fds(db: Path) -> list[str]:
    """This process's descriptors on the database's files that were unlinked under it."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(db)) and target.endswith("(deleted)"):
            out.append(target)
    return out


def _hash_folder(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- item 1: a second Store or another process never deletes the WAL we still use ---------------
def test_a_second_store_and_a_child_process_never_delete_the_wal_this_process_uses(tmp_path):
    db = tmp_path / "w.db"
    a = Store(db)
    first = _session(a, "before")
    held = a.engine.connect()  # as the GUI does: a pooled connection stays open
    held.execute(text("SELECT count(*) FROM sessions")).all()
    Store(db).close()  # a second Store in this process, opened and closed
    subprocess.run([sys.executable, "-c", "import sys; from wattlens.profiler.store import Store; "
                    "Store(sys.argv[1]).close()", str(db)], check=True, timeout=120)
    assert (tmp_path / "w.db-wal").exists() and (tmp_path / "w.db-shm").exists()
    assert _deleted_fds(db) == []
    later = [_session(a, f"after {i}") for i in range(3)]
    assert _listed_ids(db) == sorted([first, *later])  # a fresh process sees every session now
    held.close()
    a.close()


OPTIMIZE_CONCURRENT = textwrap.dedent("""
    import json, subprocess, sys, time
    from wattlens.app.doctor import doctor
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store
    db, model, out = sys.argv[1:4]
    store = Store(db)  # held for the whole run, as the desktop app holds it
    discovery = discover(gpu=False)
    ids = []
    def record(name):
        s = ProfilingSession(store, name=name, interval_s=0.05, duration_s=0.3, discovery=discovery)
        ids.append(s.start())
        s.run(poll_s=0.05)
    record("before optimize")
    child = subprocess.Popen([sys.executable, "-m", "wattlens.app", "optimize", model, "--action",
                              "bf16", "--out", out, "--rounds", "1", "--db", db, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while child.poll() is None:
        record(f"during optimize {len(ids)}")
        doctor(db=db)  # as the app's Doctor tab does: a second Store in this process, opened and closed
    stdout, stderr = child.communicate()
    assert child.returncode == 0, stderr
    ids.append(json.loads(stdout)["session_id"])
    for i in range(2):
        record(f"after optimize {i}")
    print(json.dumps(ids), flush=True)
    sys.stdin.readline()  # keep the store open while the test looks from a fresh process
""")


def test_sessions_recorded_while_optimize_runs_on_the_same_db_are_all_stored(tmp_path):
    """The app-level scenario without Qt: a process holding a Store and recording sessions (as the
    GUI does), with its Doctor check opening a second Store, runs the real `wattlens optimize` child
    on the same file ("Apply to a model copy…"); every session it reported is visible from a fresh
    process while it still holds the file, and it writes into no deleted WAL."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tmp_path / "gpt"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=32,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(model)
    db = tmp_path / "w.db"
    app = subprocess.Popen([sys.executable, "-c", OPTIMIZE_CONCURRENT, str(db), str(model), str(tmp_path / "int8")],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = app.stdout.readline()
        assert line, "the app-like process failed (see its stderr)"
        reported = json.loads(line)
        assert len(reported) >= 4
        assert _listed_ids(db) == sorted(reported)
        wal = Path(f"{db}-wal")
        assert wal.exists()
        deleted = [os.readlink(f"/proc/{app.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{app.pid}/fd")
                   if os.readlink(f"/proc/{app.pid}/fd/{fd}").endswith("(deleted)")]
        assert not [d for d in deleted if d.startswith(str(db))]
    finally:
        app.communicate("\n", timeout=120)
    assert app.returncode == 0


@pytest.mark.slow
def test_the_app_applying_a_model_copy_while_recording_loses_no_session(make_window, qtbot, stored_db, tmp_path,
                                                                         torch_loop, gui):
    """The issue's scenario in the real app (Qt offscreen): the window holds the database, its
    Doctor tab opens a second Store, "Apply to a model copy…" runs `wattlens optimize` on the same
    file, and the app records sessions during and after it; a fresh process lists every one."""
    from tests.test_gui_advisor import SAVE_TINY_GPT2, _add_mlp_layers, _open

    _add_mlp_layers(stored_db, 2)
    model_dir = tmp_path / "tiny-gpt2"
    subprocess.run([sys.executable, "-c", SAVE_TINY_GPT2, str(model_dir)], check=True, timeout=120)
    w = make_window(stored_db)
    w.settings.update(stacks=False)
    panel = _open(w, qtbot, 2)
    panel.analyse_button.click()
    qtbot.waitUntil(lambda: panel.model.analysed, timeout=60000)
    action = next(c.rec.action for c in panel.cards if c.rec.rule == "prune-mlp")
    panel.apply_rounds = 1

    def doctor_tab() -> None:  # a second Store in the app's process, opened and closed
        w.doctor_view.rows = []
        w.doctor_view.refresh()
        qtbot.waitUntil(lambda: bool(w.doctor_view.rows), timeout=60000)

    saved: list[int] = []

    def record() -> None:
        w.attach(torch_loop.pid)
        run = gui.wait_for_run(qtbot, w)
        qtbot.waitUntil(lambda: run.session.writer.rows_written > 0, timeout=30000)
        w.stop_session()
        qtbot.waitUntil(lambda: w.run is None, timeout=30000)
        assert run.session.status == "stopped"
        saved.append(run.session.session_id)

    doctor_tab()
    panel.apply(action, model_dir, tmp_path / "tiny-gpt2-pruned")
    record()  # while the child works on the same file
    qtbot.waitUntil(lambda: not panel.model.applies[action].running, timeout=300000)
    assert panel.model.applies[action].error is None, panel.model.applies[action].error
    doctor_tab()
    record()  # after the child closed the database
    assert _deleted_fds(stored_db) == []
    assert set(saved) <= set(_listed_ids(stored_db))  # seen by a fresh process, the app still open


# ---- item 3: a foreign SQLite file is refused and left byte-identical ----------------------------
@pytest.mark.parametrize("tables", [["CREATE TABLE invoices (id INTEGER, total REAL)"],
                                    ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
                                     "INSERT INTO meta VALUES ('app', 'someone-else')"],
                                    ["CREATE TABLE meta (name TEXT)"]])
def test_a_foreign_sqlite_file_is_refused_and_byte_identical(tmp_path, tables):
    db = tmp_path / "theirs.sqlite"
    con = sqlite3.connect(db)
    for sql in tables:
        con.execute(sql)
    con.commit()
    con.close()
    before = _hash_folder(tmp_path)
    with pytest.raises(CorruptDatabaseError, match="another program") as exc:
        Store(db)
    assert exc.value.exit_code == 2 and "untouched" in str(exc.value)
    assert _hash_folder(tmp_path) == before  # same bytes, and no -wal/-shm/-journal left behind
    r = run_cli("sessions", "--db", str(db))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert _hash_folder(tmp_path) == before


# ---- item 6: first opens in parallel -------------------------------------------------------------
OPEN_AT_GO = textwrap.dedent("""
    import os, sys, time
    from wattlens.profiler.store import Store
    go = sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.005)
    Store(sys.argv[1]).close()
""")


def test_many_processes_creating_a_new_database_at_once_all_succeed(tmp_path):
    db, go = tmp_path / "new.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_GO, str(db), str(go)],
                              stderr=subprocess.PIPE, text=True) for _ in range(12)]
    time.sleep(1.0)  # let them import (a start that is late only makes the race less likely)
    go.touch()
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [rc for rc, _ in results] == [0] * len(procs), [err for rc, err in results if rc]
    con = sqlite3.connect(db)
    assert sorted(con.execute("SELECT key FROM meta")) == [("app",), ("created_at",), ("schema_version",)]
    con.close()


# ---- three writers on one file -------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store
    store = Store(sys.argv[1])
    ids = []
    for i in range(3):
        s = ProfilingSession(store, name=f"{sys.argv[2]}-{i}", interval_s=0.01, duration_s=0.5,
                             discovery=discover(gpu=False))
        ids.append(s.start())
        s.run(poll_s=0.05)
    print(" ".join(map(str, ids)))
""")


def test_three_writer_processes_on_one_file_store_every_session(tmp_path):
    db = tmp_path / "w.db"
    Store(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"w{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    ids = sorted(int(x) for out, _ in outs for x in out.split())
    assert len(ids) == 9 and _listed_ids(db) == ids
    store = Store(db)
    for sid in ids:
        s = store.session(sid)
        assert s["status"] == "completed"
        t, _ = store.series_data(sid)["cpu-model/energy_j"]
        assert len(t) >= 2  # samples of every session made it


# ---- item 5: disk full: the session is stored `partial`, with what was lost, figures from what was stored
def _disk_full_after(store, ok_batches: int) -> dict:
    """Sample inserts fail as SQLite fails on a full disk once ``ok_batches`` went through (the
    fault is raised at the DBAPI boundary, below everything wattlens does)."""
    calls = {"n": 0}

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO samples"):
            calls["n"] += 1
            if calls["n"] > ok_batches:
                raise sqlite3.OperationalError("database or disk is full")

    event.listen(store.engine, "before_cursor_execute", before)
    return calls


def _wait_for(cond, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s  # a bound against hanging forever, not a speed claim
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_disk_full_stores_a_partial_session_with_what_was_lost_and_figures_from_what_was_stored(tmp_path):
    from wattlens.app.gui.models.sessions_model import session_rows
    from wattlens.app.report.data import build_report
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover

    db = tmp_path / "w.db"
    store = Store(db)
    calls = _disk_full_after(store, ok_batches=2)
    s = ProfilingSession(store, name="filling", interval_s=0.02, discovery=discover(gpu=False))
    sid = s.start()
    _wait_for(lambda: calls["n"] > 3, "two failed sample writes")
    summary = s.stop("completed", "duration reached")

    loss = summary["loss"]
    assert summary["status"] == "partial" and loss["samples"] > 0 and loss["records"] >= loss["samples"]
    assert 0 <= loss["from_s"] <= loss["to_s"] and "full" in loss["reason"]
    stored = store.session(sid)
    assert stored["status"] == "partial"
    assert "could not be written" in stored["end_reason"] and "kept in memory" not in stored["end_reason"]
    t, e = store.series_data(sid)["cpu-model/energy_j"]
    assert len(t) >= 2 and summary["energy_j"] == pytest.approx(e[-1])  # from the stored samples
    assert (t[-1] - stored["start_ns"]) / 1e9 <= loss["from_s"]  # what is stored ends where the loss begins

    # the same figures everywhere: the CLI listing, `show`, the app's session list, the reports
    listed = {r["id"]: r for r in json.loads(run_cli("sessions", "--json", "--db", str(db)).stdout)}[sid]
    shown = run_cli("show", str(sid), "--json", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    shown_doc = json.loads(shown.stdout)
    assert listed["status"] == shown_doc["session"]["status"] == "partial"
    assert listed["energy_j"] == pytest.approx(shown_doc["summary"]["energy_j"]) == pytest.approx(summary["energy_j"])
    assert shown_doc["summary"]["loss"] == pytest.approx(loss)
    (row,) = [r for r in session_rows(store) if r.id == sid]
    assert row.status == "partial" and row.energy_j == pytest.approx(summary["energy_j"])
    report = build_report(store, sid)
    assert report["summary"]["energy_j"] == pytest.approx(summary["energy_j"])
    validate(json.loads(json.dumps(report, default=str)), json.loads(SCHEMA_PATH.read_text()))
    text = run_cli("show", str(sid), "--db", str(db)).stdout
    assert "could not be written" in text and "partial" in text


def test_disk_full_exit_message_says_what_was_lost(tmp_path, monkeypatch, capsys):
    from wattlens.app import cli

    db = tmp_path / "w.db"
    store = Store(db)
    _disk_full_after(store, ok_batches=0)  # no sample write succeeds: a loss at any machine load
    monkeypatch.setattr(cli, "_open_store", lambda args: store)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        rc = cli.main(["attach", str(sleeper.pid), "--duration", "2", "--interval", "0.02", "--no-stacks",
                       "--no-gpu", "--db", str(db)])
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "stored as partial" in last and "could not be written" in last and "lost" in last
    assert "kept in memory" not in err


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 512 KiB tmpfs, where mounting is permitted (root); skipped elsewhere."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FILL_THE_DISK = textwrap.dedent("""
    import sys, time
    from wattlens.profiler.errors import StoreError
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store
    db, filler = sys.argv[1:3]
    s = ProfilingSession(Store(db), name="on a tiny disk", interval_s=0.01, discovery=discover(gpu=False))
    sid = s.start()
    while s.writer.rows_written == 0:
        time.sleep(0.02)
    try:
        with open(filler, "wb") as f:  # fill what the session has not filled yet
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError:
        pass
    while s.writer.last_error is None:
        time.sleep(0.02)
    print(sid, flush=True)
    print(s.writer.last_error, flush=True)
    try:
        summary = s.stop("completed", "done")
        print(summary["status"], summary["notes"][-1], flush=True)
    except StoreError as exc:  # the session itself could not be finished on the full disk
        print("error", exc, flush=True)
""")


def test_a_really_full_disk_loses_no_session_silently(tiny_disk):
    db, filler = tiny_disk / "w.db", tiny_disk / "filler"
    # the local spool on the same full disk: nothing can hold the records (tests/test_store_spool.py
    # has the spool on another filesystem)
    r = subprocess.run([sys.executable, "-c", FILL_THE_DISK, str(db), str(filler)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "WATTLENS_SPOOL_DIR": str(tiny_disk / "spool")})
    assert r.returncode == 0, r.stderr
    sid, error, outcome = r.stdout.strip().splitlines()
    assert "full" in error
    assert outcome.split()[0] in ("partial", "error")
    assert "could not be written" in outcome and "lost" in outcome and "kept in memory" not in outcome
    filler.unlink(missing_ok=True)
    listed = {r["id"]: r for r in json.loads(run_cli("sessions", "--json", "--db", str(db)).stdout)}[int(sid)]
    shown = json.loads(run_cli("show", sid, "--json", "--db", str(db)).stdout)
    assert listed["status"] == shown["session"]["status"] in ("partial", "interrupted")
    assert listed["energy_j"] == pytest.approx(shown["summary"]["energy_j"])


# ---- item 9: store faults are one line, exit 2, with the fix ------------------------------------
def _one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and "—" in lines[0]  # the message, then what to do
    for w in words:
        assert w in lines[0]
    return lines[0]


def test_a_bogus_db_url_or_a_missing_driver_is_one_line(tmp_path):
    _one_line_exit_2(run_cli("sessions", "--db", "foo://x"), "'foo'", "file path")
    no_driver = tmp_path / "no-driver"  # an install without psycopg: its import fails
    no_driver.mkdir()
    (no_driver / "psycopg.py").write_text("raise ImportError('No module named psycopg')\n")
    _one_line_exit_2(run_cli("sessions", "--db", "postgresql+psycopg://u@localhost/x",
                             env={"PYTHONPATH": str(no_driver)}), "not installed", "pip install")


def test_an_unreachable_postgresql_server_is_one_line(tmp_path):
    sock = tmp_path / "no-server"  # a socket folder where no server listens
    sock.mkdir()
    r = run_cli("sessions", "--db", f"postgresql+psycopg://postgres@/x?host={sock}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "cannot connect to database" in lines[0] and "—" in lines[0] and "internal error" not in lines[0]


def test_a_non_numeric_schema_version_is_one_line(db_path):
    Store(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE meta SET value='1.x' WHERE key='schema_version'")
    con.commit()
    con.close()
    _one_line_exit_2(run_cli("sessions", "--db", str(db_path)), "schema version", "backup")


def test_a_damaged_page_found_by_show_is_one_line(db_path):
    store = Store(db_path)
    sid, series = store.create_session(
        name="s", kind="attach", started_at=time.time(), start_ns=0,
        sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
        series=[SeriesSpec("cpu-model/energy_j", "J", "estimated", "cpu-model")])
    store.write_batch(sid, [(series["cpu-model/energy_j"], i, float(i)) for i in range(50_000)])
    store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0)
    store.close()
    raw = bytearray(db_path.read_bytes())
    page = 4096
    middle = (len(raw) // page // 2) * page  # a page of samples in the middle of the file
    raw[middle:middle + page] = b"\xa5" * page
    db_path.write_bytes(bytes(raw))
    assert run_cli("sessions", "--db", str(db_path)).returncode == 0  # the listing does not read samples
    _one_line_exit_2(run_cli("show", str(sid), "--db", str(db_path)), "damaged", "salvage")


# ---- item 11 (store): listing never creates, and what is created is private ----------------------
def test_listing_commands_never_create_the_database_or_its_folders(tmp_path):
    env = {"WATTLENS_DB": "", "XDG_DATA_HOME": str(tmp_path / "xdg")}
    r = run_cli("sessions", env=env)
    assert r.returncode == 0 and "no sessions yet" in r.stdout
    r = run_cli("sessions", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    _one_line_exit_2(run_cli("show", "1", env=env), "no sessions yet", "wattlens attach")
    _one_line_exit_2(run_cli("report", "1", "--format", "md", "-o", str(tmp_path / "r.md"), env=env), "no sessions yet")
    _one_line_exit_2(run_cli("advise", "1", env=env), "no sessions yet")
    r = run_cli("doctor", "--json", env=env)
    assert r.returncode == 0 and "none yet" in json.dumps(json.loads(r.stdout)["checks"])
    nested = tmp_path / "a" / "b" / "w.db"
    assert run_cli("sessions", "--db", str(nested)).returncode == 0
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "a").exists() and not (tmp_path / "r.md").exists()


def test_the_default_data_folder_is_private_and_a_users_own_file_keeps_its_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("WATTLENS_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    store = Store()
    _session(store)
    folder = tmp_path / "xdg" / "wattlens"
    assert store.path.parent == folder
    assert folder.stat().st_mode & 0o777 == 0o700
    for p in (store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")):
        assert p.stat().st_mode & 0o777 == 0o600, p
    store.close()
    mine = tmp_path / "shared.db"
    Store(mine).close()
    mine.chmod(0o644)  # the user chose to share it
    Store(mine).close()
    assert mine.stat().st_mode & 0o777 == 0o644


# ---- a read-only database file -------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file: a read-only file cannot be made")
def test_a_read_only_database_is_listed_and_refused_for_writing(db_path):
    store = Store(db_path)
    sid = _session(store)
    store.close()
    db_path.chmod(0o444)
    before = db_path.read_bytes()
    assert _listed_ids(db_path) == [sid]
    _one_line_exit_2(run_cli("attach", str(os.getpid()), "--duration", "1", "--db", str(db_path)), "read-only")
    assert db_path.read_bytes() == before


def test_a_database_on_a_read_only_mount_is_refused_in_one_line_and_untouched(tmp_path):
    """As root (who may write any file): a database on a read-only bind mount. SQLite cannot read a
    WAL database there (it must create the -shm file), so even listing is refused, in one line."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    store = Store(src / "w.db")
    sid = _session(store)
    store.close()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here ({r.stderr.strip() or r.returncode})")
    try:
        before = _hash_folder(src)
        assert sid
        _one_line_exit_2(run_cli("sessions", "--db", str(ro / "w.db")), "read-only", "writable folder")
        _one_line_exit_2(run_cli("attach", str(os.getpid()), "--duration", "1", "--db", str(ro / "w.db")),
                         "read-only")
        assert _hash_folder(src) == before
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_writer_that_cannot_write_holds_at_most_max_pending_samples_and_counts_the_rest(db_path):
    from wattlens.profiler.records import SamplePoint
    from wattlens.profiler.store.writer import StoreWriter

    store = Store(db_path)
    sid, series = store.create_session(
        name="s", kind="attach", started_at=time.time(), start_ns=0,
        sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
        series=[SeriesSpec("cpu-model/power_w", "W", "estimated", "cpu-model")])
    _disk_full_after(store, ok_batches=0)
    w = StoreWriter(store, sid, series, max_pending=100)
    w([SamplePoint("cpu-model/power_w", t, 1.0) for t in range(250)])
    w._drain()
    w._flush()
    assert w.pending == 100 and w.loss.samples == 150  # the oldest went first
    assert (w.loss.t_first_ns, w.loss.t_last_ns) == (0, 149) and "full" in w.loss.reason
    loss = w.stop()  # the last try fails too: everything still held is lost, and counted
    assert loss.samples == loss.records == 250 and (loss.t_first_ns, loss.t_last_ns) == (0, 249)
    assert w.pending == 0


def test_a_killed_profilers_session_lists_the_figures_show_computes(db_path):
    """SIGKILL mid-session: the session reopens `interrupted` and its summary is recomputed from
    the stored rows, so the listing and `show` agree (test_store.py checks what is kept)."""
    import signal

    from tests.test_store import CRASHER

    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(db_path)], stdout=subprocess.PIPE, text=True)
    sid = int(proc.stdout.readline())
    peek = Store(db_path, recover=False)
    _wait_for(lambda: len(peek.series_data(sid).get("cpu-model/energy_j", ((), ()))[0]) >= 2, "stored samples")
    peek.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    listed = {r["id"]: r for r in json.loads(run_cli("sessions", "--json", "--db", str(db_path)).stdout)}[sid]
    shown = json.loads(run_cli("show", str(sid), "--json", "--db", str(db_path)).stdout)
    assert listed["status"] == shown["session"]["status"] == "interrupted"
    assert listed["energy_j"] is not None and listed["energy_j"] == pytest.approx(shown["summary"]["energy_j"])


# ---- damaged pages, a full disk at start, an unwritable location: found before anything is written --
def _damaged_copy(db: Path, *, where: str = "middle", seed: int = 7) -> str:
    """A real store with three sessions of samples, then 20 kB of random bytes over its middle (as
    a failing disk or a bad copy leaves it), or over the first page of the ``sessions`` table.
    Returns the damaged file's sha256."""
    import random

    store = Store(db)
    for k in range(3):
        sid, series = store.create_session(
            name=f"s{k}", kind="attach", started_at=time.time(), start_ns=0,
            sources=[{"id": "cpu-model", "kind": "cpu", "method": "estimated", "label": "CPU"}],
            series=[SeriesSpec("cpu-model/energy_j", "J", "estimated", "cpu-model")])
        store.write_batch(sid, [(series["cpu-model/energy_j"], i, float(i)) for i in range(40_000)])
        store.finish_session(sid, status="completed", end_reason="done", ended_at=time.time(), duration_s=1.0)
    store.close()
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='sessions'").fetchone()[0]
    con.close()
    raw = bytearray(db.read_bytes())
    rng = random.Random(seed)
    at, size = (len(raw) // 2, 20_000) if where == "middle" else ((root - 1) * page, page)
    raw[at:at + size] = rng.randbytes(size)
    db.write_bytes(bytes(raw))
    assert not Path(f"{db}-wal").exists()
    return hashlib.sha256(db.read_bytes()).hexdigest()


def test_run_and_attach_refuse_a_damaged_database_untouched_and_listing_warns(tmp_path):
    """Reported: `show` called the file damaged while `run` wrote a session into it and `sessions`
    listed it without a word. Now the writers check its pages first and refuse it, byte-identical."""
    db = tmp_path / "c1.db"
    digest = _damaged_copy(db)
    r = run_cli("run", "--db", str(db), "--", sys.executable, "-c", "pass")
    line = _one_line_exit_2(r, "is damaged", "malformed", "salvage", "--db")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert _one_line_exit_2(run_cli("attach", str(sleeper.pid), "--duration", "1", "--no-stacks",
                                        "--db", str(db)), "is damaged") == line
    finally:
        sleeper.kill()
        sleeper.wait()
    listed = run_cli("sessions", "--json", "--db", str(db))
    assert listed.returncode == 0 and sorted(s["id"] for s in json.loads(listed.stdout)) == [1, 2, 3]
    assert listed.stderr.strip().splitlines() == [line.replace("error: ", "", 1)]  # the same line, as a warning
    doc = run_cli("doctor", "--json", "--db", str(db))
    check = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "database")
    assert not check["ok"] and "is damaged" in check["detail"] and "sqlite3" in check["fix"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    wal = tmp_path / "c1.db-wal"  # (the listing's own read connection may leave an empty one)
    assert not wal.exists() or wal.stat().st_size == 0


def test_damage_outside_the_samples_is_found_however_short_the_check(tmp_path):
    """Every table but `samples` is checked in full whatever the time budget (samples and the
    rest of the file within it); a reader keeps the damage it found and does not write."""
    from wattlens.profiler.store import store as store_module

    db = tmp_path / "w.db"
    digest = _damaged_copy(db, where="sessions")
    with pytest.raises(CorruptDatabaseError, match="is damaged"):
        Store(db, check_s=1e-6)
    reader = Store(db, create=False, check_s=1e-6)
    assert reader.damage is not None and "is damaged" in str(reader.damage)
    reader.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert store_module.READ_CHECK_S <= store_module.WRITE_CHECK_S



def test_the_salvage_command_the_damaged_line_prints_works_and_wattlens_opens_its_result(tmp_path):
    """Reported: the hint said `sqlite3 FILE .recover`, which Debian's sqlite3 (3.40.1, built
    without the sqlite_dbpage table) fails on every file with "SQL logic error"; and `.dump` piped
    into a new file loads nothing, as it ends a damaged file's dump with ROLLBACK. The command in
    the line, run as printed, salvages the rows into a new file that wattlens opens and writes."""
    for tool in ("sqlite3", "sed", "sh"):
        if shutil.which(tool) is None:
            pytest.skip(f"no `{tool}` command here: the salvage command in the hint cannot be run")
    folder = tmp_path / "my data"  # a space: the paths in the command are quoted
    folder.mkdir()
    db = folder / "c.db"
    digest = _damaged_copy(db)
    line = _one_line_exit_2(run_cli("run", "--db", str(db), "--", sys.executable, "-c", "pass"),
                            "is damaged", "salvage", "--db")
    command = re.search(r"`([^`]+)`", line).group(1)
    salvaged = folder / "c-salvaged.db"
    assert str(db) in command and str(salvaged) in command and "FILE" not in command
    r = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    store = Store(salvaged)  # a writer: every page checked
    assert store.damage is None and sorted(s["id"] for s in store.sessions()) == [1, 2, 3]
    _session(store, "after")
    store.close()
    con = sqlite3.connect(salvaged)
    kept = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    con.close()
    assert 100_000 < kept < 120_000  # all but the rows on the pages the 20 kB of noise hit
    assert _listed_ids(salvaged) == [1, 2, 3, 4]
    with pytest.raises(CorruptDatabaseError, match="c-salvaged-2.db"):  # never a file that exists
        Store(db)


HOLD = textwrap.dedent("""
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1])
    con.execute("PRAGMA schema_version").fetchall()  # reads: SQLite opens the -wal and -shm
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_refused_damaged_database_leaves_its_folder_as_it_was(tmp_path):
    """Reported: a damaged file that `run` refused kept an empty -wal and a -shm beside it, made
    by SQLite for the read-only page check (a read-only connection cannot remove them). Refusing
    it, and only looking at it (a reader, doctor), leave its folder byte for byte as it was; a
    -wal that was there before is never removed, nor one that another process uses."""
    from wattlens.profiler.store.store import _drop_probe_files

    folder = tmp_path / "d"
    folder.mkdir()
    db = folder / "c.db"
    _damaged_copy(db)
    before = _hash_folder(folder)
    with pytest.raises(CorruptDatabaseError, match="is damaged"):
        Store(db)
    assert _hash_folder(folder) == before
    _one_line_exit_2(run_cli("run", "--db", str(db), "--", sys.executable, "-c", "pass"), "is damaged")
    assert _hash_folder(folder) == before
    reader = Store(db, create=False)
    assert reader.damage is not None
    reader.close()
    assert _hash_folder(folder) == before
    doc = run_cli("doctor", "--json", "--db", str(db))
    assert not next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "database")["ok"]
    assert _hash_folder(folder) == before
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    wal.write_bytes(b"")  # there before the open: not ours to remove, even empty
    with pytest.raises(CorruptDatabaseError):
        Store(db)
    assert wal.exists()
    wal.unlink()
    shm.unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        inodes = (wal.stat().st_ino, shm.stat().st_ino)
        _drop_probe_files(db)  # as if the probe had made them: SQLite sees the other connection
        assert (wal.stat().st_ino, shm.stat().st_ino) == inodes
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def _full_filesystem(monkeypatch, under: Path) -> None:
    """The OS says the filesystem holding ``under`` has no free block left (os.statvfs, the call
    the store asks); everything else is real."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if not str(Path(path).absolute()).startswith(str(under)):
            return st
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_full_disk_at_start_is_said_as_such(tmp_path, monkeypatch, capsys):
    """Reported: `run` on a full disk said "disk I/O error — check its permissions". SQLite's real
    I/O error on the -shm file it must create (a FIFO there fails the same way as ENOSPC does) with
    the OS saying the filesystem is full: one line that says the disk is full, nothing written."""
    from wattlens.app import cli

    db = tmp_path / "f.db"
    store = Store(db)
    _session(store)
    store.close()
    os.mkfifo(f"{db}-shm")
    before = db.read_bytes()
    assert cli.main(["run", "--db", str(db), "--", sys.executable, "-c", "pass"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk I/O error" in err[0] and "is full" not in err[0]  # space left: not full
    _full_filesystem(monkeypatch, tmp_path)
    assert cli.main(["run", "--db", str(db), "--", sys.executable, "-c", "pass"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the disk holding {db} is full — free some space" in err[0], err
    assert "permissions" not in err[0] and "holds unwritten samples" not in err[0]
    assert db.read_bytes() == before


def test_a_really_full_disk_at_start_is_one_line_and_leaves_the_database_untouched(tiny_disk):
    db = tiny_disk / "f.db"
    store = Store(db)
    _session(store)
    store.close()
    before = db.read_bytes()
    try:
        with open(tiny_disk / "filler", "wb") as f:
            while True:
                f.write(bytes(4096))
                f.flush()
    except OSError:  # the disk is full
        pass
    for target in (db, tiny_disk / "new.db"):
        r = run_cli("run", "--db", str(target), "--", sys.executable, "-c", "pass")
        _one_line_exit_2(r, f"the disk holding {target} is full", "free some space", "nothing was written")
    assert db.read_bytes() == before


def test_doctor_says_a_database_cannot_be_created_where_run_would_refuse_it(tmp_path, monkeypatch):
    """Reported: doctor said "none yet: the first session creates it" for a folder that could not
    be written, then run/attach refused it. The folder is made unwritable at the OS boundary
    (os.access, as a read-only mount answers it; root passes every permission check)."""
    from wattlens.app.doctor import doctor
    from wattlens.profiler.errors import StoreError

    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if Path(p) == folder and mode & os.W_OK else real(p, mode, **kw)))
    for db in (folder / "x.db", folder / "sub" / "x.db"):
        check = next(c for c in doctor(db=str(db))["checks"] if c["name"] == "database")
        with pytest.raises(StoreError) as refused:
            Store(db)
        assert not check["ok"] and "not writable" in check["detail"] and "--db" in check["fix"]
        assert (check["detail"], check["fix"]) == (refused.value.message, refused.value.hint)
    assert list(folder.iterdir()) == []
    fine = tmp_path / "fine" / "x.db"
    check = next(c for c in doctor(db=str(fine))["checks"] if c["name"] == "database")
    assert check["ok"] and "none yet" in check["detail"] and not fine.parent.exists()


def test_doctor_on_a_read_only_mount_says_what_run_says(tmp_path):
    """As root: a read-only bind mount, through the real CLI; nothing is created there."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here ({r.stderr.strip() or r.returncode})")
    try:
        for db in (ro / "x.db", ro / "sub" / "x.db"):
            doc = run_cli("doctor", "--json", "--db", str(db))
            check = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "database")
            assert not check["ok"] and "read-only filesystem" in check["detail"], check
            line = _one_line_exit_2(run_cli("run", "--db", str(db), "--", sys.executable, "-c", "pass"))
            assert line == f"wattlens: error: {check['detail']} — {check['fix']}"
        assert list(src.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
