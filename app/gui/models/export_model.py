"""Export: which report formats this build can write, and the export itself (run in a worker)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from wattlens.app.report.formats import FORMATS, write_report


@dataclass(frozen=True)
class FormatChoice:
    name: str
    text: str
    available: bool
    reason: str = ""


def available_formats() -> list[FormatChoice]:
    """HTML and PDF need the rich renderer (``wattlens.app.report.rich``); say so when it is absent."""
    rich = importlib.util.find_spec("wattlens.app.report.rich") is not None
    out = []
    for f in FORMATS.values():
        ok = rich or not f.needs_rich
        out.append(FormatChoice(f.name, f.text, ok,
                                "" if ok else "the HTML/PDF renderer (wattlens.app.report.rich) is not in this build"))
    return out


def default_path(folder: str | Path, session_id: int, fmt: str, compare_id: int | None = None,
                 what: str = "samples") -> Path:
    stem = f"wattlens-session-{session_id}" + (f"-vs-{compare_id}" if compare_id is not None else "")
    if fmt == "csv" and what != "samples":
        stem += f"-{what}"  # each CSV table its own file
    return Path(folder).expanduser() / f"{stem}.{'trace.json' if fmt == 'trace' else fmt}"


def run_export(store, session_id: int, fmt: str, path: str | Path, *, compare_id: int | None = None,
               grid_g_per_kwh: float | None = None, progress=None, what: str = "samples") -> Path:
    """``write_report`` with progress; errors are WattlensErrors with one line (shown as is).
    ``what``: the CSV's table (``CSV_WHAT``), as `wattlens report --what`."""
    return write_report(store, session_id, fmt, path, compare_id=compare_id,
                        grid_g_per_kwh=grid_g_per_kwh, progress=progress, what=what)
