"""The live view's model: a running ProfilingSession seen through its ring buffers, plus the
layer windows and steps that arrive from other threads (via the Qt bridge), turned into the
figures a person reads: energy (J and Wh), CO2, power, utilisation, energy per step/sample/token.

A finished session's cards read its summary (``cards(..., summary=...)``), the one place its
totals are computed; live cards run the same ``profiler.figures`` functions on the ring data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wattlens.app import present
from wattlens.app.gui.models.format import energy_pair, one_line, pct, si
from wattlens.app.gui.models.layers_model import LayerTree
from wattlens.app.gui.models.series_model import (
    LiveFeed,
    SeriesSet,
    infos_from_specs,
    method_text,
    short_source,
)
from wattlens.app.gui.models.signal import Signal
from wattlens.app.report.paused import native_pauses
from wattlens.profiler import figures
from wattlens.profiler.records import LayerCost, StepRecord
from wattlens.profiler.sources.base import source_dict
from wattlens.profiler.summary import step_stats


@dataclass(frozen=True)
class Card:
    title: str
    value: str
    detail: str = ""


def unavailable_dicts(items: Iterable) -> list[dict]:
    """Discovery.unavailable objects or stored dicts → {"id", "kind", "reason", "fix"}."""
    out = []
    for u in items:
        if isinstance(u, Mapping):
            out.append({"id": u.get("id") or u.get("source_id"), "kind": u.get("kind"),
                        "reason": u.get("reason", ""), "fix": u.get("fix", "")})
        else:
            out.append({"id": u.source_id, "kind": u.kind, "reason": u.reason, "fix": u.fix})
    return out


def _recent_mean(series: SeriesSet, key: str, span_s: float | None) -> float | None:
    d = series.get(key)
    if d is None or len(d[0]) == 0:
        return None
    t, v = d
    if span_s is None:
        return float(np.mean(v))
    i = int(np.searchsorted(t, t[-1] - span_s, side="left"))
    return float(np.mean(v[i:]))


def fill_step_energy(steps: Sequence[StepRecord], series: SeriesSet) -> list[StepRecord]:
    """``figures.fill_step_energy`` over the view's series (what ``summarize`` does at the end)."""
    return figures.fill_step_energy(steps, series.energy_between_ns)


def methods_text(methods: Iterable[str], whose: str | None = None) -> str:
    """How a figure was obtained, as every card words it: its methods (``method_text``), so an
    estimate reads "estimated" with its method next to the figure that rests on it, e.g.
    ``"target energy: attributed (cpu-time share) × estimated"``; "" when no method is known."""
    words = "; ".join(dict.fromkeys(method_text(m) for m in methods if m))
    if not words:
        return ""
    return f"{whose}: {words}" if whose else words


def _with_methods(detail: str, *methods: str) -> str:
    """A card's detail, then the methods of the figures it derives from."""
    return "; ".join([detail, *(m for m in methods if m)])


def cards(series: SeriesSet, sources: Sequence[Mapping], unavailable: Sequence[Mapping],
          steps: Sequence[StepRecord], grid_g_per_kwh: float | None, *, has_target: bool,
          live: bool = True, summary: Mapping | None = None, kind: str | None = None) -> list[Card]:
    """The figures of a session, each with its method; "n/a" plus a reason where unknown.

    A finished session passes its ``summary`` (``profiler.summary.summarize``): energy, mean
    power, CO₂ and per-step figures are read from it, so the cards, Compare, ``show`` and the
    reports print the same numbers. Live, the same ``figures`` functions run on the ring data."""
    out: list[Card] = []
    by_id = {s["id"]: s for s in sources}
    fig = _figures(series, steps, has_target, summary)
    machine_j, target_j = fig["machine_j"], fig["target_j"]
    src_keys = series.source_energy_keys()
    methods = sorted({by_id[k.split("/")[0]]["method"] for k in src_keys if k.split("/")[0] in by_id})
    target_methods = sorted({series.infos[k].method for k in series.keys()
                             if k.startswith("target/") and k.endswith("/energy_j") and k != "target/energy_j"})
    if has_target:
        out.append(Card("Energy, target process", energy_pair(target_j),
                        methods_text(target_methods) if target_j is not None
                        else "not attributed yet (needs two samples)"))
    out.append(Card("Energy, whole machine", energy_pair(machine_j),
                    f"sum of the sources; {methods_text(methods, 'method')}" if methods
                    else "no source has energy yet"))
    basis_j, basis, basis_methods = ((target_j, "target", target_methods) if target_j is not None
                                     else (machine_j, "whole-machine", methods))
    if grid_g_per_kwh is None:
        out.append(Card("CO₂", "n/a", "set a grid carbon intensity in Settings"))
    else:
        out.append(Card("CO₂", si(figures.co2_g(basis_j, grid_g_per_kwh), "g"),
                        _with_methods(f"{basis} energy × {grid_g_per_kwh:g} gCO₂/kWh (Settings)",
                                      methods_text(basis_methods, f"{basis} energy"))))
    # power
    if live or summary is None:
        span = 1.0 if live else None
        machine_w = None
        for s in sources:
            p = _recent_mean(series, f"{s['id']}/power_w", span)
            if p is not None:
                machine_w = (machine_w or 0.0) + p
        target_w = _recent_mean(series, "target/power_w", span)
    else:
        machine_w, target_w = fig["machine_w"], fig["target_w"]
    parts = [f"target {si(target_w, 'W')}"] if has_target else []
    parts.append(f"machine {si(machine_w, 'W')}")
    power_methods = ([methods_text(target_methods, "target")] if has_target else []) + [methods_text(methods, "machine")]
    out.append(Card("Power, last second" if live else "Mean power", " · ".join(parts),
                    _with_methods("mean over the last second" if live else "energy ÷ duration of the session",
                                  *power_methods)))
    # CPU
    span = 1.0 if live else None
    cpu = [s for s in sources if s.get("kind") == "cpu"]
    cpu_util = [u for u in (_recent_mean(series, f"{s['id']}/util_pct", span) for s in cpu) if u is not None]
    cpu_text = f"machine {pct(max(cpu_util) if cpu_util else None)}"
    if has_target:
        cpu_text += f" · target {pct(_recent_mean(series, 'target/cpu_pct', span))}"
    over = "mean over the last second" if live else "mean over the session"  # as the power card says
    out.append(Card("CPU", cpu_text, f"{over}; " + ("target in % of one core" if has_target else "all logical CPUs")))
    # GPU
    gpus = [s for s in sources if s.get("kind") == "gpu"]
    if gpus:
        texts = []
        for g in gpus:
            u = _recent_mean(series, f"{g['id']}/util_pct", span)
            mem = series.last(f"{g['id']}/mem_used_bytes")
            texts.append(f"{pct(u)} · {si(mem, 'B')}")
        out.append(Card("GPU", " | ".join(texts), ", ".join(short_source(g["id"], g.get("label", "")) for g in gpus)))
    else:
        why = next((u for u in unavailable if u.get("kind") == "gpu"), None)
        detail = f"{why['reason']} — {why['fix']}" if why else "no GPU source was found"
        out.append(Card("GPU", "not measured", detail))
    # per step
    st = fig["steps"]
    if st:
        per = [(st["energy_per_step_j"], "step"), (st["energy_per_sample_j"], "sample"),
               (st["energy_per_token_j"], "token")]
        value = " · ".join(f"{si(v, 'J')}/{what}" for v, what in per if v is not None) or "n/a"
        step_methods = target_methods if has_target else methods  # a step's energy is the target's
        out.append(Card("Energy per step", value,
                        _with_methods(f"{present.steps_count_text(st)}{'' if st.get('ranks') else ' steps'}, "
                                      f"{st['with_energy']} with energy"
                                      + (f" — {st['reason']}" if st.get("reason") else ""),
                                      methods_text(step_methods, "target energy" if has_target else "energy"))))
    else:
        out.append(Card("Energy per step", "n/a", present.no_steps_text(kind)))
    return out


def _figures(series: SeriesSet, steps: Sequence[StepRecord], has_target: bool,
             summary: Mapping | None) -> dict:
    """Energy, mean power and step figures: a finished session's summary, or the live series."""
    if summary is not None:
        tgt = summary.get("target") or {}
        return {"machine_j": summary.get("energy_j"), "target_j": tgt.get("energy_j") if has_target else None,
                "machine_w": summary.get("mean_power_w"), "target_w": tgt.get("mean_power_w"),
                "steps": summary.get("steps")}
    src_keys = series.source_energy_keys()
    return {"machine_j": sum(series.last(k) or 0.0 for k in src_keys) if src_keys else None,
            "target_j": series.last("target/energy_j") if has_target else None,
            "steps": step_stats(fill_step_energy(steps, series)) if steps else None}


class LiveModel:
    """One running ProfilingSession, as the live view sees it (GUI thread only)."""

    def __init__(self, session, *, grid_g_per_kwh: float | None, launched_log: str | None = None,
                 command: list[str] | None = None):
        self.session = session
        self.command = command  # what was launched (run mode): the title even before /proc shows it
        self.sources = [source_dict(s) for s in session.discovery.usable]
        self.unavailable = unavailable_dicts(session.discovery.unavailable)
        specs = session.sampler.series_specs() if session.sampler is not None else []
        self.series = SeriesSet(session.start_ns, infos_from_specs(specs, self.sources))
        self.feed = LiveFeed(session.rings, self.series)
        self.layers = LayerTree()
        self.layers.set_target(self.series.target_energy_j, estimated=self.series.target_estimated)
        self.steps: list[StepRecord] = []
        self.grid_g_per_kwh = grid_g_per_kwh
        self.launched_log = launched_log
        self.ended: tuple[str, str | None] | None = None
        self.steps_changed = Signal()
        self.ended_changed = Signal()

    @property
    def has_target(self) -> bool:
        return self.session.target is not None

    @property
    def title(self) -> str:
        t = self.session.target
        if t is None:
            return self.session.name
        argv = self.command or t.cmdline
        cmd = one_line(" ".join(argv), 140) if argv else t.name
        return f"PID {t.pid} — {cmd}"

    def elapsed_s(self) -> float:
        if self.ended is not None and self.session.summary:
            return float(self.session.summary.get("duration_s") or self.series.end_s())
        return self.session.elapsed_s()

    def paused_spans(self) -> tuple[list[tuple[float, float]], str]:
        """Where wattlens's native stack reads stopped the target so far (a run going on ends
        now), and the legend's line: as the stored session will show them."""
        sampler = getattr(self.session, "stack_sampler", None)
        runs = sampler.native_run_spans() if sampler is not None else []
        return native_pauses([{"native_runs": runs}], self.series.start_ns)

    def pull(self) -> int:
        """New points since the last pull (called by the view's timer, 10–20 Hz)."""
        n = self.feed.pull()
        if n and self.layers.pending:
            self.layers.resolve(self.series.energy_between_ns)
        return n

    def add_layers(self, rows: list[LayerCost]) -> None:
        self.layers.add(rows, energy_between=self.series.energy_between_ns)

    def add_step(self, step: StepRecord) -> None:
        self.steps.append(step)
        self.steps_changed.emit()

    def mark_ended(self, status: str, reason: str | None) -> None:
        stored = getattr(self.session, "stored_layers", None)
        if stored:  # as stored: the backward split again by the session's whole pool of reads
            self.layers.reset(stored, self.series.energy_between_ns)
            self.session.stored_layers = None  # read once: do not keep a second copy of every row
        self.ended = (status, reason)
        self.ended_changed.emit()

    def step_ends_s(self) -> np.ndarray:
        if not self.steps:
            return np.empty(0)
        return (np.fromiter((s.t_end_ns for s in self.steps), dtype=np.int64, count=len(self.steps))
                - self.series.start_ns) / 1e9

    def cards(self) -> list[Card]:
        ended = self.ended is not None and bool(self.session.summary)
        return cards(self.series, self.sources, self.unavailable, self.steps, self.grid_g_per_kwh,
                     has_target=self.has_target, live=self.ended is None,
                     summary=self.session.summary if ended else None, kind=self.session.kind)

    def measuring_text(self) -> str:
        """The status bar's line: what is measured, how often."""
        srcs = ", ".join(f"{short_source(s['id'], s['label'])} [{s['method']}]" for s in self.sources)
        rate = 1.0 / self.session.interval_s if self.session.interval_s else 0
        stacks = ""
        if self.session.stack_sampler is not None:
            stacks = f" · stacks {self.session.stack_sampler.rate_hz:g} Hz"
        return f"{srcs} every {self.session.interval_s:g} s ({rate:g} Hz){stacks}"
