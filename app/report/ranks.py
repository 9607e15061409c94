"""The per-rank section of a torch.distributed job's report, as plain rows every renderer shares
(``report["ranks"]``, built by :func:`wattlens.profiler.ranks.per_rank`)."""

from __future__ import annotations

HEADER = ("Rank", "Steps", "Mean step", "In collectives / step", "Collective share", "J/step (est. share)")


def _num(value, unit: str, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}g} {unit}".strip()


def rank_rows(ranks: dict | None) -> list[tuple[str, ...]]:
    """One row per rank (see :data:`HEADER`); empty when the session is not a multi-rank job."""
    if not ranks:
        return []
    return [(str(r["rank"]), str(r["steps"]), _num(r["mean_step_s"], "ms", 1e3),
             _num(r["collective_s_per_step"], "ms", 1e3),
             "n/a" if r["collective_share"] is None else f"{r['collective_share'] * 100:.0f} %",
             _num(r["energy_per_step_j"], "J"))
            for r in ranks["ranks"]]


def job_lines(ranks: dict | None) -> list[str]:
    """The job figures under the table: world size, straggler, waiting energy, method."""
    if not ranks:
        return []
    out = [f"World size {ranks['world_size'] if ranks['world_size'] is not None else 'n/a'}, "
           f"{ranks['ranks_seen']} rank(s) reported steps."]
    if ranks["straggler_spread"] is not None:
        out.append(f"Straggler spread {ranks['straggler_spread']:.2f} (slowest busy step time ÷ median): "
                   f"rank {ranks['slowest_rank']} is the slowest.")
    if ranks.get("waiting_energy_j_per_step") is not None:
        out.append(f"Other ranks wait about {ranks['waiting_energy_j_per_step']:.3g} J per step for it "
                   "(estimated).")
    if not ranks.get("collectives_timed"):
        out.append("No torch.distributed collective was timed (DDP's own gradient all-reduce runs in "
                   "C++ and is not timed).")
    out.append(f"Method: {ranks['method']}.")
    return out
