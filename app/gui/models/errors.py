"""Every error the window shows is one line: our own errors say what to do; anything else is
named as an internal error (with the traceback only in the log)."""

from __future__ import annotations

import logging

from wattlens.app.gui.models.format import one_line
from wattlens.profiler.errors import WattlensError

log = logging.getLogger("wattlens.gui")


def error_text(exc: BaseException) -> str:
    if isinstance(exc, WattlensError):
        return one_line(str(exc))
    if isinstance(exc, PermissionError):
        where = f" ({exc.filename})" if exc.filename else ""
        return one_line(f"permission denied{where} — run wattlens as a user allowed to do this")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return one_line(f"{exc.strerror or exc}{where}")
    log.error("internal error", exc_info=exc)
    return one_line(f"internal error: {type(exc).__name__}: {exc} — please report it "
                    "(start with WATTLENS_DEBUG=1 to log the traceback)")
