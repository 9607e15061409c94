"""The per-rank section of a torch.distributed job's report, as plain rows every renderer shares
(``report["ranks"]``, built by :func:`wattlens.profiler.ranks.per_rank`): ``show``, Markdown,
HTML/PDF and the app's rank table all print these rows, so they show the same figures."""

from __future__ import annotations

HEADER = ("Rank", "Steps", "Mean step", "Collective share", "Busy / step", "Energy", "Energy method")


def _num(value, unit: str, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}g} {unit}".strip()


def rank_rows(ranks: dict | None) -> list[tuple[str, ...]]:
    """One row per rank (see :data:`HEADER`), then "other" (launcher, start-up: what no rank was
    charged) and the job total; empty when the session is not a multi-rank job."""
    if not ranks:
        return []
    rows = [(str(r["rank"]), str(r["steps"]), _num(r["mean_step_s"], "ms", 1e3),
             "n/a" if r["collective_share"] is None else f"{r['collective_share'] * 100:.0f} %",
             _num(r["busy_s_per_step"], "ms", 1e3), _num(r.get("energy_j"), "J"),
             _method(r))
            for r in ranks["ranks"]]
    if ranks.get("other_energy_j") is not None:
        rows.append(("other", "", "", "", "", _num(ranks["other_energy_j"], "J"),
                     "launcher, start-up and processes outside the ranks"))
    rows.append(("job", str(max(r["steps"] for r in ranks["ranks"])), "", "", "",
                 _num(ranks.get("job_energy_j"), "J"), "the target's attributed energy"))
    return rows


def _method(r: dict) -> str:
    text = r.get("energy_method") or "n/a"
    if r.get("energy_reasons"):
        text += " (" + "; ".join(r["energy_reasons"]) + ")"
    return text


def job_lines(ranks: dict | None) -> list[str]:
    """The job figures under the table: world size, straggler, waiting energy, method."""
    if not ranks:
        return []
    out = [f"World size {ranks['world_size'] if ranks['world_size'] is not None else 'n/a'}, "
           f"{ranks['ranks_seen']} rank(s) reported steps."]
    if ranks.get("energy_fallback_reason"):
        out.append(f"Rank energy is an equal split: {ranks['energy_fallback_reason']}.")
    if ranks["straggler_spread"] is not None:
        out.append(f"Straggler spread {ranks['straggler_spread']:.2f} (slowest busy step time ÷ median): "
                   f"rank {ranks['slowest_rank']} is the slowest.")
    if ranks.get("waiting_energy_j_per_step") is not None:
        out.append(f"Other ranks wait about {ranks['waiting_energy_j_per_step']:.3g} J per step for it "
                   "(estimated).")
    timed = ranks.get("collectives_timed_ranks") or []
    if not ranks.get("collectives_timed") and timed:
        out.append(f"torch.distributed collectives were timed on rank{'s' if len(timed) > 1 else ''} "
                   f"{', '.join(map(str, timed))} only, so no straggler can be named: the other ranks' "
                   "wait for the rest is inside their step time.")
    elif not ranks.get("collectives_timed"):
        out.append("No torch.distributed collective was timed (DDP's own gradient all-reduce runs in "
                   "C++ and is not timed), so no straggler can be named: each rank's wait for the others "
                   "is inside its step time.")
    out.append(f"Method: {ranks['method']}.")
    return out
