"""The schema's history as Alembic revisions (``versions/``), run by ``Store`` when it opens a
database that is not at the head revision: new, older, or from before wattlens used Alembic.

Programmatic, no ``env.py`` or ``alembic.ini``: ``upgrade`` runs the revisions on a connection the
store has already locked (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``pg_advisory_xact_lock``), in
that connection's transaction. Alembic is imported only here and only on that path: opening an
up-to-date database reads its revision with plain SQL and never imports it.

Adding a migration: change models.py, then ``python -m wattlens.profiler.store.migrations new
"what changed"`` (``__main__.py``) writes the next revision from the difference between the
head and the models; review it, then set ``models.SCHEMA_REVISION`` (and ``SCHEMA_VERSION`` when
an older wattlens could no longer use the database). tests/test_store_migrations.py fails while
the models and the revisions differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent
#: ``meta.schema_version`` of a database from before Alembic (it has no ``alembic_version``
#: table) → the revision its schema is known to be at (0: no schema_version row, read as 1).
#: 3 → the revision *before* 3: two branches both wrote 3 with half of its columns each, and 0003
#: adds whichever columns are missing.
LEGACY_REVISIONS = {0: "0001_baseline", 1: "0001_baseline", 2: "0002_gpu_idle", 3: "0002_gpu_idle"}
#: the PostgreSQL advisory lock taken while a database's schema is created or upgraded
#: (a constant shared by every wattlens process: 0x7761747473 is "watts")
PG_LOCK_KEY = 0x7761747473


class UnknownRevisionError(Exception):
    """The database is at a revision this wattlens does not have (written by a newer one)."""

    def __init__(self, revision: str, head: str):
        super().__init__(revision)
        self.revision, self.head = revision, head


def script_directory(folder: Path | None = None) -> ScriptDirectory:
    """The revisions in ``folder``/versions (by default ``HERE``: those shipped in this package,
    loaded from their .py files)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(folder or HERE))


def head(script: ScriptDirectory | None = None) -> str:
    return (script or script_directory()).get_current_head()


def check_known(revision: str | None, script: ScriptDirectory) -> None:
    known = {s.revision for s in script.walk_revisions()}
    if revision is not None and revision not in known:
        raise UnknownRevisionError(revision, head(script))


def upgrade(conn: Connection, script: ScriptDirectory, revision: str | None, legacy_version: int | None) -> list[str]:
    """Run every revision after ``revision`` on ``conn``, inside its open transaction (the caller
    holds the lock and commits). ``revision`` None and ``legacy_version`` given: a database from
    before Alembic, stamped at ``LEGACY_REVISIONS[legacy_version]`` first; both None: an empty
    database, built from the baseline. Returns the revisions run, oldest first."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    check_known(revision, script)
    ran: list[str] = []
    ctx = MigrationContext.configure(conn, opts={
        "script": script,
        "fn": lambda rev, _ctx: script._upgrade_revs("head", rev),  # what `alembic upgrade head` runs
        "on_version_apply": [lambda step, **_kw: ran.append(step.up_revision_id)],
    })
    if revision is None and legacy_version is not None:
        ctx.stamp(script, LEGACY_REVISIONS[legacy_version])
    with Operations.context(ctx):
        ctx.run_migrations()
    return ran


def differences(conn: Connection, metadata) -> list:
    """What Alembic's autogenerate finds between the database on ``conn`` and ``metadata``
    (empty: the migrations build exactly the models)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    return compare_metadata(MigrationContext.configure(conn), metadata)
