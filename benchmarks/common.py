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


def bootstrap_median_ci(values: list[float], n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median of ``values`` and its percentile-bootstrap confidence
    interval (resampling the values with replacement; a fixed seed so a rerun on the same
    figures prints the same interval)."""
    import random
    import statistics

    if not values:
        raise ValueError("no values to bootstrap")
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(n_boot))
    tail = (1 - level) / 2
    return (statistics.median(values), meds[int(tail * n_boot)],
            meds[min(n_boot - 1, int((1 - tail) * n_boot))])
