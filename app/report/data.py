"""The report's content as one plain dict, built from the store: every format renders this.

The JSON format *is* this dict (schema: docs/report-schema.json). Numbers come from the stored
series; each energy figure carries its method; missing figures are None with a reason.
"""

from __future__ import annotations

import time

from wattlens.app.present import outcomes, read_recommendations
from wattlens.app.report.headline import headline
from wattlens.app.report.paused import native_pauses
from wattlens.profiler.figures import fill_step_energy
from wattlens.profiler.rank_layers import per_rank_layers
from wattlens.profiler.ranks import session_ranks
from wattlens.profiler.summary import summarize, target_energy_between, top_layers

REPORT_SCHEMA_VERSION = 1


def _paused(events, start_ns: int) -> dict:
    spans, note = native_pauses((e.data for e in events), start_ns)
    return {"spans_s": [list(x) for x in spans], "note": note}


def build_report(store, session_id: int, *, compare_id: int | None = None,
                 grid_g_per_kwh: float | None = None, include_samples: bool = False) -> dict:
    session = store.session(session_id)
    series = store.series_data(session_id)
    steps = fill_step_energy(store.steps(session_id), target_energy_between(series))
    layers = store.layer_costs(session_id)
    events = store.events(session_id)
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
        "steps": [_step_dict(s) for s in steps],
        "ranks": session_ranks(steps, events, series),
        "rank_layers": per_rank_layers(layers, events=events),
        "layers": top_layers(layers, n=None),
        "events": [{"t_s": (e.t_ns - session["start_ns"]) / 1e9, "kind": e.kind, "message": e.message}
                   for e in events],
        "paused": _paused(events, session["start_ns"]),
        "recommendations": store.recommendations(session_id),
        "actions": store.actions(session_id),
        "comparison": None,
    }
    recs, _bad = read_recommendations(report["recommendations"])
    report["applied"] = [o.to_dict() for o in outcomes(recs, store.actions(source_session_id=session_id), session_id)]
    report["headline"] = headline(report)
    if compare_id is not None:
        other = build_report(store, compare_id, grid_g_per_kwh=grid_g_per_kwh)
        report["comparison"] = compare_summaries(summary, other["summary"], other["session"], this_session=session)
    if include_samples:
        report["samples"] = {k: {"t_s": ((t - session["start_ns"]) / 1e9).tolist(), "value": v.tolist()}
                             for k, (t, v) in series.items()}
    return report


def _step_dict(s) -> dict:
    return {"step": s.step, "t_start_ns": s.t_start_ns, "t_end_ns": s.t_end_ns, "samples": s.samples,
            "tokens": s.tokens, "energy_j": s.energy_j, "rank": s.rank}


def _delta(a, b):
    if a is None or b is None:
        return {"this": a, "other": b, "delta": None, "delta_pct": None}
    return {"this": a, "other": b, "delta": a - b, "delta_pct": (a - b) / b * 100.0 if b else None}


DURATION_DIFF = 0.1  # durations further apart than this (relative) make totals incomparable
#: ends after which a session's figures cover only part of what it set out to measure
UNFINISHED = ("running", "interrupted", "failed", "partial")


def _batch(summary: dict) -> float | None:
    st = summary.get("steps") or {}
    return st["samples"] / st["count"] if st.get("samples") and st.get("count") else None


def _per_second(summary: dict, key: str = "energy_j") -> float | None:
    e, d = summary.get(key), summary.get("duration_s")
    return e / d if e is not None and d else None


def compare_warnings(this: dict, other: dict, this_session: dict | None, other_session: dict) -> list[str]:
    """Why two sessions' figures may not be comparable: other kinds of session, an end other than
    a normal one, other command lines, batch sizes, durations."""
    out = []
    a_kind, b_kind = (this_session or {}).get("kind"), other_session.get("kind")
    if a_kind and b_kind and a_kind != b_kind:
        out.append(f"the sessions were recorded differently ({a_kind} vs {b_kind})"
                   + (": an optimize session measures the optimizer's own process (loading, copying and "
                      "measuring two models), not the model's workload" if "optimize" in (a_kind, b_kind) else
                      ": run mode reports steps and exact layer times, attach mode samples them"))
    for which, sess in (("this", this_session or {}), ("the other", other_session)):
        if sess.get("status") in UNFINISHED:
            out.append(f"{which} session ended as {sess['status']}"
                       + (f" ({sess['end_reason']})" if sess.get("end_reason") else "")
                       + ": its figures cover only what was recorded before")
    a_cmd = " ".join(str(x) for x in (this_session or {}).get("target_cmdline") or [])
    b_cmd = " ".join(str(x) for x in other_session.get("target_cmdline") or [])
    if a_cmd and b_cmd and a_cmd != b_cmd:
        out.append(f"the command lines differ: '{a_cmd[:120]}' vs '{b_cmd[:120]}'")
    a_b, b_b = _batch(this), _batch(other)
    if a_b is not None and b_b is not None and abs(a_b - b_b) > 1e-9:
        out.append(f"the batch sizes differ: {a_b:.3g} vs {b_b:.3g} samples per step")
    a_d, b_d = this.get("duration_s"), other.get("duration_s")
    if a_d and b_d and abs(a_d - b_d) / max(a_d, b_d) > DURATION_DIFF:
        out.append(f"the durations differ ({a_d:.3g} s vs {b_d:.3g} s): total energies are not comparable — "
                   "compare energy per sample, per token or per second")
    return out


def compare_basis(this: dict, other: dict) -> str:
    """The normalised figure both sessions have: per sample, else per token, else per second."""
    def both(key):
        return all((d.get("steps") or {}).get(key) is not None for d in (this, other))

    if both("energy_per_sample_j"):
        return "energy per sample"
    if both("energy_per_token_j"):
        return "energy per token"
    has = [bool((d.get("steps") or {}).get("energy_per_sample_j") is not None
                or (d.get("steps") or {}).get("energy_per_token_j") is not None) for d in (this, other)]
    if any(has):  # it read "neither session reported ..." where one had
        whose = "this session" if has[0] else "the other session"
        return f"energy per second (mean power): only {whose} reported samples or tokens"
    return "energy per second (mean power): neither session reported samples or tokens"


def compare_summaries(this: dict, other: dict, other_session: dict, *, this_session: dict | None = None) -> dict:
    """Deltas this − other for the figures a person compares (None where either is missing), the
    normalised figure to read first (``basis``) and ``warnings`` when the runs differ."""
    def get(d, *path):
        for p in path:
            if d is None:
                return None
            d = d.get(p)
        return d

    return {
        "other_session": {"id": other_session["id"], "name": other_session["name"]},
        "basis": compare_basis(this, other),
        "warnings": compare_warnings(this, other, this_session, other_session),
        "duration_s": _delta(this.get("duration_s"), other.get("duration_s")),
        "energy_j": _delta(this.get("energy_j"), other.get("energy_j")),
        "mean_power_w": _delta(_per_second(this), _per_second(other)),
        "target_energy_j": _delta(get(this, "target", "energy_j"), get(other, "target", "energy_j")),
        "target_mean_power_w": _delta(get(this, "target", "mean_power_w"), get(other, "target", "mean_power_w")),
        "energy_per_step_j": _delta(get(this, "steps", "energy_per_step_j"), get(other, "steps", "energy_per_step_j")),
        "energy_per_sample_j": _delta(get(this, "steps", "energy_per_sample_j"),
                                      get(other, "steps", "energy_per_sample_j")),
        "energy_per_token_j": _delta(get(this, "steps", "energy_per_token_j"),
                                     get(other, "steps", "energy_per_token_j")),
    }
