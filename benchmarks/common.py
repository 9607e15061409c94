"""Helpers shared by the benchmarks: machine description and writing a results section."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def machine() -> str:
    import psutil

    from wattlens.profiler.sources.cpu_model import cpu_model_name

    return (f"{cpu_model_name()}, {psutil.cpu_count(logical=True)} logical CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def write_section(name: str, title: str, body: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    path.write_text(f"## {title}\n\nRun {stamp} on: {machine()}\n\n{body.strip()}\n")
    return path
