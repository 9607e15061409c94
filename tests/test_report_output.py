"""Issue 9 items 4 and 9: `report -o` writes only regular files or new paths, atomically, with
the umask's permissions, and an unwritable place is one line with exit 2."""

from __future__ import annotations

import os
import socket
import stat
import time

import pytest

from tests.conftest import run_cli
from wattlens.app.report.formats import write_report
from wattlens.app.report.output import write_output
from wattlens.profiler.errors import BadInputError, WattlensError
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.store import Store


@pytest.fixture
def stored(db_path):
    store = Store(db_path)
    s = ProfilingSession(store, name="out", interval_s=0.05)
    sid = s.start()
    time.sleep(0.2)
    s.stop("completed", "done")
    return store, sid


def _one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr
    return lines[0]


def test_fifo_is_refused_and_stays_a_fifo(stored, tmp_path, db_path):
    _, sid = stored
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = run_cli("report", str(sid), "--format", "json", "-o", str(fifo), "--db", str(db_path))
    assert r.returncode == 2
    assert "not a regular file" in _one_line(r)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pipe", db_path.name, *_db_extras(tmp_path)])


def _db_extras(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith("wattlens.db-")]


def test_symlink_is_refused_and_its_target_untouched(stored, tmp_path):
    store, sid = stored
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    link = chosen / "report.md"
    link.symlink_to(victim)
    with pytest.raises(BadInputError, match="symbolic link"):
        write_report(store, sid, "md", link)
    assert link.is_symlink() and victim.read_text() == "keep me"
    assert os.listdir(chosen) == ["report.md"]


def test_device_is_refused(stored):
    store, sid = stored
    with pytest.raises(BadInputError, match="not a regular file"):
        write_report(store, sid, "json", "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_socket_is_refused(stored, tmp_path):
    store, sid = stored
    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(str(path))
        with pytest.raises(BadInputError, match="not a regular file"):
            write_report(store, sid, "csv", path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        srv.close()


def test_existing_regular_file_is_replaced_keeping_its_mode(stored, tmp_path):
    store, sid = stored
    out = tmp_path / "r.json"
    out.write_text("old")
    os.chmod(out, 0o600)
    write_report(store, sid, "json", out)
    assert out.read_text().startswith("{") and stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_new_file_respects_the_umask(stored, tmp_path):
    store, sid = stored
    old = os.umask(0o077)
    try:
        out = write_report(store, sid, "md", tmp_path / "private.md")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    out = tmp_path / "r.txt"
    out.write_text("previous")

    def half_then_fail(p):
        p.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WattlensError, match="No space left") as info:
        write_output(out, half_then_fail)
    assert info.value.exit_code == 1
    assert out.read_text() == "previous" and os.listdir(tmp_path) == ["r.txt"]


def test_unwritable_folder_is_one_line_exit_2(stored, tmp_path, db_path):
    _, sid = stored
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        # root ignores folder permissions: a read-only bind mount is the honest test
        import subprocess

        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip("cannot make a read-only mount here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
    else:
        os.chmod(ro, 0o500)
    try:
        r = run_cli("report", str(sid), "--format", "md", "-o", str(ro / "r.md"), "--db", str(db_path))
    finally:
        if os.geteuid() == 0:
            import subprocess

            subprocess.run(["umount", str(ro)], capture_output=True)
        else:
            os.chmod(ro, 0o700)
    assert r.returncode == 2, r.stderr
    assert "cannot write" in _one_line(r)
    assert not (ro / "r.md").exists()
