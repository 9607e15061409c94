"""``wattlens advise ID [--json] [--db URL]``: features → every rule → stored and printed.

The recommendations replace the session's stored ones (``Store.add_recommendations``), so a
report or the GUI shows the latest advice. Rules that said nothing are listed with the evidence
they would need, so silence is never mistaken for "nothing to gain".
"""

from __future__ import annotations

import json
import sys

EXIT_OK = 0


def advise(store, session_id: int) -> dict:
    """Compute, store and return the advice for one session as one JSON-ready document."""
    from wattlens.advisor.features import extract_features
    from wattlens.advisor.rules import evaluate_all

    features = extract_features(store, session_id)
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
    from wattlens.profiler.store import Store

    store = Store(args.db, create=False)
    try:
        doc = advise(store, args.id)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        print_advice(doc)
    return EXIT_OK


def _pct(x) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"


def print_advice(doc: dict, out=None) -> None:
    out = out or sys.stdout
    recs = doc["recommendations"]
    w = lambda text="": print(text, file=out)  # noqa: E731
    w(f"session {doc['session_id']} — {doc.get('session_name')}: "
      f"{len(recs)} recommendation{'s' if len(recs) != 1 else ''}")
    for i, r in enumerate(recs, 1):
        ps = r["predicted_saving"]
        w()
        w(f"{i}. {r['title']}")
        w(f"   why: {r['rationale']}")
        if ps["fraction"] is None:
            w(f"   predicted saving: measure first — {ps['text']}")
            if ps.get("measure_command"):
                w(f"   measure: {ps['measure_command']}")
        else:
            w(f"   predicted saving ({ps['basis']}): {_pct(ps['fraction'])} "
              f"(interval {_pct(ps['low'])} … {_pct(ps['high'])}) — {ps['method']}")
        w(f"   confidence: {r['confidence']}   risk to quality: {r['risk']['level']} — {r['risk']['text']}")
        for e in r["evidence"]:
            value = e["value"]
            if isinstance(value, float):
                value = f"{value:.4g}"
            w(f"   evidence: {e['what']} = {value} {e['unit']}  [{e['source']}]".rstrip())
        for n in r.get("notes") or []:
            w(f"   note: {n}")
        if r.get("action"):
            w(f"   apply: {r['command']}")
        elif r.get("command") and r["command"] != ps.get("measure_command"):
            w(f"   do: {r['command']}")
        else:
            w("   apply: advice only (no automatic action)")
    if doc["silent_rules"]:
        w()
        w("rules with nothing to say (their evidence is absent or below threshold):")
        for s in doc["silent_rules"]:
            w(f"   {s['rule']}: needs {s['needs']}")
    if recs:
        w()
        w("MODEL = your model folder (a saved Hugging Face model or torch module). Predictions are not "
          "promises: `wattlens optimize` measures the real effect A/B.")
