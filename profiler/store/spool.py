"""The local spool: records the database could not take when a session ended, kept on local disk
until the database is reachable again. Nothing measured is lost to a passing outage.

Where it sits: ``StoreWriter.stop`` → (the database still refuses the pending records for a reason a
retry may cure: connection lost, locked, disk full or read-only on its side) → ``hold`` writes every
pending record (samples, layer rows, steps, events) to ONE spool file; the session then appends its
finish (status, end reason, summary, counted loss: ``add_finish``). The next ``Store`` open of the
same database (``Store.recover_interrupted``, the one place sessions are salvaged) writes each file
of that database through the store's own insert path (``Store.replay_spool_file``), in one
transaction with the session's finish and a ``spool`` event that names the file's ``spool_id``; the
file is removed only after that commit. A crash between the commit and the removal is harmless: the
next replay finds the event and only removes the file (no row twice). This module only reads and
writes spool files; it never speaks SQL.

Format: JSON lines (``FORMAT``), written under a temporary name, fsynced, then renamed into place
(``os.replace``), its folder fsynced: a file under its final name is whole. Line 1 is the header
(the database's URL without password, the session id, the writing process, when and why); then
``{"samples": [[series_id, t_ns, value], ...]}`` chunks and one line per layer row, step and event;
then ``{"end": counts}``, which the reader checks. The finish is appended after ``end`` (fsynced);
a torn finish line is read as no finish, and that session reopens ``interrupted`` as a killed
profiler's does (with everything the spool held). A file that does not read back as this format is
moved aside (``*.corrupt``), never deleted.

Folder: ``WATTLENS_SPOOL_DIR``, else ``spool/`` beside the default database (the platform's user data
dir), created 0700, files 0600 (records hold command lines and paths). Files are named
``<db key>-<time ns>-s<session>-p<pid>.jsonl``: the key (a hash of the database's identity) finds a
database's files without opening the others; the header is still checked.

SQLite stores: the usual cause there is the database's own disk being full (or read-only). Spooling
onto that same filesystem gains nothing and would take the last free bytes from everything else, so
a full or read-only SQLite database is spooled only when the spool folder is on another filesystem
(``why_not_spool``); a locked SQLite file (another program holds it) is spooled anywhere, and an
in-memory database never (it ends with the process). Server databases are always spooled. When the
spool cannot be written either (local disk full, read-only), the writer counts the records as lost,
as before, and says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from wattlens.profiler.records import EventRecord, LayerCost, StepRecord

SPOOL_ENV = "WATTLENS_SPOOL_DIR"
FORMAT = "wattlens-spool/1"
SUFFIX = ".jsonl"
SAMPLES_PER_LINE = 5000


class SpoolError(Exception):
    """The spool could not be written or read back; ``str()`` is one line that says why."""


class CorruptSpoolError(SpoolError):
    """A spool file that is not whole: it is moved aside, never deleted."""


@dataclass
class Held:
    """What one spool file holds for one session (``t_*_ns``: its samples' span, monotonic ns;
    ``since``: wall-clock time it was written)."""

    path: Path
    session_id: int
    spool_id: str
    db: str
    records: int
    samples: int
    t_first_ns: int | None
    t_last_ns: int | None
    since: float
    reason: str
    t_ns: int | None = None  # monotonic ns when it was written (on the session's clock)
    pid: int | None = None
    pid_create_time: float | None = None
    samples_rows: list = dataclasses.field(default_factory=list, repr=False)
    layers: list[LayerCost] = dataclasses.field(default_factory=list, repr=False)
    steps: list[StepRecord] = dataclasses.field(default_factory=list, repr=False)
    events: list[EventRecord] = dataclasses.field(default_factory=list, repr=False)
    finish: dict | None = None

    @property
    def other_records(self) -> int:
        return self.records - self.samples


# ---- where ---------------------------------------------------------------------------------------
def spool_dir() -> Path:
    """``WATTLENS_SPOOL_DIR``, else ``spool/`` beside the default database."""
    explicit = os.environ.get(SPOOL_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from wattlens.profiler.store.store import default_db_path  # store.py imports this module

    return default_db_path().parent / "spool"


def db_identity(url: str) -> str:
    """The database a spool file belongs to: its URL without password (an SQLite file by its real
    path, so two spellings of one file are one database)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return f"sqlite:///{Path(u.database).expanduser().resolve()}"
    return u.render_as_string(hide_password=True)


def _db_key(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def why_not_spool(url: str, error_kind: str) -> str | None:
    """None when records the database refused with ``error_kind`` (transient) should be spooled;
    else why not, in words (see the module doc: SQLite's own disk)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    if not u.database or u.database == ":memory:":
        return "an in-memory database ends with this process"
    if error_kind == "locked":
        return None
    folder = spool_dir()
    if _same_filesystem(Path(u.database).expanduser().absolute().parent, folder):
        return f"the local spool {folder} is on the same disk as the database"
    return None


def _same_filesystem(a: Path, b: Path) -> bool:
    return _device(a) == _device(b)


def _device(p: Path) -> int | None:
    """The filesystem of ``p``, or of its nearest folder that exists."""
    while True:
        try:
            return os.stat(p).st_dev
        except OSError:
            if p == p.parent:
                return None
            p = p.parent


# ---- write ---------------------------------------------------------------------------------------
def hold(url: str, session_id: int, samples, layers=(), steps=(), events=(), *, reason: str) -> Held:
    """Write the records to one new spool file (temp name, fsync, rename); returns what it holds.
    Raises SpoolError (one line) when the local disk cannot take them."""
    folder = spool_dir()
    identity = db_identity(url)
    now_ns = time.time_ns()
    me = psutil.Process()
    header = {"format": FORMAT, "db": identity, "session_id": int(session_id), "spool_id": uuid.uuid4().hex,
              "pid": me.pid, "pid_create_time": me.create_time(), "created_at": now_ns / 1e9,
              "t_ns": time.monotonic_ns(), "reason": reason}
    name = f"{_db_key(identity)}-{now_ns:020d}-s{int(session_id)}-p{me.pid}{SUFFIX}"
    path, tmp = folder / name, folder / f".{name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in _lines(header, samples, layers, steps, events):
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SpoolError(f"the local spool {folder} could not hold them either: {exc.strerror or exc}") from None
    return _held(path, header, list(samples), list(layers), list(steps), list(events), None)


def _lines(header: dict, samples, layers, steps, events):
    yield _dumps(header)
    samples = list(samples)
    for i in range(0, len(samples), SAMPLES_PER_LINE):
        yield _dumps({"samples": [list(r) for r in samples[i:i + SAMPLES_PER_LINE]]})
    for lc in layers:
        yield _dumps({"layer": dataclasses.asdict(lc)})
    for st in steps:
        yield _dumps({"step": dataclasses.asdict(st)})
    for ev in events:
        yield _dumps({"event": {"t_ns": ev.t_ns, "kind": ev.kind, "message": ev.message, "data": ev.data}})
    yield _dumps({"end": {"samples": len(samples), "layers": len(layers), "steps": len(steps),
                          "events": len(events)}})


def _dumps(obj) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


def _fsync_folder(folder: Path) -> None:
    """The rename is durable once the folder is (POSIX); not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def add_finish(path: Path, finish: dict) -> None:
    """Append the session's finish (status, end_reason, ended_at, duration_s, summary, the
    summary's inputs) after the records; raises SpoolError when it cannot."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(_dumps({"finish": finish}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise SpoolError(f"the session's end could not be added to {path}: {exc.strerror or exc}") from None


# ---- read ----------------------------------------------------------------------------------------
def files_for(url: str) -> list[Path]:
    """The spool files of this database, oldest first (none when the folder is missing)."""
    folder = spool_dir()
    try:
        return sorted(folder.glob(f"{_db_key(db_identity(url))}-*{SUFFIX}"))
    except OSError:
        return []


def read(path: Path) -> Held:
    """A spool file read back whole; CorruptSpoolError when it is not."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptSpoolError(f"it is not text ({exc.reason})") from None
    lines = text.split("\n")
    header = _parse(lines[0], 1)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptSpoolError(f"its first line is not a {FORMAT} header")
    samples, layers, steps, events, end_at = [], [], [], [], None
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        obj = _parse(line, n)
        if "end" in obj:
            end_at = n
            _check_counts(obj["end"], samples, layers, steps, events)
            break
        _take(obj, n, samples, layers, steps, events)
    if end_at is None:
        raise CorruptSpoolError("it ends before its records do (no end line)")
    return _held(path, header, samples, layers, steps, events, _finish(lines[end_at:]))  # lines[end_at]: after end


def _parse(line: str, n: int):
    try:
        obj = json.loads(line)
    except ValueError:
        raise CorruptSpoolError(f"line {n} is not JSON") from None
    if not isinstance(obj, dict):
        raise CorruptSpoolError(f"line {n} is not a record")
    return obj


def _take(obj: dict, n: int, samples, layers, steps, events) -> None:
    try:
        if "samples" in obj:
            samples.extend((int(s), int(t), float(v)) for s, t, v in obj["samples"])
        elif "layer" in obj:
            layers.append(LayerCost(**obj["layer"]))
        elif "step" in obj:
            steps.append(StepRecord(**obj["step"]))
        elif "event" in obj:
            e = obj["event"]
            events.append(EventRecord(int(e["t_ns"]), str(e["kind"]), str(e["message"]), dict(e["data"] or {})))
        else:
            raise CorruptSpoolError(f"line {n} is no kind of record")
    except (TypeError, ValueError, KeyError):
        raise CorruptSpoolError(f"line {n} is not a whole record") from None


def _check_counts(end: dict, samples, layers, steps, events) -> None:
    found = {"samples": len(samples), "layers": len(layers), "steps": len(steps), "events": len(events)}
    if not isinstance(end, dict) or any(end.get(k) != v for k, v in found.items()):
        raise CorruptSpoolError(f"its records do not add up to its end line ({end} written, {found} read)")


def _finish(after_end: list[str]) -> dict | None:
    """The finish line after ``end``; a torn one (the writer died appending it) is no finish."""
    for line in after_end:
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if isinstance(obj, dict) and isinstance(obj.get("finish"), dict):
            return obj["finish"]
    return None


def _held(path: Path, header: dict, samples, layers, steps, events, finish) -> Held:
    ts = [r[1] for r in samples]
    try:
        return Held(path=path, session_id=int(header["session_id"]), spool_id=str(header["spool_id"]),
                    db=str(header["db"]), records=len(samples) + len(layers) + len(steps) + len(events),
                    samples=len(samples), t_first_ns=min(ts) if ts else None, t_last_ns=max(ts) if ts else None,
                    since=float(header["created_at"]), reason=str(header.get("reason", "")),
                    t_ns=header.get("t_ns"),
                    pid=header.get("pid"), pid_create_time=header.get("pid_create_time"),
                    samples_rows=samples, layers=layers, steps=steps, events=events, finish=finish)
    except (KeyError, TypeError, ValueError):
        raise CorruptSpoolError("its header lacks the session, the database or its time") from None


def writer_alive(held: Held) -> bool:
    """Whether the process that wrote the file still runs (then its session may still be ending)."""
    if not held.pid:
        return False
    try:
        p = psutil.Process(int(held.pid))
        return held.pid_create_time is None or abs(p.create_time() - float(held.pid_create_time)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


# ---- after the replay ----------------------------------------------------------------------------
def remove(path: Path) -> None:
    """Called only after the records' commit; a file already gone is fine (another replay)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def move_aside(path: Path) -> Path:
    """Rename a file that cannot be replayed to ``NAME.corrupt`` (``.corrupt-2``...): kept for a
    person to look at, never read again, never deleted."""
    for n in range(1, 1000):
        aside = path.with_name(f"{path.name}.corrupt" + ("" if n == 1 else f"-{n}"))
        if not aside.exists():
            os.replace(path, aside)
            return aside
    raise OSError(f"too many files named {path.name}.corrupt*")


# ---- words ---------------------------------------------------------------------------------------
def what_is_held(held: Held) -> str:
    """'4,210 samples and 12 other records' (or '12 records')."""
    if not held.samples:
        return f"{held.records:,} records"
    other = held.other_records
    return f"{held.samples:,} samples" + (f" and {other:,} other records" if other else "")


def held_text(held: Held, session_id: int | None = None) -> str:
    """The one line said at stop instead of a loss."""
    whose = f"session {session_id}'s " if session_id is not None else ""
    return (f"{whose}{what_is_held(held)} that the database could not take ({held.reason}) are held in the "
            f"local spool at {held.path} and will be written when it is reachable again "
            "(`wattlens sessions` or any command that opens the store writes them)")


def since_text(held: Held) -> str:
    """When the file was written: 'since 03:14' today, else 'since 2024-05-02 03:14'."""
    then = time.localtime(held.since)
    same_day = time.strftime("%Y-%m-%d", then) == time.strftime("%Y-%m-%d", time.localtime())
    return "since " + time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", then)
