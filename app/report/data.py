"""The report's content as one plain dict, built from the store: every format renders this.

The JSON format *is* this dict (schema: docs/report-schema.json). Numbers come from the stored
series; each energy figure carries its method; missing figures are None with a reason.
"""

from __future__ import annotations

import time

from wattlens.app.present import outcomes, read_recommendations
from wattlens.app.report.headline import headline
from wattlens.profiler.figures import fill_step_energy
from wattlens.profiler.summary import summarize, target_energy_between, top_layers

REPORT_SCHEMA_VERSION = 1


def build_report(store, session_id: int, *, compare_id: int | None = None,
                 grid_g_per_kwh: float | None = None, include_samples: bool = False) -> dict:
    session = store.session(session_id)
    series = store.series_data(session_id)
    steps = store.steps(session_id)
    layers = store.layer_costs(session_id)
    summary = summarize(session, series, steps, layers, grid_g_per_kwh=grid_g_per_kwh)
    stored = session.get("summary") or {}
    summary["notes"] = stored.get("notes", [])
    if stored.get("loss"):  # a partial session: what could not be written (the figures cover the rest)
        summary["loss"] = stored["loss"]
    report = {
        "schema": "wattlens-report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "generated_at": time.time(),
        "session": {k: session[k] for k in ("id", "name", "kind", "status", "end_reason", "target_pid",
                                            "target_cmdline", "host", "hardware", "started_at", "start_ns",
                                            "ended_at", "duration_s", "interval_s")},
        "sources": session["sources"],
        "series": [{**s, "points": int(len(series[s["key"]][0])) if s["key"] in series else 0}
                   for s in session["series"]],
        "summary": summary,
        "steps": [_step_dict(s) for s in fill_step_energy(steps, target_energy_between(series))],
        "layers": top_layers(layers, n=None),
        "events": [{"t_s": (e.t_ns - session["start_ns"]) / 1e9, "kind": e.kind, "message": e.message}
                   for e in store.events(session_id)],
        "recommendations": store.recommendations(session_id),
        "actions": store.actions(session_id),
        "comparison": None,
    }
    recs, _bad = read_recommendations(report["recommendations"])
    report["applied"] = [o.to_dict() for o in outcomes(recs, store.actions(source_session_id=session_id), session_id)]
    report["headline"] = headline(report)
    if compare_id is not None:
        other = build_report(store, compare_id, grid_g_per_kwh=grid_g_per_kwh)
        report["comparison"] = compare_summaries(summary, other["summary"], other["session"])
    if include_samples:
        report["samples"] = {k: {"t_s": ((t - session["start_ns"]) / 1e9).tolist(), "value": v.tolist()}
                             for k, (t, v) in series.items()}
    return report


def _step_dict(s) -> dict:
    return {"step": s.step, "t_start_ns": s.t_start_ns, "t_end_ns": s.t_end_ns, "samples": s.samples,
            "tokens": s.tokens, "energy_j": s.energy_j}


def _delta(a, b):
    if a is None or b is None:
        return {"this": a, "other": b, "delta": None, "delta_pct": None}
    return {"this": a, "other": b, "delta": a - b, "delta_pct": (a - b) / b * 100.0 if b else None}


def compare_summaries(this: dict, other: dict, other_session: dict) -> dict:
    """Deltas this − other for the figures a person compares (None where either is missing)."""
    def get(d, *path):
        for p in path:
            if d is None:
                return None
            d = d.get(p)
        return d

    return {
        "other_session": {"id": other_session["id"], "name": other_session["name"]},
        "duration_s": _delta(this.get("duration_s"), other.get("duration_s")),
        "energy_j": _delta(this.get("energy_j"), other.get("energy_j")),
        "target_energy_j": _delta(get(this, "target", "energy_j"), get(other, "target", "energy_j")),
        "target_mean_power_w": _delta(get(this, "target", "mean_power_w"), get(other, "target", "mean_power_w")),
        "energy_per_step_j": _delta(get(this, "steps", "energy_per_step_j"), get(other, "steps", "energy_per_step_j")),
        "energy_per_sample_j": _delta(get(this, "steps", "energy_per_sample_j"),
                                      get(other, "steps", "energy_per_sample_j")),
        "energy_per_token_j": _delta(get(this, "steps", "energy_per_token_j"),
                                     get(other, "steps", "energy_per_token_j")),
    }
