"""Per-rank figures of a torch.distributed job, from its stored steps (pure functions).

Every step the agent reports carries the rank that ran it (see :mod:`wattlens.profiler.agent.dist`).
The agent also times the torch.distributed collectives called from Python (``collectives``
events); each call is charged to the rank's step whose span holds its start.

Per rank: steps, mean step time, mean time in collectives per step and its share of the step,
step energy. For the job, the straggler spread: the slowest rank's mean *busy* step time (step
minus collectives) ÷ the median of the ranks' busy times. In a synchronous job every rank's step
takes as long as the slowest one's, because the others wait for it inside collectives, so the
step time alone cannot show a straggler; the busy time can (1.0: no straggler).

A rank's energy is its own process's (:mod:`wattlens.profiler.rank_energy`: the target's CPU
energy by the rank's CPU time, the GPU energy of the device it uses by its per-process share),
stored as the series ``rank/<r>/energy_j``; its steps get that series' energy over their span
(agentlink). ``rank/other/energy_j`` holds what no rank was charged (launcher, start-up), so the
ranks plus "other" add up to the job's attributed energy. A session without those series (older,
or ranks whose processes were not followed) falls back to an equal split, labelled so: step
energy = the target's energy over the step ÷ ranks on the host, rank total = job ÷ ranks. The
energy ranks spend waiting is an estimate: their collective time × their mean power (step energy
÷ step time).

:func:`per_rank` is the one function every surface (``show``, reports, the app's rank table, the
advisor's features) reads.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable, Mapping, Sequence

from wattlens.profiler import rank_energy
from wattlens.profiler.records import EventRecord, StepRecord

NO_SERIES_REASON = ("no per-rank energy series in this session (recorded before per-rank attribution, "
                    "or the ranks' processes were not followed)")


def session_ranks(steps: Sequence[StepRecord], events: Iterable[EventRecord], series: Mapping) -> dict | None:
    """:func:`per_rank` of a stored session, its steps' energy filled in as the report fills it
    (``figures.fill_step_energy``): what ``show``, the reports, the app and the advisor all read."""
    from wattlens.profiler.figures import fill_step_energy
    from wattlens.profiler.summary import target_energy_between

    return per_rank(fill_step_energy(steps, target_energy_between(series)), events, series)


def rank_steps(steps: Sequence[StepRecord]) -> dict[int, list[StepRecord]]:
    """rank → its steps, for steps that carry a rank (empty for a single-process run)."""
    out: dict[int, list[StepRecord]] = {}
    for s in steps:
        if s.rank is not None:
            out.setdefault(s.rank, []).append(s)
    return out


def collective_calls(events: Iterable[EventRecord]) -> dict[int, list[tuple[str, int, int]]]:
    """rank → its timed collective calls (op, t0_ns, t1_ns), from ``collectives`` events."""
    out: dict[int, list[tuple[str, int, int]]] = {}
    for e in events:
        rank = e.data.get("rank") if e.kind == "collectives" else None
        if isinstance(rank, int):
            out.setdefault(rank, []).extend((op, int(t0), int(t1)) for op, t0, t1 in e.data.get("calls", []))
    return out


def step_collective_s(rows: Sequence[StepRecord], calls: Sequence[tuple[str, int, int]]) -> list[float]:
    """Seconds in collectives per step (a call counts in the step whose span holds its start)."""
    starts = [s.t_start_ns for s in rows]
    per_step = [0.0] * len(rows)
    for _op, t0, t1 in calls:
        i = bisect.bisect_right(starts, t0) - 1
        if 0 <= i < len(rows) and t0 < rows[i].t_end_ns:
            per_step[i] += (t1 - t0) / 1e9
    return per_step


def per_rank(steps: Sequence[StepRecord], events: Iterable[EventRecord] = (),
             series: Mapping | None = None) -> dict | None:
    """The per-rank table and job figures, or None when no step carries a rank. ``series``: the
    session's series (key → (t, values)) for each rank's energy and the job's total."""
    by_rank = rank_steps(steps)
    if not by_rank:
        return None
    events = list(events)
    calls = collective_calls(events)
    devices = rank_devices(events)
    ranks = []
    for rank, rows in sorted(by_rank.items()):
        rows = sorted(rows, key=lambda s: s.t_start_ns)
        durations = [(s.t_end_ns - s.t_start_ns) / 1e9 for s in rows]
        energies = [s.energy_j for s in rows if s.energy_j is not None]
        coll = step_collective_s(rows, calls.get(rank, []))
        mean_step_s, mean_coll_s = statistics.fmean(durations), statistics.fmean(coll)
        ops: dict[str, float] = {}
        for op, t0, t1 in calls.get(rank, []):
            ops[op] = ops.get(op, 0.0) + (t1 - t0) / 1e9
        ranks.append({
            "rank": rank,
            "local_rank": rows[0].local_rank,
            "device": devices.get(rank),
            "steps": len(rows),
            "mean_step_s": mean_step_s,
            "collective_s_per_step": mean_coll_s,
            "collective_share": mean_coll_s / mean_step_s if mean_step_s > 0 else None,
            "busy_s_per_step": max(0.0, mean_step_s - mean_coll_s),
            "collective_s_by_op": ops,
            "energy_per_step_j": statistics.fmean(energies) if energies else None,
            "energy_per_step_reason": None if energies else "no step of this rank has a measured energy",
        })
    world = max((s.world_size for s in steps if s.world_size is not None), default=None)
    energy = rank_totals(ranks, events, series or {})
    # without timed collectives a rank's wait is inside its step (a synchronous job's ranks all
    # end their steps together in the untimed all-reduce): no rank can be named the slowest. So
    # with some ranks untimed: such a rank's busy time holds its wait, and it would read slowest
    timed_ranks = sorted(r for r, c in calls.items() if c and r in by_rank)
    all_timed = bool(timed_ranks) and len(timed_ranks) == len(ranks)
    spread, slowest, median_s = straggler(ranks) if all_timed else (None, None, None)
    return {
        "world_size": world,
        "ranks_seen": len(ranks),
        "ranks": ranks,
        "collectives_timed": all_timed,  # on every rank that reported steps
        "collectives_timed_ranks": timed_ranks,
        "straggler_spread": spread,
        "slowest_rank": slowest,
        "median_busy_s": median_s,
        "waiting_energy_j_per_step": _waiting_energy(ranks, slowest),
        **energy,
        "method": ("agent step timing and torch.distributed collective timing per rank; energy: "
                   f"{energy['energy_method']}; waiting energy estimated as the other ranks' collective "
                   "time × their mean power"),
    }


def _last(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    return float(s[1][-1]) if s is not None and len(s[1]) else None


def rank_totals(ranks: list[dict], events: Sequence[EventRecord], series: Mapping) -> dict:
    """Each rank's whole-session energy (into its row: ``energy_j``, ``energy_method``,
    ``energy_reasons``) and the job's: total, the "other" part, the method in words."""
    job_j = _last(series, "target/energy_j")
    methods: dict[int, list[str]] = {}
    reasons: dict[int, list[str]] = {}
    for e in events:
        if e.kind == "rank-energy" and isinstance(e.data.get("rank"), int):
            methods.setdefault(e.data["rank"], []).append(e.data.get("method"))
            if e.data.get("reason"):
                reasons.setdefault(e.data["rank"], []).append(e.data["reason"])
    own = {r["rank"]: _last(series, rank_energy.series_key(r["rank"])) for r in ranks}
    if all(v is not None for v in own.values()):
        for r in ranks:
            r["energy_j"] = own[r["rank"]]
            r["energy_method"] = " + ".join(dict.fromkeys(m for m in methods.get(r["rank"], []) if m)) or None
            r["energy_reasons"] = list(dict.fromkeys(reasons.get(r["rank"], [])))
        return {"job_energy_j": job_j, "other_energy_j": _last(series, rank_energy.series_key(rank_energy.OTHER)),
                "energy_method": rank_energy.METHOD, "energy_fallback_reason": None}
    for r in ranks:
        r["energy_j"] = None if job_j is None else job_j / len(ranks)
        r["energy_method"] = rank_energy.EQUAL_METHOD
        r["energy_reasons"] = [NO_SERIES_REASON]
    # the launcher's part is inside the equal shares: "other" is not separated (None, not 0 J)
    return {"job_energy_j": job_j, "other_energy_j": None,
            "energy_method": rank_energy.EQUAL_METHOD, "energy_fallback_reason": NO_SERIES_REASON}


def rank_devices(events: Iterable[EventRecord]) -> dict[int, str]:
    """rank → the device its main model is on ("cuda:1", "cpu"), from the agents' hellos."""
    out: dict[int, str] = {}
    for e in events:
        if e.kind == "agent-hello" and isinstance(e.data.get("rank"), int) and isinstance(e.data.get("device"), str):
            out[e.data["rank"]] = e.data["device"]
    return out


def straggler(ranks: Sequence[dict]) -> tuple[float | None, int | None, float | None]:
    """(slowest busy time ÷ median busy time, the slowest rank, the median s); None with < 2 ranks."""
    timed = [r for r in ranks if r["busy_s_per_step"] > 0]
    if len(timed) < 2:
        return None, None, None
    median_s = statistics.median(r["busy_s_per_step"] for r in timed)
    slow = max(timed, key=lambda r: r["busy_s_per_step"])
    return slow["busy_s_per_step"] / median_s, slow["rank"], median_s


def _waiting_energy(ranks: Sequence[dict], slowest: int | None) -> float | None:
    """Joules per step the ranks other than the slowest spend in collectives (an estimate)."""
    if slowest is None:
        return None
    others = [r for r in ranks if r["rank"] != slowest]
    if any(r["energy_per_step_j"] is None or r["mean_step_s"] <= 0 for r in others):
        return None
    return sum(r["collective_s_per_step"] * r["energy_per_step_j"] / r["mean_step_s"] for r in others)
