"""The app's settings as one frozen record, validated, and persisted through a small backend.

The backend is duck-typed on ``QSettings`` (``value(key, default)``, ``setValue``, ``sync``), so
the GUI passes a QSettings and tests or scripts may pass :class:`MemorySettings` — the model
itself never imports Qt. Stored values that cannot be parsed fall back to the default (a broken
settings file never stops the app from starting).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from wattlens.app.gui.models.signal import Signal
from wattlens.profiler.errors import BadInputError

THEMES = ("light", "dark")
# IEA's world-average carbon intensity of electricity generation (≈ 475 gCO2/kWh); a person's
# own grid differs a lot, hence a setting shown next to every CO2 figure.
DEFAULT_GRID_G_PER_KWH = 475.0


@dataclass(frozen=True)
class GuiSettings:
    db: str = ""  # database file or URL; "" = WATTLENS_DB, else the default file
    interval_s: float = 0.1  # power sampling interval
    stacks: bool = True  # sample Python stacks (layer figures) in attach mode
    stack_rate_hz: int = 50
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH
    cpu_tdp_w: float | None = None  # None = the CPU model's table / default
    theme: str = "light"

    def validate(self) -> None:
        """One BadInputError per bad field, naming the field and the accepted range."""
        if not 0.01 <= self.interval_s <= 10:
            raise BadInputError(f"sampling interval {self.interval_s:g} s is out of range",
                                hint="use 0.01 to 10 seconds")
        if not 1 <= self.stack_rate_hz <= 1000:
            raise BadInputError(f"stack sampling rate {self.stack_rate_hz} Hz is out of range",
                                hint="use 1 to 1000 samples per second")
        if not 0 <= self.grid_g_per_kwh <= 2000:
            raise BadInputError(f"grid carbon intensity {self.grid_g_per_kwh:g} gCO2/kWh is out of range",
                                hint="use 0 to 2000 gCO2/kWh (look up your grid's figure)")
        if self.cpu_tdp_w is not None and not 1 <= self.cpu_tdp_w <= 2000:
            raise BadInputError(f"CPU TDP {self.cpu_tdp_w:g} W is out of range",
                                hint="use your CPU's rated TDP, 1 to 2000 W, or clear the override")
        if self.theme not in THEMES:
            raise BadInputError(f"unknown theme '{self.theme}'", hint=f"use one of: {', '.join(THEMES)}")

    def effective_db(self, override: str | None = None) -> str | None:
        """What the Store should open: the command line's --db, else the setting, else None
        (then the Store applies WATTLENS_DB and the default file)."""
        return override or self.db or None

    def effective_tdp_w(self) -> float | None:
        if self.cpu_tdp_w is not None:
            return self.cpu_tdp_w
        env = os.environ.get("WATTLENS_CPU_TDP_W")
        try:
            return float(env) if env else None
        except ValueError:
            return None


class MemorySettings:
    """A QSettings stand-in held in a dict (scripts, tests, `--no-settings` runs)."""

    def __init__(self, values: dict[str, Any] | None = None):
        self.values = dict(values or {})

    def value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802 - QSettings' name
        self.values[key] = value

    def remove(self, key: str) -> None:
        self.values.pop(key, None)

    def sync(self) -> None:
        pass


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _as_opt_float(v: Any) -> float | None:
    if v is None or v == "" or (isinstance(v, str) and v.lower() == "none"):
        return None
    return float(v)


_PARSERS = {
    "db": str, "interval_s": float, "stacks": _as_bool, "stack_rate_hz": lambda v: int(float(v)),
    "grid_g_per_kwh": float, "cpu_tdp_w": _as_opt_float, "theme": str,
}


class SettingsModel:
    """Holds the current :class:`GuiSettings`; ``update`` validates, persists, then emits."""

    PREFIX = "settings/"

    def __init__(self, backend: Any):
        self.backend = backend
        self.changed = Signal()  # (new: GuiSettings, old: GuiSettings)
        self.values = self._load()

    def _load(self) -> GuiSettings:
        defaults = GuiSettings()
        loaded: dict[str, Any] = {}
        for f in dataclasses.fields(GuiSettings):
            raw = self.backend.value(self.PREFIX + f.name, None)
            if raw is None:
                continue
            try:
                loaded[f.name] = _PARSERS[f.name](raw)
            except (TypeError, ValueError):
                continue
        candidate = dataclasses.replace(defaults, **loaded)
        try:
            candidate.validate()
        except BadInputError:
            # keep the valid fields one by one
            good = {}
            for k, v in loaded.items():
                try:
                    dataclasses.replace(defaults, **{k: v}).validate()
                    good[k] = v
                except BadInputError:
                    pass
            candidate = dataclasses.replace(defaults, **good)
        return candidate

    def update(self, **changes: Any) -> GuiSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(GuiSettings)}
        if unknown:
            raise BadInputError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self.values, **changes)
        new.validate()
        for f in dataclasses.fields(GuiSettings):
            value = getattr(new, f.name)
            self.backend.setValue(self.PREFIX + f.name, "" if value is None else value)
        self.backend.sync()
        old, self.values = self.values, new
        if new != old:
            self.changed.emit(new, old)
        return new

    def get_ui(self, key: str, default: Any = None) -> Any:
        """Window geometry, last folder ... (not validated settings)."""
        return self.backend.value("ui/" + key, default)

    def set_ui(self, key: str, value: Any) -> None:
        self.backend.setValue("ui/" + key, value)
