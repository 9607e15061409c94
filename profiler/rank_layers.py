"""Per-rank layer figures of a multi-process job, from its stored layer rows (pure functions).

Layer rows carry the rank of the process they came from: ``wattlens attach`` to a launcher samples
each rank process with its own py-spy (:mod:`wattlens.profiler.stacks.follow`), ``wattlens run``
gets them from each rank's agent. Per rank: the windows and seconds covered, the layer energy (the
sum of its rows' self energies, which is the rank's energy over its windows) and its costliest
nodes. The job's layer energy is the sum over ranks: each rank's rows hold only its own share of
the target's energy, so the sum counts the job once (see ``method``). The job's per-class table is
the report's ``layers`` (every rank's rows together).

A costliest node's ``name`` is what the views print: for an agent instance row, its path with its
module's class from the rank's agent (``agent-hello`` events' model tables), by the agent's own
naming rule (:func:`wattlens.profiler.agent.naming.display_name`: ``Sequential.0 (Linear)``, not a
bare ``0``); without those events, or for a class path, None (the views fall back to the path).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from wattlens.profiler.agent.naming import display_name
from wattlens.profiler.records import EventRecord, LayerCost
from wattlens.profiler.summary import top_layers

METHODS = {
    "stack-sampling": "py-spy stack sampling of each rank process; a rank's window energy is the "
                      "target's attributed energy over the window × that process's share of the "
                      "tree's CPU time (estimate; the launcher's own share is in no rank)",
    "agent-timing": "agent timing in each rank; a rank's window energy is that rank's own energy "
                    "over the window (its CPU time and GPU device share, profiler/rank_energy.py), "
                    "else the target's ÷ the ranks on the host (labelled equal-share fallback)",
}


def module_classes(events: Iterable[EventRecord]) -> dict[int, dict[str, str]]:
    """rank → {module path → class} of the models its agent reported (``agent-hello`` events; a
    later report of the same rank adds to the earlier ones)."""
    out: dict[int, dict[str, str]] = {}
    for e in events:
        rank = e.data.get("rank") if e.kind == "agent-hello" else None
        if not isinstance(rank, int):
            continue
        classes = out.setdefault(rank, {})
        for model in e.data.get("models") or []:
            if not isinstance(model, dict):
                continue
            if isinstance(model.get("prefix"), str) and isinstance(model.get("class"), str):
                classes[model["prefix"]] = model["class"]
            for m in model.get("modules") or []:
                if isinstance(m, dict) and isinstance(m.get("path"), str) and isinstance(m.get("class"), str):
                    classes[m["path"]] = m["class"]
    return out


def per_rank_layers(layers: Sequence[LayerCost], top_n: int = 3, *,
                    events: Iterable[EventRecord] = ()) -> dict | None:
    """The per-rank layer table and the job's total, or None when no layer row carries a rank.
    ``events``: the session's, for the module classes that name the agent's instance rows."""
    classes = module_classes(events)
    by_rank: dict[int, list[LayerCost]] = {}
    for lc in layers:
        if lc.rank is not None:
            by_rank.setdefault(lc.rank, []).append(lc)
    if not by_rank:
        return None
    ranks = []
    for rank, rows in sorted(by_rank.items()):
        windows = {(lc.window_start_ns, lc.window_end_ns) for lc in rows}
        energies = [lc.self_energy_j for lc in rows if lc.self_energy_j is not None]
        ranks.append({
            "rank": rank,
            "windows": len(windows),
            "covered_s": sum(t1 - t0 for t0, t1 in windows) / 1e9,
            "energy_j": sum(energies) if energies else None,
            "energy_reason": None if energies else "no window of this rank has a measured energy",
            "top": [{"path": a["path"], "name": _name(a, classes.get(rank)), "phase": a["phase"],
                     "self_energy_j": a["self_energy_j"], "self_share": a["self_share"]}
                    for a in top_layers(rows, n=None) if a["granularity"] != "bucket"][:top_n],
        })
    known = [r["energy_j"] for r in ranks if r["energy_j"] is not None]
    methods = sorted({lc.method for rows in by_rank.values() for lc in rows})
    return {
        "ranks_seen": len(ranks),
        "ranks": ranks,
        "job_energy_j": sum(known) if known else None,
        "job_energy_note": None if len(known) == len(ranks) else
        f"{len(ranks) - len(known)} rank(s) without measured energy are not in the sum",
        "method": "; ".join(METHODS.get(m, m) for m in methods),
    }


def _name(row: dict, classes: dict[str, str] | None) -> str | None:
    """An instance row's name with its class (see the module doc); None where it cannot be had."""
    if row["granularity"] != "instance" or not classes or not row["path"]:
        return None
    return display_name(row["path"], classes)
