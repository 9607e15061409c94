"""``Store``: the only code in wattlens that speaks SQL.

SQLite by default (a file in the platform's user data dir), or any SQLAlchemy URL given with
``--db`` / ``WATTLENS_DB``. WAL mode, the schema brought to the head Alembic revision on open
(``migrations/``; an up-to-date database is only read, without importing Alembic), batched inserts through
SQLAlchemy Core (the ORM is too slow for 100k samples/s). A file that is not a wattlens
database is refused with a one-line error and never written to. Sessions left ``running`` by a
profiler that no longer exists reopen as ``interrupted`` with their data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sqlite3
import stat
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
from sqlalchemy import (
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
)

from wattlens.profiler.errors import (
    BadInputError,
    CorruptDatabaseError,
    NoDatabaseError,
    SessionNotFoundError,
    StoreError,
    WattlensError,
)
from wattlens.profiler.figures import AGENT_TIMING
from wattlens.profiler.records import EventRecord, LayerCost, SeriesSpec, StepRecord
from wattlens.profiler.store import models as m
from wattlens.profiler.summary import FIGURES_VERSION, summarize

BUSY_TIMEOUT_MS = 5000  # an SQLite writer waits this long for another's lock before "locked"
UPGRADE_LOCK_WAIT_MS = 120_000  # while opening: others may be creating or upgrading the same file
DB_FIX = "choose another file with --db PATH (or WATTLENS_DB); the file was left untouched"
NO_DB_HINT = "record one with `wattlens attach PID`, `wattlens run -- COMMAND` or `wattlens demo`"
WRITABLE_HINT = "choose a writable location with --db PATH (or WATTLENS_DB)"
# Page check on open (``PRAGMA quick_check`` on the read-only probe's connection, so a damaged
# file is refused before anything writes to it). quick_check reads every page: on a 466 MB store
# built by this writer (20 sessions, 10 M samples, 113,772 pages of 4 KiB; 2-core VM, SQLite
# 3.40) it took 1.3 s with the file in the page cache (2.1 s while the machine was busy) and
# 4.9 s after dropping the caches; the tables other than ``samples`` took under 1 ms together.
# So every table but ``samples`` is always checked in full (``quick_check(TABLE)``), and the
# whole file (samples, their index, the free-page list) within a time budget, beyond which the
# rest goes unchecked: a writer (``run``, ``attach``, the app) waits at most WRITE_CHECK_S (a
# store of about 1 GB checked in full when cached), a reader (``sessions``, ``show``...) at most
# READ_CHECK_S. A writer refuses a damaged file; a reader warns in one line and reads what it can
# (a read that meets a damaged page is refused on its own).
WRITE_CHECK_S = 3.0
READ_CHECK_S = 0.5
FULL_FREE_BYTES = 1 << 20  # an I/O error with less than this left on the filesystem: it is full

log = logging.getLogger(__name__)


def host_name() -> str:
    """The name sessions are stored under: ``WATTLENS_HOST`` if set (a node's name in a cluster
    whose hostnames repeat, and the tests' stand-in for a second machine), else the hostname."""
    return os.environ.get("WATTLENS_HOST") or socket.gethostname()


def default_db_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("wattlens", appauthor=False)) / "wattlens.db"


def resolve_db(db: str | os.PathLike | None) -> str:
    """A path or SQLAlchemy URL → SQLAlchemy URL. None → WATTLENS_DB → the default file."""
    db = db or os.environ.get("WATTLENS_DB") or default_db_path()
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().absolute()}"


class Stamp(NamedTuple):
    """What a wattlens database says its schema is: ``meta.schema_version`` (what wattlens before
    Alembic read) and its Alembic revision (None in a database from before Alembic)."""

    schema_version: str | None
    revision: str | None

    @property
    def current(self) -> bool:
        return self.revision == m.SCHEMA_REVISION and self.schema_version == str(m.SCHEMA_VERSION)


def _probe_sqlite_file(path: Path, display: str, *, check_s: float = 0.0,
                       ) -> tuple[str, Stamp | None, CorruptDatabaseError | None]:
    """What the file at ``path`` is: "missing", "empty" (0 bytes or no tables) or "ours" (with its
    stamp, and the damage ``PRAGMA quick_check`` found in its pages within ``check_s`` seconds, see
    ``_check_pages``: None when none was found); raises a one-line error for anything else.

    Only SQLite ever opens the file, read-only and without any pragma: closing a descriptor that
    Python opened on a database file would drop every POSIX lock this process holds on it (SQLite,
    "How To Corrupt An SQLite Database File" §2.2) and let another process delete the WAL a live
    connection here still writes to. SQLite tracks its own descriptors per inode and never does that.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing", None, None
    except OSError as exc:  # a folder on the way is a file, or may not be searched
        check_location(path, display)  # says which, as `wattlens doctor` does
        raise StoreError(f"cannot use database {display}: {exc.strerror or exc}",
                         hint="fix the permissions or choose a writable location with --db PATH (or WATTLENS_DB)") from None
    if stat.S_ISDIR(st.st_mode):
        raise CorruptDatabaseError(f"{display} is a folder, not a database file", hint=DB_FIX)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptDatabaseError(f"{display} is not a regular file", hint=DB_FIX)
    if st.st_size == 0:
        return "empty", None, None
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read database {display}: permission denied",
                         hint="fix its permissions or choose another file with --db")
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {display}: {exc}",
                         hint="fix its permissions or choose another file with --db") from None
    try:
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError as exc:  # cannot open: permissions, locks, a read-only folder, a full disk
            if not os.access(path.parent, os.W_OK):
                raise StoreError(f"cannot read database {display}: its folder is read-only and SQLite must "
                                 f"create {path.name}-shm beside it",
                                 hint="copy the file to a writable folder and pass that with --db") from None
            if _disk_full(path.parent, exc):  # SQLite could not create or grow the -shm file beside it
                raise _disk_full_error(display, starting=True) from None
            raise StoreError(f"cannot open database {display}: {exc}",
                             hint="check its permissions and that nothing else holds it locked") from None
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise CorruptDatabaseError(f"{display} is not a wattlens database (not an SQLite file)",
                                           hint=DB_FIX) from None
            raise _damaged(display, exc) from None
        if not tables:
            return "empty", None, None
        if "meta" not in tables:
            raise CorruptDatabaseError(f"{display} is a database of another program "
                                       f"(tables: {', '.join(sorted(tables)[:5])})", hint=DB_FIX)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            if "no such column" in str(exc):
                raise CorruptDatabaseError(f"{display} is a database of another program", hint=DB_FIX) from None
            raise _damaged(display, exc) from None
        check_meta(meta, display)
        revision = None
        if "alembic_version" in tables:
            try:
                revision = (con.execute("SELECT version_num FROM alembic_version").fetchone() or (None,))[0]
            except sqlite3.DatabaseError as exc:
                raise _damaged(display, exc) from None
        damage = _check_pages(con, tables, display, check_s) if check_s > 0 else None
    finally:
        con.close()
    return "ours", Stamp(meta.get("schema_version"), revision), damage


def _check_pages(con: sqlite3.Connection, tables: set[str], display: str,
                 budget_s: float) -> CorruptDatabaseError | None:
    """The damage ``PRAGMA quick_check`` finds in the file's pages, or None. Every table but
    ``samples`` is checked in full (they are small: well under 1 ms together on a 466 MB store);
    then the whole file (``samples``, its index, the free-page list) until ``budget_s`` seconds
    have passed, where it stops unfinished (cost: see WRITE_CHECK_S). Read-only: nothing is written."""
    if sqlite3.sqlite_version_info >= (3, 33, 0):  # before 3.33 a table argument checks the whole file
        for name in sorted(tables - {"samples"}):
            quoted = name.replace('"', '""')
            damage = _quick_check(con, f'PRAGMA quick_check("{quoted}")', display)
            if damage is not None:
                return damage
    # sqlite3_interrupt from a timer: a progress handler is not called inside the b-tree walk
    # (one VM step: 0.8 s of the 466 MB store's check), an interrupt is.
    timer = threading.Timer(budget_s, con.interrupt) if budget_s != float("inf") else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return _quick_check(con, "PRAGMA quick_check(1)", display)  # (1): stop at the first problem
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            log.debug("page check of %s stopped unfinished after %.1f s", display, budget_s)
            return None
        raise
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # never an interrupt on a closed connection, nor on a later statement


def _quick_check(con: sqlite3.Connection, pragma: str, display: str) -> CorruptDatabaseError | None:
    try:
        rows = con.execute(pragma).fetchall()
    except sqlite3.DatabaseError as exc:  # a page so damaged that the check itself gives up
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
            raise
        return _damaged(display, exc)
    if not rows or rows[0][0] == "ok":
        return None
    found = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
    return _damaged(display, f"database disk image is malformed: {found[:160]}")


def check_meta(meta: dict, display: str) -> None:
    """Refuse another program's database, a newer schema, or a meta table that makes no sense."""
    if meta.get("app") != m.APP_ID:
        raise CorruptDatabaseError(f"{display} is a database of another program", hint=DB_FIX)
    raw = meta.get("schema_version", "0")
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise CorruptDatabaseError(f"{display} has a damaged schema version ({str(raw)[:40]!r} is not a number)",
                                   hint=damaged_hint(display)) from None
    if version > m.SCHEMA_VERSION:
        raise CorruptDatabaseError(
            f"{display} was written by a newer wattlens (schema {version}, this one reads "
            f"{m.SCHEMA_VERSION})", hint="upgrade wattlens, or use another file with --db")


def _damaged(display: str, exc: BaseException | str) -> CorruptDatabaseError:
    return CorruptDatabaseError(f"{display} is damaged ({exc})", hint=damaged_hint(display))


def damaged_hint(display: str) -> str:
    """What to do with a damaged database; ``display``: its file's path, or a server's URL.

    The salvage is the sqlite3 CLI's ``.dump`` loaded into a new file, its last line turned from
    ROLLBACK into COMMIT: on a damaged file ``.dump`` writes every row it can read (those beyond
    a damaged page too, read backwards) and then ``ROLLBACK; -- due to errors``, which would undo
    the whole load. Not ``.recover``: Debian's sqlite3 (3.40.1, Debian 12) is built without
    SQLITE_ENABLE_DBPAGE_VTAB, and its ``.recover`` fails on every database, a sound one too
    ("SQL logic error": no such table sqlite_dbpage). Python's ``iterdump`` stops at the first
    damaged page. The result opens as a wattlens database (tests/test_store_integrity.py)."""
    if "://" in display:  # a server database (or in-memory): no file to salvage
        return "restore it from a backup, and use another database with --db meanwhile"
    path = Path(display)
    new = _salvage_path(path)
    command = (f"sqlite3 {shlex.quote(str(path))} .dump | sed '$s/^ROLLBACK;.*/COMMIT;/' "
               f"| sqlite3 {shlex.quote(str(new))}")
    return (f"restore it from a backup, or salvage what it holds into a new file with `{command}` "
            "and pass that to --db (or use another file with --db meanwhile)")


def _salvage_path(path: Path) -> Path:
    """A file beside ``path`` that does not exist yet: NAME-salvaged.db, NAME-salvaged-2.db..."""
    for n in range(1, 100):
        new = path.with_name(f"{path.stem}-salvaged{'' if n == 1 else f'-{n}'}{path.suffix}")
        if not _exists(new):
            break
    return new


def _disk_full(folder: Path, exc: BaseException | None = None) -> bool:
    """Whether an SQLite error (None: any) is the filesystem holding ``folder`` being full. SQLite
    reports ENOSPC on its -shm file as "disk I/O error" without the errno, so the filesystem is
    asked: less than FULL_FREE_BYTES left to this user, or no inode left for a new file."""
    if exc is not None and not any(w in str(exc) for w in ("disk I/O error", "full")):
        return False
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    if st.f_flag & os.ST_RDONLY:  # nothing is free on a read-only filesystem: not "full"
        return False
    root = getattr(os, "geteuid", lambda: -1)() == 0
    free = (st.f_bfree if root else st.f_bavail) * st.f_frsize  # root may use the reserved blocks
    return free < FULL_FREE_BYTES or (st.f_files > 0 and st.f_favail == 0)


def _disk_full_error(display: str, *, starting: bool = False) -> StoreError:
    """``starting``: found while opening the store, before any session (exit 2, as any database
    that cannot be used); else during one, whose writer keeps what it could not write."""
    if starting:
        exc = StoreError(f"the disk holding {display} is full",
                         hint="free some space on it, or choose a file on another disk with --db PATH "
                              "(or WATTLENS_DB); nothing was written")
        exc.exit_code = 2
        return exc
    return StoreError(f"the disk holding {display} is full",
                      hint="free some space (a running session holds unwritten samples in memory and "
                           "retries until it ends)")


def check_location(path: Path, display: str) -> None:
    """Raise the one-line StoreError a writer would meet creating or writing the database file at
    ``path`` (a folder on the way that is a file, a folder that cannot be created or written, a
    read-only file or filesystem), creating nothing: ``Store`` checks this before it creates or
    writes anything, and ``wattlens doctor`` asks the same question."""
    try:
        exists = path.exists()
    except OSError:
        exists = False
    if exists:
        if path.is_file() and not os.access(path, os.W_OK):
            where = " (on a read-only filesystem)" if _read_only_fs(path.parent) else ""
            raise StoreError(f"database {display} is read-only{where}",
                             hint="fix its permissions or choose another file with --db")
        return
    folder = path.parent
    nearest = folder  # the nearest folder on the way that exists
    while not _exists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise StoreError(f"cannot use database {display}: {nearest} is a file, not a folder",
                         hint=WRITABLE_HINT)
    if not os.access(nearest, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if _read_only_fs(nearest) else "is not writable"
        if nearest == folder:
            raise StoreError(f"cannot create database {display}: folder {folder} {why}", hint=WRITABLE_HINT)
        raise StoreError(f"cannot create the folder for database {display}: {nearest} {why}", hint=WRITABLE_HINT)


def check_writable(db: str | os.PathLike | None = None) -> None:
    """Raise the one-line StoreError that ``Store(db)`` (a writer: ``run``, ``attach``) would raise
    about where the SQLite database ``db`` is (``check_location``), creating nothing; nothing is
    checked here for a server URL or an in-memory database."""
    try:
        url = make_url(resolve_db(db))
    except ArgumentError:
        return  # Store says what is wrong with it
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        check_location(Path(url.database), url.database)


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # e.g. a folder on the way that may not be searched
        return False


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _make_folder(folder: Path, display: str) -> None:
    """Create the database's folder (private: 0700, sessions hold command lines and folders)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for database {display}: {exc.strerror or exc}",
                         hint=WRITABLE_HINT) from None
    if not os.access(folder, os.W_OK):
        raise StoreError(f"cannot create database {display}: folder {folder} is not writable",
                         hint=WRITABLE_HINT)


def _json(value) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


class Store:
    """``create=False`` is for commands that only read (``sessions``, ``show``, ``report``,
    ``advise``, ``doctor``): a missing database is then :class:`NoDatabaseError` and nothing is
    created; a read-only file can be read.

    An SQLite file's pages are checked on open (``check_s`` seconds at most; WRITE_CHECK_S, or
    READ_CHECK_S with ``create=False``; 0: not at all; see ``_check_pages``): a writer refuses a
    damaged file with :class:`CorruptDatabaseError` before writing anything; a reader logs the
    same one line as a warning with its listing (``sessions``), keeps it in ``damage`` and reads
    what it can (a read that meets the damage raises it, in one line)."""

    def __init__(self, db: str | os.PathLike | None = None, *, recover: bool = True, create: bool = True,
                 check_s: float | None = None):
        self.url = resolve_db(db)
        self._opening = True  # a full disk now is said as such (_map_operational)
        try:
            url = make_url(self.url)
        except ArgumentError:
            raise CorruptDatabaseError(f"'{db}' is neither a file path nor a database URL",
                                       hint="pass a file path or a SQLAlchemy URL to --db") from None
        self.is_sqlite = url.get_backend_name() == "sqlite"
        in_memory = not url.database or url.database == ":memory:"
        self.path: Path | None = Path(url.database) if self.is_sqlite and not in_memory else None
        if check_s is None:
            check_s = WRITE_CHECK_S if create else READ_CHECK_S
        self.damage: CorruptDatabaseError | None = None
        self._damage_said = False
        self._tidy_on_close = False  # set by _probe: remove the -wal/-shm it made, if left, on close
        state, stamp = self._probe(create, check_s) if self.path is not None else (None, None)
        try:
            self.engine: Engine = create_engine(self.url, future=True)
        except NoSuchModuleError:
            raise BadInputError(f"--db {self.display_name}: '{url.drivername}' is not a kind of database wattlens "
                                "can use", hint="pass a file path, sqlite:///PATH or postgresql+psycopg://…") from None
        except ImportError as exc:
            raise BadInputError(f"--db {self.display_name}: the driver for '{url.drivername}' is not installed "
                                f"({exc})", hint="install it (for PostgreSQL: pip install 'psycopg[binary]'), "
                                "or pass a file path to --db") from None
        event.listen(self.engine, "handle_error", self._on_db_error)
        if self.is_sqlite:  # the file is ours or new (probed above): WAL may be switched on now
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self._open_schema(state, stamp, create)
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            self.engine.dispose()
            text = str(getattr(exc, "orig", exc))
            if "not a database" in text or "malformed" in text or "corrupt" in text:
                raise CorruptDatabaseError(f"{self.display_name} is damaged or not a database ({text})",
                                           hint=DB_FIX) from None
            raise StoreError(f"cannot open database {self.display_name}: {text}",
                             hint="check the path/URL and that nothing else holds it locked") from None
        except WattlensError:
            self.engine.dispose()
            raise
        if state == "missing":
            _make_private(self.path)
        if recover and self.damage is None:  # a damaged file is not written to, not even by a reader
            try:
                self.recover_interrupted()
            except StoreError:
                if create:
                    raise  # a reader of a read-only file still reads; a writer must be told
        self._opening = False

    def _probe(self, create: bool, check_s: float) -> tuple[str, Stamp | None]:
        """A file refused here is left as it was found, its folder too: the -wal and -shm files
        that SQLite creates beside a WAL database for the read-only probe (which cannot remove
        them when it closes) are removed again if neither was there before (``_drop_probe_files``;
        also on ``close``, for a reader that never connected, e.g. ``wattlens doctor``)."""
        ours = not any(os.path.lexists(f"{self.path}{end}") for end in ("-wal", "-shm"))
        try:
            state, stamp, self.damage = _probe_sqlite_file(self.path, str(self.path), check_s=check_s)
            if state == "missing" and not create:
                raise NoDatabaseError(f"there are no sessions yet: {self.path} does not exist", hint=NO_DB_HINT)
            if create:
                check_location(self.path, str(self.path))  # the same check `wattlens doctor` makes
                if self.damage is not None:
                    raise self.damage
            elif self.damage is not None and not (stamp is not None and stamp.current):
                raise self.damage  # a reader would have to upgrade it: a damaged file is not written to
            if state == "missing":
                _make_folder(self.path.parent, str(self.path))
        except StoreError as exc:
            exc.exit_code = 2  # a path that cannot be used is bad input
            if ours:
                _drop_probe_files(self.path)
            raise
        self._tidy_on_close = ours
        return state, stamp

    @property
    def display_name(self) -> str:
        return str(self.path) if self.path is not None else make_url(self.url).render_as_string(hide_password=True)

    def _on_db_error(self, ctx) -> None:
        """Every SQL error, reads included, becomes one line that says what to do."""
        if isinstance(ctx.sqlalchemy_exception, OperationalError) or isinstance(
                ctx.original_exception, sqlite3.OperationalError):
            raise _map_operational(self, ctx.original_exception)
        text = str(ctx.original_exception)
        if "malformed" in text or "not a database" in text or "corrupt" in text:
            raise _damaged(self.display_name, ctx.original_exception)
        if not self._opening and isinstance(ctx.sqlalchemy_exception, DBAPIError):
            # DataError, IntegrityError, ProgrammingError...: one line too, never a traceback (while
            # opening, _open_schema says what a failed upgrade means)
            raise _map_db_error(self, ctx.original_exception)

    # ---- schema -------------------------------------------------------------------------------
    def _open_schema(self, state: str | None, stamp: Stamp | None, create: bool = True) -> None:
        """``state``/``stamp``: the probe's finding for an SQLite file (which already checked meta),
        None for a server database (checked here). A database at the head revision is only read;
        anything else is created or upgraded by the migrations (``_upgrade_schema``). A reader
        (``create=False``) that may not write a database of this schema version from before
        Alembic reads it as it is (its tables are the ones this wattlens reads)."""
        if state is None:
            with self.engine.connect() as c:
                stamp = self._read_stamp(c)
        if stamp is not None and stamp.current:
            return
        from wattlens.profiler.store import migrations  # Alembic: only on this path

        script = migrations.script_directory()  # the revision files, read before taking the lock
        try:
            migrations.check_known(stamp.revision if stamp else None, script)  # refused before any lock
            self._upgrade_schema(script)
        except CorruptDatabaseError:
            raise
        except (StoreError, DatabaseError) as exc:
            if not create and stamp is not None and stamp.schema_version == str(m.SCHEMA_VERSION):
                return
            if isinstance(exc, StoreError):
                raise
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]  # a server's message spans lines
            raise StoreError(f"cannot bring database {self.display_name} to this wattlens's schema: {first}",
                             hint="open it once as a user allowed to change its tables (e.g. its owner)") from None
        except migrations.UnknownRevisionError as exc:
            raise CorruptDatabaseError(
                f"{self.display_name} was written by a newer wattlens (schema revision {exc.revision!r}, "
                f"this one knows up to {exc.head!r})", hint="upgrade wattlens, or use another file with --db") from None

    def _read_stamp(self, c) -> Stamp | None:
        """A server database's stamp (refusing another program's database or a newer schema);
        None for an empty one."""
        tables = set(inspect(c).get_table_names())
        if not tables:
            return None
        if "meta" not in tables:
            raise CorruptDatabaseError(f"{self.display_name} is a database of another program "
                                       f"(tables: {', '.join(sorted(tables)[:5])})", hint=DB_FIX)
        meta = dict(c.execute(select(m.Meta.key, m.Meta.value)).all())
        check_meta(meta, self.display_name)
        revision = None
        if "alembic_version" in tables:
            revision = c.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return Stamp(meta.get("schema_version"), revision)

    def _upgrade_schema(self, script) -> None:
        """Create or upgrade the schema to the head revision, under a lock that every opener takes
        (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock), then look
        again: N processes opening a new or an old database at once run the migrations once."""
        from wattlens.profiler.store import migrations

        with self.engine.connect() as c:
            if self.is_sqlite:
                raw = c.connection.driver_connection
                raw.execute(f"PRAGMA busy_timeout={UPGRADE_LOCK_WAIT_MS}")  # others may be upgrading it
                # A revision that rebuilds a table (SQLite cannot ALTER most things) drops the old one:
                # with foreign keys on, that would cascade-delete every row referencing it. Off for
                # the migration (SQLite's own recipe, "Making Other Kinds Of Table Schema Changes").
                raw.execute("PRAGMA foreign_keys=OFF")
                c.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first, then look again
            elif self.engine.dialect.name == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": migrations.PG_LOCK_KEY})
            try:
                stamp = self._read_stamp(c)
                if stamp is not None and stamp.current:
                    c.rollback()  # another process did it while this one waited
                    return
                legacy = None
                if stamp is not None and stamp.revision is None:  # from before Alembic
                    legacy = int(stamp.schema_version or "0")
                    if legacy not in migrations.LEGACY_REVISIONS:
                        raise CorruptDatabaseError(
                            f"{self.display_name} has schema version {legacy} but no Alembic revision",
                            hint=damaged_hint(self.display_name))
                migrations.upgrade(c, script, stamp.revision if stamp else None, legacy)
                self._stamp_meta(c, new=stamp is None)
                c.commit()
            finally:
                if self.is_sqlite:  # the pooled connection goes back as _sqlite_pragmas made it
                    with suppress(sqlite3.Error):
                        c.rollback()  # nothing left open (a no-op after the commit)
                        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                        raw.execute("PRAGMA foreign_keys=ON")

    @staticmethod
    def _stamp_meta(c, *, new: bool) -> None:
        """``meta`` after the migrations: who owns the database and ``schema_version`` (older
        wattlens versions read it), kept in step with the revision."""
        if new:
            c.execute(insert(m.Meta), [
                {"key": "app", "value": m.APP_ID},
                {"key": "schema_version", "value": str(m.SCHEMA_VERSION)},
                {"key": "created_at", "value": str(time.time())},
            ])
            return
        updated = c.execute(update(m.Meta).where(m.Meta.key == "schema_version")
                            .values(value=str(m.SCHEMA_VERSION))).rowcount
        if not updated:
            c.execute(insert(m.Meta), [{"key": "schema_version", "value": str(m.SCHEMA_VERSION)}])

    def close(self) -> None:
        self.engine.dispose()
        if self._tidy_on_close:  # a store that never connected leaves the probe's -wal/-shm behind
            _drop_probe_files(self.path)

    # ---- sessions ------------------------------------------------------------------------------
    @staticmethod
    def check_session_fields(name: str | None, *, host: bool = True) -> None:
        """Refuse, in one line (exit 2), a session name or host name longer than its column holds,
        the same on every backend (PostgreSQL would refuse it, SQLite would store it): called
        before anything is measured or launched."""
        fields = [("--name", name, "name")] + ([("the host name (WATTLENS_HOST)", host_name(), "host")] if host else [])
        for what, value, col in fields:
            limit = m.SessionRow.__table__.c[col].type.length
            if value is not None and len(value) > limit:
                raise BadInputError(f"{what} is {len(value)} characters long; a session's holds at most {limit}",
                                    hint="use a shorter one")
            bad = next((ch for ch in value or "" if unicodedata.category(ch) == "Cc"), None)
            if bad is not None:  # every listing would print it raw: an escape sequence drives the terminal
                raise BadInputError(f"{what} holds the control character {bad!r}",
                                    hint="use printable text")

    def check_can_write(self) -> None:
        """Raise the one-line StoreError (exit 2) of a database that may be read but not written
        (a PostgreSQL role with SELECT only), before a session starts or a command is launched.
        An SQLite file's permissions were checked on open (``check_location``); on PostgreSQL the
        role's privileges are asked (an insert rolled back would leave a gap in the session ids)."""
        if self.engine.dialect.name != "postgresql":
            return
        needs = [(t, "INSERT") for t in ("sessions", "sources", "series", "samples", "layer_costs", "steps",
                                         "events")] + [("sessions", "UPDATE"), ("layer_costs", "DELETE")]
        with self.engine.connect() as c:
            missing = [f"{priv} on {t}" for t, priv in needs
                       if not c.execute(text("SELECT has_table_privilege(:t, :p)"), {"t": t, "p": priv}).scalar()]
            for t in ("sessions", "samples", "layer_costs", "steps", "events"):
                seq = c.execute(text("SELECT pg_get_serial_sequence(:t, 'id')" if t != "samples" else
                                     "SELECT pg_get_serial_sequence(:t, 'rowid')"), {"t": t}).scalar()
                if seq and not c.execute(text("SELECT has_sequence_privilege(:s, 'USAGE')"), {"s": seq}).scalar():
                    missing.append(f"USAGE on {seq}")
        if missing:
            user = make_url(self.url).username or "this role"
            raise write_denied(self, f"role {user} lacks {', '.join(missing[:4])}"
                                     + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))

    def create_session(self, *, name: str, kind: str, started_at: float, start_ns: int,
                       target: dict | None = None, hardware: dict | None = None,
                       settings: dict | None = None, interval_s: float | None = None,
                       sources: Sequence[dict] = (), series: Sequence[SeriesSpec] = ()) -> tuple[int, dict[str, int]]:
        self.check_session_fields(name)
        me = psutil.Process()
        with self._begin() as c:
            sid = c.execute(insert(m.SessionRow).values(
                name=name, kind=kind, status="running",
                target_pid=(target or {}).get("pid"),
                target_cmdline=_json((target or {}).get("cmdline")) if target else None,
                host=host_name(), hardware_json=_json(hardware or {}),
                settings_json=_json(settings or {}), started_at=started_at, start_ns=start_ns,
                interval_s=interval_s, profiler_pid=me.pid, profiler_create_time=me.create_time(),
            )).inserted_primary_key[0]
            if sources:
                c.execute(insert(m.SourceRow), [
                    {"session_id": sid, "source_id": s["id"], "kind": s["kind"], "method": s["method"],
                     "label": s.get("label", s["id"]), "details_json": _json(s.get("details", {}))}
                    for s in sources])
        return sid, self.add_series(sid, series)

    def add_series(self, session_id: int, specs: Iterable[SeriesSpec]) -> dict[str, int]:
        specs = list(specs)
        if not specs:
            return {}
        with self._begin() as c:
            c.execute(insert(m.SeriesRow), [
                {"session_id": session_id, "key": s.key, "unit": s.unit, "method": s.method,
                 "source_id": s.source_id, "label": s.label} for s in specs])
            rows = c.execute(select(m.SeriesRow.key, m.SeriesRow.id)
                             .where(m.SeriesRow.session_id == session_id)).all()
        return {k: i for k, i in rows}

    def finish_session(self, session_id: int, *, status: str, end_reason: str | None,
                       ended_at: float, duration_s: float, summary: dict | None = None) -> None:
        with self._begin() as c:
            c.execute(update(m.SessionRow).where(m.SessionRow.id == session_id).values(
                status=status, end_reason=end_reason, ended_at=ended_at, duration_s=duration_s,
                summary_json=_json(summary) if summary is not None else None))

    def set_summary(self, session_id: int, summary: dict) -> None:
        with self._begin() as c:
            c.execute(update(m.SessionRow).where(m.SessionRow.id == session_id)
                      .values(summary_json=_json(summary)))

    def rename_session(self, session_id: int, name: str) -> None:
        self.check_session_fields(name, host=False)  # as a new session's name: length, no control characters
        self.session(session_id)
        with self._begin() as c:
            c.execute(update(m.SessionRow).where(m.SessionRow.id == session_id).values(name=name))

    def delete_session(self, session_id: int) -> None:
        self.session(session_id)
        with self._begin() as c:
            series_ids = select(m.SeriesRow.id).where(m.SeriesRow.session_id == session_id)
            c.execute(delete(m.SampleRow).where(m.SampleRow.series_id.in_(series_ids)))
            for table in (m.SeriesRow, m.SourceRow, m.LayerCostRow, m.StepRow, m.EventRow,
                          m.RecommendationRow, m.ActionRow, m.MeasurementRow):
                c.execute(delete(table).where(table.session_id == session_id))
            c.execute(delete(m.SessionRow).where(m.SessionRow.id == session_id))

    def recover_interrupted(self) -> list[int]:
        """Sessions still 'running' whose profiler process is gone become 'interrupted'; their end
        is the last stored sample. Returns their ids. First, what the local spool holds for this
        database is written (``replay_spool``): a session it finishes is no longer 'running'."""
        self.replay_spool()
        with self.engine.connect() as c:
            rows = c.execute(select(m.SessionRow.id, m.SessionRow.profiler_pid, m.SessionRow.profiler_create_time,
                                    m.SessionRow.host, m.SessionRow.started_at, m.SessionRow.start_ns)
                             .where(m.SessionRow.status == "running")).all()
        fixed = []
        here = host_name()
        for sid, pid, ctime, host, started_at, start_ns in rows:
            if host == here and pid and _process_alive(pid, ctime):
                continue
            if host != here and not self.is_sqlite:
                continue  # a shared server DB: another host's session may be live
            with self._begin() as c:
                last_ns = c.execute(select(func.max(m.SampleRow.t_ns)).join(
                    m.SeriesRow, m.SeriesRow.id == m.SampleRow.series_id)
                    .where(m.SeriesRow.session_id == sid)).scalar()
                duration_s = max(0.0, (last_ns - start_ns) / 1e9) if last_ns else 0.0
                c.execute(update(m.SessionRow).where(m.SessionRow.id == sid).values(
                    status="interrupted", ended_at=started_at + duration_s, duration_s=duration_s,
                    end_reason="the profiler stopped without finishing the session (killed or crashed); "
                               "data up to its last commit is kept"))
            self.set_summary(sid, self.stored_summary(sid))  # the listing shows what `show` computes
            fixed.append(sid)
        return fixed

    def stored_summary(self, session_id: int, *, reasons: dict | None = None,
                       grid_g_per_kwh: float | None = None) -> dict:
        """The session's figures recomputed from its stored rows (what `show` and reports show);
        ``reasons``/``grid_g_per_kwh``: as the session had them when it ended, where known."""
        return summarize(self.session(session_id), self.series_data(session_id), self.steps(session_id),
                         self.layer_costs(session_id), reasons=reasons, grid_g_per_kwh=grid_g_per_kwh)

    # ---- the local spool (spool.py): sessions that ended while the database was unreachable ------
    def replay_spool(self) -> list[int]:
        """Write what the local spool holds for this database, oldest file first, one transaction
        per file; returns the ids of the sessions written. Never raises: a file that cannot be
        written yet is kept (said in one line), a damaged one moved aside (said in one line)."""
        from wattlens.profiler.store import spool

        written = []
        for path in spool.files_for(self.url):
            sid = self.replay_spool_file(path)
            if sid is not None:
                written.append(sid)
        return written

    def replay_spool_file(self, path: Path, *, quiet: bool = False) -> int | None:
        """Write one spool file's records and its session's finish, then remove the file; returns
        the session's id, None when nothing was written (kept, moved aside, another database's, or
        its session still ending in a live process). ``quiet``: a failure is not said (the session
        that has just spooled it tries once; the writer said where the records are)."""
        from wattlens.profiler.store import spool

        try:
            held = spool.read(path)
        except FileNotFoundError:
            return None  # another opener's replay took it
        except spool.CorruptSpoolError as exc:
            self._spool_aside(path, f"it is damaged: {exc}")
            return None
        except OSError as exc:
            log.warning("the local spool file %s cannot be read (%s); it is kept", path, exc.strerror or exc)
            return None
        if held.db != spool.db_identity(self.url) or (held.finish is None and spool.writer_alive(held)):
            return None  # another database's file, or a session still ending in the process that spooled it
        try:
            fresh = self._write_held(held)
        except _SessionGone:
            self._spool_aside(path, f"session {held.session_id} is no longer in {self.display_name}")
            return None
        except StoreError as exc:
            if not quiet:
                log.warning("session %d's %s held in the local spool at %s could not be written yet (%s); "
                            "the file is kept and written when the store is next opened",
                            held.session_id, spool.what_is_held(held), path, exc.message)
            return None
        self._spool_done(path)
        if fresh:
            log.warning("wrote session %d's %s held in the local spool %s (the database was unreachable "
                        "when it ended)", held.session_id, spool.what_is_held(held), spool.since_text(held))
            self._refigure(held)
        return held.session_id

    def _write_held(self, held) -> bool:
        """One transaction: the records, a ``spool`` event naming the file's ``spool_id``, and the
        session's finish. False when an earlier replay had committed this file (its event is
        there): nothing is written twice."""
        t = m.SessionRow.__table__
        with self._begin() as c:
            # a write to the session's row first: the lock that orders two replays of one file
            # (SQLite: the database's write lock; PostgreSQL: the row's), then the look
            if not c.execute(update(t).where(t.c.id == held.session_id).values(status=t.c.status)).rowcount:
                raise _SessionGone()
            if self._spool_written(c, held):
                return False
            self._insert_rows(c, held.session_id, held.samples_rows, held.layers, held.steps,
                              [*held.events, self._spool_event(held)])
            if held.finish is not None:
                f = held.finish
                c.execute(update(t).where(t.c.id == held.session_id).values(
                    status=f["status"], end_reason=f.get("end_reason"), ended_at=f["ended_at"],
                    duration_s=f["duration_s"], summary_json=_json(self._held_summary(held))))
        return True

    @staticmethod
    def _spool_written(c, held) -> bool:
        t = m.EventRow.__table__
        return c.execute(select(func.count(t.c.id)).where(
            t.c.session_id == held.session_id, t.c.kind == "spool",
            t.c.data_json.contains(f'"spool_id":"{held.spool_id}"', autoescape=True))).scalar() > 0

    @staticmethod
    def _spool_note(held) -> str:
        from wattlens.profiler.store import spool

        return (f"{spool.what_is_held(held)} were held in the local spool {spool.since_text(held)} "
                f"(the database could not take them when the session ended: {held.reason}) and written "
                f"on {time.strftime('%Y-%m-%d %H:%M')}")

    def _spool_event(self, held) -> EventRecord:
        t_ns = held.t_ns if held.t_ns is not None else (held.t_last_ns or 0)
        return EventRecord(t_ns, "spool", self._spool_note(held),
                           {"spool_id": held.spool_id, "records": held.records, "samples": held.samples,
                            "spooled_at": held.since})

    def _held_summary(self, held) -> dict | None:
        """The summary the session ended with, its notes followed by the spool's."""
        summary = dict(held.finish.get("summary") or {})
        if not summary:
            return None
        summary["notes"] = [*summary.get("notes", []), self._spool_note(held)]
        return summary

    def _refigure(self, held) -> None:
        """After the commit: the finished session's figures from every stored row (the session
        computed them from its live series, without the layer rows and steps it could not read),
        with its notes and counted loss kept. On failure the summary it ended with stays."""
        if held.finish is None or not held.finish.get("summary"):
            return
        kept = self._held_summary(held)
        try:
            summary = self.stored_summary(held.session_id, reasons=held.finish.get("reasons"),
                                          grid_g_per_kwh=held.finish.get("grid_g_per_kwh"))
            summary.update({k: kept[k] for k in ("notes", "loss") if k in kept})
            self.set_summary(held.session_id, summary)
        except StoreError as exc:
            log.debug("session %d's figures were not recomputed after the spool: %s", held.session_id, exc)

    @staticmethod
    def _spool_done(path: Path) -> None:
        from wattlens.profiler.store import spool

        try:
            spool.remove(path)
        except OSError as exc:  # written; the next replay finds its event and only removes it
            log.warning("the local spool file %s was written but cannot be removed (%s)", path,
                        exc.strerror or exc)

    @staticmethod
    def _spool_aside(path: Path, why: str) -> None:
        from wattlens.profiler.store import spool

        try:
            aside = spool.move_aside(path)
        except OSError as exc:
            log.warning("the local spool file %s cannot be written: %s; nor moved aside (%s), so it is kept",
                        path, why, exc.strerror or exc)
            return
        log.warning("the local spool file %s cannot be written: %s; moved aside to %s", path, why, aside)

    def sessions(self, host: str | None = None, limit: int | None = None) -> list[dict]:
        """Newest first; ``host``: only the sessions recorded on that host; ``limit``: the newest
        that many. A reader that found the file damaged says so once, in one line, when it lists
        (the CLI prints "wattlens: …")."""
        if self.damage is not None and not self._damage_said:
            self._damage_said = True
            log.warning("%s", self.damage)
        q = select(m.SessionRow.__table__).order_by(m.SessionRow.id.desc())
        if host is not None:
            q = q.where(m.SessionRow.host == host)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return [self._current(_session_dict(r)) for r in rows]

    def _current(self, session: dict) -> dict:
        """``session`` with its cached summary recomputed from the stored rows where an older
        wattlens stored it (``summary.FIGURES_VERSION``), kept for the next listing where the
        store can be written; its notes, loss and other end-time fields stay, and so does a figure
        the rows cannot give again. A running session's summary is written at its end, and a
        damaged store is never written: both left as they are."""
        old = session["summary"]
        if (session["status"] == "running" or (old or {}).get("figures_version") == FIGURES_VERSION
                or self.damage is not None):  # a damaged file is only read, never written
            return session
        try:
            again = self.stored_summary(session["id"])
            # a figure the stored rows cannot give (n/a now) keeps its cached value: nothing is lost
            fresh = {**(old or {}), **{k: v for k, v in again.items() if v is not None or k not in (old or {})}}
        except StoreError as exc:  # the rows cannot be read now: the listing shows what was cached
            log.debug("session %s's summary not recomputed: %s", session["id"], exc)
            return session
        with contextlib.suppress(StoreError):  # a read-only store: recomputed again next time
            self.set_summary(session["id"], fresh)
        return {**session, "summary": fresh}

    def session_count(self, host: str | None = None) -> int:
        t = m.SessionRow.__table__
        q = select(func.count(t.c.id))
        if host is not None:
            q = q.where(t.c.host == host)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar() or 0)

    def sessions_fingerprint(self) -> tuple:
        """A cheap value that changes whenever the listing would: (count, last id, sessions still
        running, last end time). One aggregate query; the app polls it to show new sessions."""
        t = m.SessionRow.__table__
        with self.engine.connect() as c:
            row = c.execute(select(func.count(t.c.id), func.max(t.c.id),
                                   func.sum(case((t.c.status == "running", 1), else_=0)),
                                   func.max(t.c.ended_at))).first()
        return tuple(row)

    def _id_fits(self, session_id: int) -> bool:
        """Whether ``session_id`` fits the sessions.id column (PostgreSQL: 32-bit; SQLite: 64-bit):
        one beyond it names no session, and a server would refuse the query ("out of range")."""
        bits = 63 if self.is_sqlite else 31  # sessions.id is INTEGER: SQLite's is the 64-bit rowid
        return -(1 << bits) <= int(session_id) < (1 << bits)

    def session(self, session_id: int) -> dict:
        if not self._id_fits(session_id):
            raise SessionNotFoundError(f"no session {session_id} in {self.display_name}",
                                       hint="list them with `wattlens sessions`")
        with self.engine.connect() as c:
            row = c.execute(select(m.SessionRow.__table__).where(m.SessionRow.id == session_id)).mappings().first()
            if row is None:
                raise SessionNotFoundError(f"no session {session_id} in {self.display_name}",
                                           hint="list them with `wattlens sessions`")
            out = _session_dict(row)
            out["sources"] = [
                {"id": s.source_id, "kind": s.kind, "method": s.method, "label": s.label,
                 "details": json.loads(s.details_json or "{}")}
                for s in c.execute(select(m.SourceRow.__table__).where(m.SourceRow.session_id == session_id)
                                   .order_by(m.SourceRow.id)).all()]
            out["series"] = [
                {"key": s.key, "unit": s.unit, "method": s.method, "source_id": s.source_id, "label": s.label}
                for s in c.execute(select(m.SeriesRow.__table__).where(m.SeriesRow.session_id == session_id)
                                   .order_by(m.SeriesRow.id)).all()]
        return out

    # ---- bulk writes (called by the StoreWriter thread) -----------------------------------------
    def insert_samples(self, rows: Sequence[tuple[int, int, float]]) -> None:
        """rows: (series_id, t_ns, value). One executemany in one transaction."""
        self.write_batch(None, rows)

    def write_batch(self, session_id: int | None, samples: Sequence[tuple[int, int, float]],
                    layer_costs: Sequence[LayerCost] = (), steps: Sequence[StepRecord] = (),
                    events: Sequence[EventRecord] = ()) -> None:
        """Everything the writer gathered in one transaction (one commit)."""
        with self._begin() as c:
            self._insert_rows(c, session_id, samples, layer_costs, steps, events)

    def _insert_rows(self, c, session_id: int | None, samples: Sequence[tuple[int, int, float]],
                     layer_costs: Sequence[LayerCost] = (), steps: Sequence[StepRecord] = (),
                     events: Sequence[EventRecord] = ()) -> None:
        """The one insert path of a session's records, in the caller's transaction ``c``: the
        writer's batches (``write_batch``) and the local spool's replay (``replay_spool_file``)."""
        if samples and self.engine.dialect.name == "postgresql":
            _copy_samples(c, samples)
        elif samples:  # Core executemany with the driver's own paramstyle: the fast path
            c.exec_driver_sql(self._sql("INSERT INTO samples (series_id, t_ns, value) VALUES (?, ?, ?)"),
                              list(samples))
        if layer_costs:
            c.execute(insert(m.LayerCostRow), [_layer_dict(session_id, lc) for lc in layer_costs])
        if steps:
            c.execute(insert(m.StepRow), [
                {"session_id": session_id, "step": s.step, "t_start_ns": s.t_start_ns,
                 "t_end_ns": s.t_end_ns, "samples": s.samples, "tokens": s.tokens,
                 "energy_j": s.energy_j, "rank": s.rank, "local_rank": s.local_rank,
                 "world_size": s.world_size} for s in steps])
        if events:
            c.execute(insert(m.EventRow), [
                {"session_id": session_id, "t_ns": e.t_ns, "kind": e.kind, "message": e.message,
                 "data_json": _json(e.data)} for e in events])

    def replace_split_rows(self, session_id: int, parents: Sequence[LayerCost],
                           rows: Sequence[LayerCost]) -> None:
        """Replace, in one transaction, the stored rows of the parents (a window's bucket row that
        pooled native reads split: ``backward``, ``optimizer/<part>``) and of their parts
        (``<parent>/…``) by ``rows``: the same windows split again by the session's whole pool.
        Rows go by window, path and rank (a process's windows only); the agent's never."""
        t = m.LayerCostRow.__table__
        by_rank: dict[int | None, tuple[set[str], set[int]]] = {}
        for p in parents:
            paths, windows = by_rank.setdefault(p.rank, (set(), set()))
            paths.add(p.path)
            windows.add(p.window_start_ns)
        with self._begin() as c:
            for rank, (paths, windows) in by_rank.items():
                of_parents = or_(*[(t.c.path == x) | t.c.path.startswith(x + "/", autoescape=True)
                                   for x in sorted(paths)])
                of_rank = t.c.rank.is_(None) if rank is None else t.c.rank == rank
                starts = sorted(windows)
                for i in range(0, len(starts), 500):  # an hour of 5-s windows: a few statements
                    c.execute(delete(t).where(
                        t.c.session_id == session_id, t.c.granularity == "bucket", of_rank,
                        t.c.method != AGENT_TIMING, t.c.window_start_ns.in_(starts[i:i + 500]), of_parents))
            if rows:
                c.execute(insert(m.LayerCostRow), [_layer_dict(session_id, lc) for lc in rows])

    def replace_rows(self, session_id: int, old: Sequence[LayerCost], new: Sequence[LayerCost]) -> None:
        """Replace, in one transaction, the stored rows that ``old`` names (by window, path,
        granularity and rank; the agent's never) by ``new``: a window's class rows with the torn
        paths folded away (``StackSampler.final_tree``)."""
        t = m.LayerCostRow.__table__
        keys = sorted({(r.window_start_ns, r.path, r.granularity, r.rank) for r in old},
                      key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3]))
        with self._begin() as c:
            for w, path, gran, rank in keys:
                c.execute(delete(t).where(
                    t.c.session_id == session_id, t.c.window_start_ns == w, t.c.path == path,
                    t.c.granularity == gran, t.c.rank.is_(None) if rank is None else t.c.rank == rank,
                    t.c.method != AGENT_TIMING))
            if new:
                c.execute(insert(m.LayerCostRow), [_layer_dict(session_id, lc) for lc in new])

    def add_event(self, session_id: int, ev: EventRecord) -> None:
        self.write_batch(session_id, (), events=[ev])

    # ---- reads -----------------------------------------------------------------------------------
    def series_data(self, session_id: int, keys: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not self._id_fits(session_id):  # no such session (see _id_fits)
            return {}
        with self.engine.connect() as c:
            q = select(m.SeriesRow.id, m.SeriesRow.key).where(m.SeriesRow.session_id == session_id)
            if keys is not None:
                q = q.where(m.SeriesRow.key.in_(list(keys)))
            ids = dict(c.execute(q).all())
            out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for series_id, key in ids.items():
                rows = c.exec_driver_sql(self._sql("SELECT t_ns, value FROM samples WHERE series_id = ? ORDER BY t_ns"),
                                         (series_id,)).all()
                arr = np.array(rows, dtype=np.float64).reshape(-1, 2)
                out[key] = (arr[:, 0].astype(np.int64), arr[:, 1])
        return out

    def layer_costs(self, session_id: int) -> list[LayerCost]:
        if not self._id_fits(session_id):  # no such session (see _id_fits)
            return []
        with self.engine.connect() as c:
            rows = c.execute(select(m.LayerCostRow.__table__).where(m.LayerCostRow.session_id == session_id)
                             .order_by(m.LayerCostRow.window_start_ns, m.LayerCostRow.id)).mappings().all()
        fields = LayerCost.__dataclass_fields__
        return [LayerCost(**{k: r[k] for k in fields}) for r in rows]

    def steps(self, session_id: int) -> list[StepRecord]:
        if not self._id_fits(session_id):  # no such session (see _id_fits)
            return []
        with self.engine.connect() as c:
            rows = c.execute(select(m.StepRow.__table__).where(m.StepRow.session_id == session_id)
                             .order_by(m.StepRow.step)).mappings().all()
        fields = StepRecord.__dataclass_fields__
        return [StepRecord(**{k: r[k] for k in fields}) for r in rows]

    def events(self, session_id: int) -> list[EventRecord]:
        if not self._id_fits(session_id):  # no such session (see _id_fits)
            return []
        with self.engine.connect() as c:
            rows = c.execute(select(m.EventRow.__table__).where(m.EventRow.session_id == session_id)
                             .order_by(m.EventRow.t_ns, m.EventRow.id)).mappings().all()
        return [EventRecord(r["t_ns"], r["kind"], r["message"], json.loads(r["data_json"] or "{}")) for r in rows]

    # ---- advisor records ------------------------------------------------------------------------
    def add_recommendations(self, session_id: int, recs: Sequence[dict]) -> None:
        """Replaces the session's stored recommendations with ``recs`` (each a to_dict())."""
        now = time.time()
        with self._begin() as c:
            c.execute(delete(m.RecommendationRow).where(m.RecommendationRow.session_id == session_id))
            if recs:
                c.execute(insert(m.RecommendationRow), [
                    {"session_id": session_id, "created_at": now, "rule": r.get("rule", ""),
                     "title": r.get("title", ""), "payload_json": _json(r)} for r in recs])

    def recommendations(self, session_id: int) -> list[dict]:
        if not self._id_fits(session_id):  # no such session (see _id_fits)
            return []
        with self.engine.connect() as c:
            rows = c.execute(select(m.RecommendationRow.payload_json)
                             .where(m.RecommendationRow.session_id == session_id)
                             .order_by(m.RecommendationRow.id)).scalars().all()
        return [json.loads(r) for r in rows]

    def add_action(self, *, kind: str, status: str, params: dict, result: dict,
                   session_id: int | None = None, source_session_id: int | None = None) -> int:
        """``session_id``: the session that recorded the action (optimize); ``source_session_id``:
        the session whose recommendation it applied, if any."""
        with self._begin() as c:
            return c.execute(insert(m.ActionRow).values(
                session_id=session_id, created_at=time.time(), kind=kind, status=status,
                params_json=_json(params), result_json=_json(result),
                source_session_id=source_session_id)).inserted_primary_key[0]

    def update_action(self, action_id: int, *, status: str, result: dict | None = None) -> None:
        values = {"status": status}
        if result is not None:
            values["result_json"] = _json(result)
        with self._begin() as c:
            c.execute(update(m.ActionRow).where(m.ActionRow.id == action_id).values(**values))

    def actions(self, session_id: int | None = None, *, source_session_id: int | None = None) -> list[dict]:
        """Actions recorded by ``session_id`` and/or applied from ``source_session_id``."""
        if any(i is not None and not self._id_fits(i) for i in (session_id, source_session_id)):
            return []
        q = select(m.ActionRow.__table__).order_by(m.ActionRow.id)
        if session_id is not None:
            q = q.where(m.ActionRow.session_id == session_id)
        if source_session_id is not None:
            q = q.where(m.ActionRow.source_session_id == source_session_id)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return [{"id": r["id"], "session_id": r["session_id"], "created_at": r["created_at"], "kind": r["kind"],
                 "status": r["status"], "params": json.loads(r["params_json"]),
                 "result": json.loads(r["result_json"]), "source_session_id": r["source_session_id"]} for r in rows]

    def add_measurements(self, rows: Sequence[dict]) -> None:
        """rows: dicts with MeasurementRow's columns (payload as a dict under 'payload')."""
        now = time.time()
        cols = [c for c in m.MeasurementRow.__table__.columns.keys() if c not in ("id", "payload_json", "created_at")]
        if not rows:
            return
        with self._begin() as c:  # one executemany: every row gets every column (None when absent)
            c.execute(insert(m.MeasurementRow), [
                {**{k: r.get(k) for k in cols},
                 "created_at": r.get("created_at", now), "payload_json": _json(r.get("payload", {}))}
                for r in rows])

    def measurements(self, kind: str | None = None) -> list[dict]:
        q = select(m.MeasurementRow.__table__).order_by(m.MeasurementRow.id)
        if kind is not None:
            q = q.where(m.MeasurementRow.kind == kind)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["payload"] = json.loads(d.pop("payload_json") or "{}")
            out.append(d)
        return out

    def record_gpu_idle(self, gpu_key: str, idle_power_w: float, stretch_s: float) -> None:
        """Remember a GPU's measured idle power (the newest measurement wins)."""
        with self._begin() as c:
            c.execute(delete(m.GpuIdleRow).where(m.GpuIdleRow.gpu_key == gpu_key))
            c.execute(insert(m.GpuIdleRow), [{"gpu_key": gpu_key, "idle_power_w": float(idle_power_w),
                                               "stretch_s": float(stretch_s), "measured_at": time.time()}])

    def gpu_idle(self, gpu_key: str) -> dict | None:
        """``{"idle_power_w", "stretch_s", "measured_at"}`` last recorded for this GPU, or None."""
        with self.engine.connect() as c:
            r = c.execute(select(m.GpuIdleRow.idle_power_w, m.GpuIdleRow.stretch_s, m.GpuIdleRow.measured_at)
                          .where(m.GpuIdleRow.gpu_key == gpu_key)).mappings().first()
        return dict(r) if r is not None else None

    # ---- helpers ---------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        """Raw SQL written with ``?`` placeholders, in the driver's paramstyle (qmark or format)."""
        return text if self.engine.dialect.paramstyle == "qmark" else text.replace("?", "%s")

    def _begin(self):
        return _Tx(self)


class _SessionGone(Exception):
    """A spool file's session is not in the database (deleted since): its records have no home."""


def _copy_samples(conn, samples: Sequence[tuple[int, int, float]]) -> None:
    """PostgreSQL: samples by COPY in the open transaction (psycopg 3), several times the rate of
    an executemany of INSERTs (benchmarks/results/pg.md). Text format: it fits whatever integer
    width a database's columns have."""
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy("COPY samples (series_id, t_ns, value) FROM STDIN") as copy:
            for row in samples:
                copy.write_row(row)


@contextmanager
def _Tx(store: Store):
    """``engine.begin()`` with every SQL error mapped to a one-line StoreError (disk full, locked,
    connection lost, permission denied, a value out of range...): also the driver's own errors,
    raised by the COPY that bypasses SQLAlchemy (``_copy_samples``)."""
    dbapi_error = getattr(store.engine.dialect.dbapi, "Error", None) or DBAPIError
    try:
        with store.engine.begin() as conn:
            yield conn
    except OperationalError as exc:
        raise _map_operational(store, exc) from None
    except DBAPIError as exc:
        raise _map_db_error(store, exc.orig) from None
    except dbapi_error as exc:
        if isinstance(exc, getattr(store.engine.dialect.dbapi, "OperationalError", ())):
            raise _map_operational(store, exc) from None
        raise _map_db_error(store, exc) from None


def store_error(message: str, *, hint: str | None = None, kind: str = "other") -> StoreError:
    """A StoreError with its ``kind``: "connection" (the server cannot be reached), "disk-full",
    "locked", "read-only" (these may pass: the writer retries them), "permission" (the database
    may be read but not written), "data" (the database refused the rows: a value out of range, an id sequence
    at its end...) or "other". ``transient``: whether a retry may succeed."""
    exc = StoreError(message, hint=hint)
    exc.kind = kind
    exc.transient = kind in ("connection", "disk-full", "locked", "read-only", "other")
    return exc


def error_kind(exc: BaseException) -> str:
    """The ``kind`` of a StoreError (``store_error``), "other" for one made elsewhere."""
    return getattr(exc, "kind", "other")


def _first_line(exc: BaseException) -> str:
    """The server's message without its DETAIL / HINT lines, the SQL or the parameters."""
    text = str(exc).strip().splitlines()
    return " ".join(text[0].split()) if text else type(exc).__name__


def _map_db_error(store: Store, exc: BaseException) -> StoreError:
    """A refusal other than an OperationalError (DataError, IntegrityError, ProgrammingError...)."""
    text = _first_line(exc)
    if getattr(exc, "sqlstate", None) == "42501" or "permission denied" in text:
        return write_denied(store, text)
    return store_error(f"database error in {store.display_name}: {text}", hint="see `wattlens doctor`",
                       kind="data")


def write_denied(store: Store, why: str) -> StoreError:
    """The database may be read but not written: bad input (exit 2), said before any command runs."""
    user = make_url(store.url).username
    who = f" to role {user}" if user and not store.is_sqlite else ""
    exc = store_error(f"cannot write to the database {store.display_name}: {why}",
                      hint=f"grant INSERT/UPDATE on its tables{who} or use another --db", kind="permission")
    exc.exit_code = 2
    return exc


def _map_operational(store: Store, exc: OperationalError) -> StoreError:
    text = " ".join(str(getattr(exc, "orig", exc)).split())  # a server's message spans lines
    if not store.is_sqlite and ("connection" in text or "connect" in text):
        return store_error(f"cannot connect to database {store.display_name}: {text}",
                           hint="start the server or fix the URL's host, port, user and database, "
                                "or pass a file path to --db", kind="connection")
    if "full" in text or (store.path is not None and _disk_full(store.path.parent, exc)):
        err = _disk_full_error(store.display_name, starting=getattr(store, "_opening", False))
        err.kind, err.transient = "disk-full", True
        return err
    if "locked" in text or "busy" in text:
        return store_error(f"database {store.display_name} is locked by another program",
                           hint="close the other program or use another file with --db", kind="locked")
    if "readonly" in text or "read-only" in text:
        return store_error(f"database {store.display_name} is read-only",
                           hint="fix its permissions or choose another file with --db", kind="read-only")
    return store_error(f"database error in {store.display_name}: {text}", hint="see `wattlens doctor`")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # first: switching to WAL waits for other openers too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _drop_probe_files(path: Path) -> None:
    """Remove the -wal and -shm files beside the SQLite file ``path`` that the read-only probe
    left (the caller knows that neither was there before it). SQLite removes them itself: a
    read-write connection that reads and closes does what the last connection to close a WAL
    database always does, under an exclusive lock on the file, so never while another connection,
    in this process or another, still uses them. Only with an empty -wal and no rollback journal
    beside it: then opening and closing writes nothing into the file."""
    try:
        if Path(f"{path}-wal").stat().st_size != 0 or os.path.lexists(f"{path}-journal"):
            return
    except OSError:  # no -wal: nothing left (or not ours to remove: a -shm alone)
        return
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=1.0)
    except sqlite3.Error:
        return
    try:
        con.execute("PRAGMA schema_version").fetchall()  # a read (of page 1 alone) opens the WAL
    except sqlite3.Error:
        pass
    finally:
        con.close()


def _make_private(path: Path) -> None:
    """A database this process just created: owner-only (0600), like its -wal and -shm files
    (sessions hold command lines and working folders). chmod, never open: see _probe_sqlite_file."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if p.exists() and p.stat().st_uid == os.getuid():
                p.chmod(0o600)
        except OSError:
            pass


def _process_alive(pid: int, create_time: float | None) -> bool:
    try:
        p = psutil.Process(pid)
        return create_time is None or abs(p.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _session_dict(r) -> dict:
    return {
        "id": r["id"], "name": r["name"], "kind": r["kind"], "status": r["status"],
        "end_reason": r["end_reason"], "target_pid": r["target_pid"],
        "target_cmdline": json.loads(r["target_cmdline"]) if r["target_cmdline"] else None,
        "host": r["host"], "hardware": json.loads(r["hardware_json"] or "{}"),
        "settings": json.loads(r["settings_json"] or "{}"), "started_at": r["started_at"],
        "start_ns": r["start_ns"], "ended_at": r["ended_at"], "duration_s": r["duration_s"],
        "interval_s": r["interval_s"],
        "summary": json.loads(r["summary_json"]) if r["summary_json"] else None,
    }


def _layer_dict(session_id: int, lc: LayerCost) -> dict:
    d = {k: getattr(lc, k) for k in LayerCost.__dataclass_fields__}
    d["session_id"] = session_id
    return d
