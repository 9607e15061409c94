"""A throwaway PostgreSQL server for the store tests (a pytest plugin, loaded by conftest.py).

One server per test session: Debian's PostgreSQL binaries (``/usr/lib/postgresql/*/bin``, or
``WATTLENS_TEST_PG_BIN``), a cluster in a temporary folder, a Unix socket in that folder and no
TCP, fsync off. ``initdb`` refuses root, so as root the cluster belongs to the ``postgres`` user
(``runuser``). Every test gets a fresh database. Where the binaries are absent the PostgreSQL
half of the tests is skipped, saying so; `.ci/run` installs them when missing.

``any_db``: a parametrised fixture, ``sqlite`` (a file path) and ``postgresql`` (a URL), for the
tests that must pass on both backends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    explicit = os.environ.get("WATTLENS_TEST_PG_BIN")
    if explicit:
        return Path(explicit) if (Path(explicit) / "initdb").exists() else None
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class NoServer(Exception):
    """Why no throwaway server can start here (the tests skip with it)."""


@contextlib.contextmanager
def throwaway_server():
    """Start a PostgreSQL server in a temporary folder; yields its socket folder; stops and removes
    it on exit. Raises NoServer where the binaries or the driver are absent. Also used by
    benchmarks/bench_pg.py."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        raise NoServer("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; "
                       "apt-get install postgresql-15, or set WATTLENS_TEST_PG_BIN)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise NoServer("psycopg is not installed (pip install 'psycopg[binary]')") from None
    root = Path(tempfile.mkdtemp(prefix="wattlens-pg-", dir="/tmp"))  # short: sockets cap paths at 107
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    log = root / "server.log"

    def run(*cmd: str) -> None:
        r = subprocess.run(_as_owner([str(pg_bin / cmd[0]), *cmd[1:]]), capture_output=True, text=True)
        if r.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr or r.stdout}\n{tail}")

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = f"-c listen_addresses='' -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        run("pg_ctl", "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "120", "start")
        yield root
    finally:
        subprocess.run(_as_owner([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(socket_dir: Path, name: str) -> str:
    """Create database ``name`` on the server at ``socket_dir``; returns its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(f"host={socket_dir} user=postgres dbname=postgres", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={socket_dir}"


@pytest.fixture(scope="session")
def pg_server():
    """The socket folder of a running throwaway PostgreSQL server (skips where there is none)."""
    try:
        with throwaway_server() as root:
            yield root
    except NoServer as exc:
        pytest.skip(str(exc))


_counter = itertools.count()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A URL of a new, empty database on the throwaway server."""
    return new_database(pg_server, f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path) -> str:
    """The database a both-backends test uses: an SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "wattlens.db")
    return request.getfixturevalue("pg_url")
