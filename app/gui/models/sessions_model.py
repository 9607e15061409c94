"""Stored sessions: the history table, one session's full data (loaded off the GUI thread with
progress), and two sessions compared (deltas from ``compare_summaries``, as in reports)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from wattlens.app.gui.models.format import duration, one_line, si
from wattlens.app.gui.models.layers_model import LayerTree
from wattlens.app.gui.models.live_model import Card, cards, unavailable_dicts
from wattlens.app.gui.models.series_model import SeriesSet, infos_from_specs
from wattlens.app.gui.models.signal import Signal
from wattlens.app.report.data import compare_summaries
from wattlens.app.report.paused import native_pauses
from wattlens.app.report.rich_view import estimate_flags
from wattlens.profiler.ranks import session_ranks
from wattlens.profiler.records import EventRecord, StepRecord
from wattlens.profiler.sources.base import source_dict
from wattlens.profiler.summary import summarize

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class SessionRow:
    id: int
    name: str
    target: str
    started_at: float
    duration_s: float | None
    energy_j: float | None  # whole machine
    target_energy_j: float | None
    status: str
    host: str = ""  # the host that recorded it (a shared PostgreSQL store holds several)

    @property
    def started_text(self) -> str:
        return dt.datetime.fromtimestamp(self.started_at).strftime("%Y-%m-%d %H:%M:%S")

    @property
    def energy_text(self) -> str:
        return si(self.energy_j, "J")

    @property
    def target_energy_text(self) -> str:
        return si(self.target_energy_j, "J")

    @property
    def duration_text(self) -> str:
        return duration(self.duration_s)


def _target_text(s: dict) -> str:
    if s.get("target_pid") is None:
        return "whole machine"
    argv = s.get("target_cmdline") or (s.get("settings") or {}).get("command") or []  # run mode keeps it
    cmd = one_line(" ".join(argv), 100)
    return f"PID {s['target_pid']}" + (f" — {cmd}" if cmd else "")


def session_rows(store) -> list[SessionRow]:
    """The listing; on a store shared by several hosts each target names its host first."""
    rows = []
    sessions = store.sessions()
    several_hosts = len({s.get("host") for s in sessions}) > 1
    for s in sessions:
        summ = s.get("summary") or {}
        target = _target_text(s)
        rows.append(SessionRow(
            id=s["id"], name=s["name"], target=f"{s['host']}: {target}" if several_hosts else target,
            started_at=s["started_at"], duration_s=s.get("duration_s"), energy_j=summ.get("energy_j"),
            target_energy_j=(summ.get("target") or {}).get("energy_j"), status=s["status"],
            host=s.get("host") or ""))
    return rows


class SessionsModel:
    """The history table's rows; reloaded by the view in a worker (``session_rows``)."""

    def __init__(self) -> None:
        self.rows: list[SessionRow] = []
        self.changed = Signal()

    def set_rows(self, rows: list[SessionRow]) -> None:
        self.rows = list(rows)
        self.changed.emit()

    def get(self, session_id: int) -> SessionRow | None:
        return next((r for r in self.rows if r.id == session_id), None)


@dataclass
class StoredSession:
    session: dict
    series: SeriesSet
    steps: list[StepRecord]
    layers: LayerTree
    events: list[EventRecord]
    summary: dict
    sources: list[dict] = field(default_factory=list)
    unavailable: list[dict] = field(default_factory=list)
    ranks: dict | None = None  # profiler.ranks.session_ranks: the per-rank table of a multi-rank job

    @property
    def id(self) -> int:
        return self.session["id"]

    @property
    def has_target(self) -> bool:
        return self.session.get("target_pid") is not None

    def cards(self, grid_g_per_kwh: float | None) -> list[Card]:
        return cards(self.series, self.sources, self.unavailable, self.steps, grid_g_per_kwh,
                     has_target=self.has_target, live=False, summary=self.summary, kind=self.session.get("kind"))

    def headline(self) -> str:
        s = self.session
        when = dt.datetime.fromtimestamp(s["started_at"]).strftime("%Y-%m-%d %H:%M")
        end = f" — {s['end_reason']}" if s.get("end_reason") else ""
        if s["status"] == "running":  # its figures are those stored when it was opened (it read "n/a")
            took = (f"{duration(self.series.end_s())} so far (still recording: the figures below are up to "
                    "then; Open it again for later ones)")
        else:
            took = duration(s.get("duration_s"))
        return f"Session {s['id']}: {s['name']} · {_target_text(s)} · {when} · {took} · {s['status']}{end}"

    def paused_spans(self) -> tuple[list[tuple[float, float]], str]:
        """Where wattlens's native stack reads stopped the target, for the plots to shade, and the
        legend's line (:func:`wattlens.app.report.paused.native_pauses`)."""
        return native_pauses((e.data for e in self.events), self.series.start_ns)

    def main_power_key(self) -> str | None:
        """The series to overlay in a comparison: the target's power, else the first source's."""
        if "target/power_w" in self.series.data:
            return "target/power_w"
        keys = [k for k in self.series.power_keys() if not k.startswith("target/")]
        return keys[0] if keys else None


def load_stored_session(store, session_id: int, *, grid_g_per_kwh: float | None = None,
                        progress: Progress | None = None) -> StoredSession:
    """Everything the detail view shows. Runs in a worker; ``progress(step, fraction)``."""
    def tick(text: str, frac: float) -> None:
        if progress:
            progress(text, frac)

    tick("reading the session", 0.05)
    session = store.session(session_id)
    tick("reading samples", 0.2)
    data = store.series_data(session_id)
    tick("reading steps and layers", 0.6)
    steps = store.steps(session_id)
    layer_rows = store.layer_costs(session_id)
    events = store.events(session_id)
    tick("summarising", 0.85)
    sources = [source_dict(s) for s in session["sources"]]
    series = SeriesSet.from_arrays(session["start_ns"], infos_from_specs(session["series"], sources), data)
    layers = LayerTree()
    layers.set_target(series.target_energy_j, estimated=series.target_estimated)
    layers.add(layer_rows, energy_between=series.energy_between_ns)
    summary = summarize(session, data, steps, layer_rows, grid_g_per_kwh=grid_g_per_kwh)
    summary["notes"] = (session.get("summary") or {}).get("notes", [])
    unavailable = unavailable_dicts((session.get("settings") or {}).get("unavailable", []))
    ranks = session_ranks(steps, events, data)
    tick("done", 1.0)
    return StoredSession(session, series, steps, layers, events, summary, sources, unavailable, ranks)


@dataclass(frozen=True)
class DeltaRow:
    figure: str
    this: str
    other: str
    delta: str
    delta_pct: str
    this_method: str = ""  # how each session's figure was obtained ("" for a measured time)
    other_method: str = ""


# figure → (label, unit, which estimate flag of ``estimate_flags`` it rests on; None: measured time)
_FIGURES = {
    "duration_s": ("Duration", "s", None),
    "energy_j": ("Energy, whole machine", "J", "total"),
    "mean_power_w": ("Energy per second (mean power), whole machine", "W", "total"),
    "target_energy_j": ("Energy, target", "J", "target"),
    "target_mean_power_w": ("Mean power, target", "W", "target"),
    "energy_per_step_j": ("Energy per step", "J", "derived"),
    "energy_per_sample_j": ("Energy per sample", "J", "derived"),
    "energy_per_token_j": ("Energy per token", "J", "derived"),
}
ESTIMATED = " (estimated)"  # after a compared figure that rests on the CPU power model


def _method_of(s: StoredSession, flag: str) -> str:
    """The stored method of a compared figure of session ``s`` (for the cell's tooltip)."""
    summ = s.summary or {}
    tgt = summ.get("target") or {}
    if flag == "total" or (flag == "derived" and not tgt):
        return f"session {s.id}, whole machine: {summ.get('energy_method') or 'n/a'}"
    return f"session {s.id}, target: {tgt.get('method') or summ.get('energy_method') or 'n/a'}"


@dataclass
class Comparison:
    a: StoredSession
    b: StoredSession
    deltas: dict
    rows: list[DeltaRow]

    @property
    def warnings(self) -> list[str]:
        """Why the runs may not be comparable (command lines, batch sizes, durations differ)."""
        return list(self.deltas.get("warnings") or [])

    def title(self) -> str:
        """The heading, the normalised figure to read first, and a line per warning."""
        head = (f"Session {self.a.id} ({self.a.session['name']}) compared with "
                f"session {self.b.id} ({self.b.session['name']}); Δ = {self.a.id} − {self.b.id}; "
                f"normalised figure to read first: {self.deltas.get('basis') or 'n/a'}")
        return "\n".join([head] + [f"Warning: {w}" for w in self.warnings])

    def methods_line(self) -> str:
        """Each session's methods, so every "(estimated)" mark in the table has its method in view."""
        parts = []
        for s in (self.a, self.b):
            summ = s.summary or {}
            text = f"session {s.id}: whole machine {summ.get('energy_method') or 'n/a'}"
            if summ.get("target"):
                text += f"; target {summ['target'].get('method') or 'n/a'}"
            parts.append(text)
        return "Methods — " + " · ".join(parts)


def compare_sessions(a: StoredSession, b: StoredSession) -> Comparison:
    """Deltas a − b. Callers pass the newer session as ``a`` (Δ = what changed since ``b``)."""
    deltas = compare_summaries(a.summary, b.summary, b.session, this_session=a.session)
    flags_a, flags_b = estimate_flags({"summary": a.summary}), estimate_flags({"summary": b.summary})
    rows = []
    for key, (label, unit, flag) in _FIGURES.items():
        d = deltas.get(key)
        if d is None:
            continue
        # each session's figure carries its own estimate mark; a delta containing one carries it too
        est_a, est_b = bool(flag and flags_a[flag]), bool(flag and flags_b[flag])
        delta = d["delta"]
        sign = "+" if delta is not None and delta > 0 else ""
        rows.append(DeltaRow(
            label, _marked(si(d["this"], unit), est_a), _marked(si(d["other"], unit), est_b),
            "n/a" if delta is None else _marked(sign + si(delta, unit), est_a or est_b),
            "n/a" if d["delta_pct"] is None else f"{d['delta_pct']:+.1f} %",
            _method_of(a, flag) if flag else "", _method_of(b, flag) if flag else ""))
    return Comparison(a, b, deltas, rows)


def _marked(text: str, estimated: bool) -> str:
    """A compared figure, with the estimate mark when it rests on an estimate (never on "n/a")."""
    return text + ESTIMATED if estimated and text != "n/a" else text
