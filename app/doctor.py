"""`wattlens doctor`: what can be measured here, what cannot, and the fix for each."""

from __future__ import annotations

import os


def _pyspy_check() -> dict:
    from wattlens.profiler.stacks.sampler import find_pyspy

    exe = find_pyspy()  # the same search as attach uses
    if exe is None:
        return {"name": "py-spy (layer figures in attach mode)", "ok": False, "detail": "py-spy not found",
                "fix": "pip install py-spy"}
    detail = f"found at {exe}"
    ok = True
    fix = None
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
        if scope >= 1 and os.geteuid() != 0:
            ok = False
            detail += f"; ptrace_scope is {scope}, so attaching to processes you did not start is denied"
            fix = ("run wattlens with sudo, or `echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope`; "
                   "in a container add --cap-add SYS_PTRACE; `wattlens run` needs none of this")
    except (OSError, ValueError):
        pass
    return {"name": "py-spy (layer figures in attach mode)", "ok": ok, "detail": detail, "fix": fix}


def _db_check(db) -> dict:
    """What `run`/`attach` would meet at the database: its pages checked as a writer checks them
    (the writer's time budget), and the store's own check of where it is or would be created
    (``check_writable``: a folder that cannot be created or written, a read-only file)."""
    from wattlens.profiler.errors import NoDatabaseError, WattlensError
    from wattlens.profiler.store import Store, check_writable, resolve_db
    from wattlens.profiler.store.store import WRITE_CHECK_S

    try:
        try:
            store = Store(db, create=False, check_s=WRITE_CHECK_S)  # looking never creates it
        except NoDatabaseError:
            check_writable(db)
            return {"name": "database", "ok": True,
                    "detail": f"{resolve_db(db)} (none yet: the first session creates it)"}
        try:
            if store.damage is not None:
                raise store.damage  # the same line `run` and `attach` would refuse it with
            n = store.session_count()  # counted, not read: a store of 20,000 sessions took 5 s
            shown = store.display_name  # a server URL's password hidden
        finally:
            store.close()
        check_writable(db)
        return {"name": "database", "ok": True,
                "detail": f"{shown} ({n:,} session{'' if n == 1 else 's'})"}
    except WattlensError as exc:
        return {"name": "database", "ok": False, "detail": exc.message, "fix": exc.hint}


def doctor(db=None) -> dict:
    from wattlens.profiler.sources import discover

    found = discover()
    doc = found.to_dict()
    from wattlens.app.syslibs import system_libraries_check

    doc["checks"] = [_pyspy_check(), _db_check(db), system_libraries_check()]
    return doc
