"""The lines a report opens with: what this session cost, and the largest measured saving with
its risk (labelled for what it is: a saving, no change, or the least extra cost when every applied
action costs more). For an optimize session the cost line is its A/B result — the optimizer's own energy
(loading, copying and measuring two models) is not the model's cost, and says so.

Reads only the report dict (data.py) and words figures through fmt and app/present.py.
"""

from __future__ import annotations

from wattlens.app import present
from wattlens.app.report.formats import fmt


def _cost(report: dict) -> str:
    summ = report.get("summary") or {}
    tgt = summ.get("target") or {}
    if tgt.get("energy_j") is not None:
        energy, method, whose = tgt["energy_j"], tgt.get("method") or "n/a", "the target process"
    else:
        energy, method, whose = summ.get("energy_j"), summ.get("energy_method") or "n/a", "the whole machine"
    st = summ.get("steps") or {}
    per = [f"{fmt(st.get(k), 'J')} per {unit}" for k, unit in (("energy_per_sample_j", "sample"),
                                                               ("energy_per_token_j", "token"))
           if st.get(k) is not None]
    session = report.get("session") or {}
    if session.get("duration_s") is not None:
        over = f"over {fmt(session['duration_s'], 's')}"
    else:  # a session still being recorded has no duration yet (it read "over n/a")
        over = "so far (still recording)" if session.get("status") == "running" else "over an unknown time"
    return (f"{fmt(energy, 'J')} for {whose} {over}"
            + (f" ({', '.join(per)})" if per else " (no steps reported: no per-sample figure)")
            + f"; method: {method}")


def _ab_lines(report: dict) -> list[dict]:
    """The A/B results an optimize session recorded (other sessions: none)."""
    if (report.get("session") or {}).get("kind") != "optimize":
        return []
    out = []
    for a in report.get("actions") or []:
        res = a.get("result") or {}
        v = res.get("verification") or {}
        if not v:
            continue
        o = present.outcome(a, None)
        base, cand = v.get("baseline") or {}, v.get("candidate") or {}
        out.append({"label": f"A/B result — {a.get('kind')} ({o.status_text})",
                    "text": f"measured {o.measured}; {fmt(base.get('energy_per_sample_j'), 'J')} → "
                            f"{fmt(cand.get('energy_per_sample_j'), 'J')} per sample; {_prediction(res, o)}"})
    return out


def _prediction(result: dict, o: present.Outcome) -> str:
    """What was predicted before this run (present.outcome words a "measure first" answer as no
    prediction yet: the command it names is the very run this session recorded)."""
    return o.predicted if o.predicted.startswith("no prediction") else f"predicted {o.predicted}"


def _best_label(fraction: float, interval) -> str:
    """The label of the best measured result, saying what it is: a saving, no change or a cost —
    and not a saving where its interval includes no change (the run did not show one)."""
    word = present.direction(fraction)
    if not interval:  # one counted round: a number, not a verified result
        return "Best measured result: unverified (no interval)"
    if word != "no change" and present.includes_no_change(interval):
        return "Best measured result: not shown to differ from no change"
    if word == "saving":
        return "Largest measured saving"
    if word == "no change":
        return "Best measured result: no change"
    return "No measured saving — the least extra energy"


def headline(report: dict) -> list[dict]:
    """[{label, text}]: the cost (or the A/B result), then the largest measured saving available."""
    lines = _ab_lines(report)
    if lines:
        lines.append({"label": "This run's own energy",
                      "text": _cost(report) + " — the optimizer loading, copying and measuring both models, "
                                              "not the model's cost"})
    else:
        lines.append({"label": "This session cost", "text": _cost(report)})
    measured = [o for o in report.get("applied") or [] if o.get("measured_fraction") is not None]
    # a figure with an interval before one without (one round): a one-round +176 % must not hide a sound result
    best = max(measured, key=lambda o: (bool(o.get("measured_interval")), o["measured_fraction"]), default=None)
    if best is not None:
        lines.append({"label": _best_label(best["measured_fraction"], best.get("measured_interval")),
                      "text": f"{best['action']}: {best['measured']}; risk to quality: {best['risk']}"
                              + (f" — {best['flag_text']}" if best.get("flagged") else "")})
    elif not _ab_lines(report):
        recs, _bad = present.read_recommendations(report.get("recommendations") or [])
        advice, _held = present.split_advice(recs)
        predicted = [r for r in advice if not r.predicted_saving.is_measure_first]
        top = max(predicted, key=lambda r: r.predicted_saving.fraction, default=None)
        lines.append({"label": "Largest measured saving",
                      "text": "none measured yet" + (
                          f"; the largest prediction is {top.title}: {present.predicted_text(top.predicted_saving)} "
                          f"(risk to quality: {present.risk_text(top.risk)}) — `wattlens optimize "
                          f"--from-session {(report.get('session') or {}).get('id')}` measures it" if top else "")})
    return lines
