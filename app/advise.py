"""``wattlens advise ID [--json] [--db URL]``: features → every rule → stored and printed.

The recommendations replace the session's stored ones (``Store.add_recommendations``), so a
report or the GUI shows the latest advice. Rules that said nothing are listed with the evidence
they would need, so silence is never mistaken for "nothing to gain".
"""

from __future__ import annotations

import json
import sys

EXIT_OK = 0


def advise(store, session_id: int, *, calibration_text: str | None = None,
           heal_text: str | None = None) -> dict:
    """Compute, store and return the advice for one session as one JSON-ready document.

    ``calibration_text`` / ``heal_text``: the user's text files (``--calibration`` /
    ``--heal-text``), which the static-int8 and healing rules put into their commands."""
    from wattlens.advisor.features import extract_features
    from wattlens.advisor.rules import evaluate_all

    features = extract_features(store, session_id, calibration_text=calibration_text, heal_text=heal_text)
    recs, silent = evaluate_all(features)
    docs = [r.to_dict() for r in recs]
    store.add_recommendations(session_id, docs)
    return {
        "session_id": session_id,
        "session_name": features.name,
        "recommendations": docs,
        "silent_rules": silent,
        "features": features.to_dict(),
    }


def advise_command(args) -> int:
    from pathlib import Path

    from wattlens.profiler.errors import BadInputError
    from wattlens.profiler.store import Store

    texts = {}
    for flag, key in (("--calibration", "calibration"), ("--heal-text", "heal_text")):
        value = getattr(args, key, None)
        if value is not None:
            if not Path(value).is_file():
                raise BadInputError(f"{flag} {value}: no such file", hint="give a UTF-8 text file")
            texts[key] = str(Path(value).resolve())
    store = Store(args.db, create=False)
    try:
        doc = advise(store, args.id, calibration_text=texts.get("calibration"), heal_text=texts.get("heal_text"))
    finally:
        store.close()
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        print_advice(doc)
    return EXIT_OK


def print_advice(doc: dict, out=None) -> None:
    from wattlens.app import present

    out = out or sys.stdout
    recs, bad = present.read_recommendations(doc["recommendations"])
    advice, held = present.split_advice(recs)
    w = lambda text="": print(text, file=out)  # noqa: E731
    w(f"session {doc['session_id']} — {doc.get('session_name')}: "
      f"{len(advice)} recommendation{'s' if len(advice) != 1 else ''}"
      + (f", {len(held)} {present.NOT_WORTH_IT}" if held else ""))
    for line in bad:
        w(f"   {line}")
    for i, r in enumerate(advice, 1):
        ps = r.predicted_saving
        w()
        w(f"{i}. {r.title}")
        w(f"   why: {r.rationale}")
        if ps.is_measure_first:
            w(f"   predicted saving: measure first — {ps.text}")
            if ps.measure_command:
                w(f"   measure: {ps.measure_command}")
        else:
            w(f"   predicted: {present.predicted_text(ps)}")
        w(f"   confidence: {r.confidence}   risk to quality: {present.risk_text(r.risk)}")
        for e in r.evidence:
            w(f"   evidence: {present.evidence_text(e)}")
        for n in r.notes:
            w(f"   note: {n}")
        if r.action:
            w(f"   apply: {r.command} --from-session {doc['session_id']}")
        elif r.command and r.command != ps.measure_command:
            w(f"   do: {r.command}")
        else:
            w("   apply: advice only (no automatic action)")
    if held:
        w()
        w(f"{present.NOT_WORTH_IT} (the prediction cannot tell a saving from a cost):")
        for r, reason in held:
            w(f"   {r.title}: {reason}")
    if doc["silent_rules"]:
        w()
        w("rules with nothing to say (their evidence is absent or below threshold):")
        for s in doc["silent_rules"]:
            w(f"   {s['rule']}: needs {s['needs']}")
            if s.get("reason"):
                w(f"      here: {s['reason']}")
    if advice:
        w()
        w("MODEL = your model folder (a saved Hugging Face model or torch module). Predictions are not "
          "promises: `wattlens optimize` measures the real effect A/B.")
