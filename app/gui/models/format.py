"""Numbers for people: SI prefixes, units, durations. "n/a" for None, never 0."""

from __future__ import annotations

import math

JOULES_PER_WH = 3600.0
_PREFIXES = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]


ROOT_NAME = "(model root)"  # the agent's root instance, whose path is empty


def layer_label(path: str | None, phase: str | None = None) -> str:
    """A layer row's name as every view prints it: the empty path is the model root, and a
    backward row says so (its forward row has the same path)."""
    return (path or ROOT_NAME) + (" [backward]" if phase == "backward" else "")


def si(value: float | None, unit: str, digits: int = 3, missing: str = "n/a") -> str:
    """``si(0.00342, "Wh")`` → ``"3.42 mWh"``; three significant digits; None → ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if value == 0:
        return f"0 {unit}"
    mag = abs(value)
    scale, prefix = next(((s, p) for s, p in _PREFIXES if mag >= s * 0.9995), _PREFIXES[-1])
    scaled = value / scale
    text = f"{scaled:.{digits}g}"
    if "e" in text:  # beyond the prefix table
        text = f"{scaled:.{digits - 1}e}"
    return f"{text} {prefix}{unit}"


def pct(value: float | None, digits: int = 0, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.{digits}f} %"


def share_with_se(share: float | None, se: float | None = None, missing: str = "n/a") -> str:
    """A share and, where it is sampled, its standard error in points: ``"9.1 % ± 1.0"`` (the
    CLI, the reports and the layers view print a sampled share the same way)."""
    if share is None:
        return missing
    shown = se is not None and (share > 0 or se > 0)  # a node with no time of its own: no "± 0.0"
    return f"{share * 100:.1f} %" + (f" ± {se * 100:.1f}" if shown else "")


def duration(seconds: float | None, missing: str = "n/a") -> str:
    """``83.4`` → ``"1 min 23 s"``; under a minute three significant digits, as ``wattlens
    sessions`` and ``show`` print it (``4.36 s``, ``23.7 s``)."""
    if seconds is None:
        return missing
    if seconds < 59.95:
        return f"{seconds:.3g} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def clock(seconds: float) -> str:
    """``83.4`` → ``"00:01:23"`` (elapsed time of a running session)."""
    s = int(max(0.0, seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def energy_pair(energy_j: float | None, missing: str = "n/a") -> str:
    """Joules and watt-hours side by side: ``"12.3 J · 3.42 mWh"``."""
    if energy_j is None:
        return missing
    return f"{si(energy_j, 'J')} · {si(energy_j / JOULES_PER_WH, 'Wh')}"


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace and newlines: messages in the window are one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
