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


@pytest.fixture(scope="session")
def pg_server():
    """The socket folder of a running throwaway PostgreSQL server (skips where there is none)."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; "
                    "apt-get install postgresql-15, or set WATTLENS_TEST_PG_BIN)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
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

    run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
    opts = f"-c listen_addresses='' -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run("pg_ctl", "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "120", "start")
    try:
        yield root
    finally:
        subprocess.run(_as_owner([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_counter = itertools.count()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A URL of a new, empty database on the throwaway server."""
    import psycopg

    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"host={pg_server} user=postgres dbname=postgres", autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={pg_server}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path) -> str:
    """The database a both-backends test uses: an SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "wattlens.db")
    return request.getfixturevalue("pg_url")
