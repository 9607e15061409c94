"""Every rank spends most of each step waiting in collectives → the same work on fewer ranks,
each with a larger per-rank batch (the same global batch), spends less energy waiting.

Evidence (:mod:`wattlens.profiler.ranks`): per-rank busy time, collective time and step energy;
the rule fires only when even the least-waiting rank spends ≥ ``WAIT_SHARE_MIN`` of its step in
collectives, and the work fits on fewer ranks without a longer step.

Prediction, per step, with N ranks now and M after:
  W = Σ busy time (the work), c = the least-waiting rank's collective time (the communication),
  T = the mean step time, ring(M) = [(M−1)/M] ÷ [(N−1)/N] (ring all-reduce: each rank moves
  2(M−1)/M of the data; nothing on one rank); M = N ÷ 2 (rounded down, at least 1): half the ranks,
  each with twice the per-rank batch — one doubling of the batch is what a device's memory most
  often allows. The step then takes W/M + c·ring(M) … W/M + c (stated beside the prediction).
  E_now = Σ rank step energy (measured). A rank's power while it waits, P_wait: its GPU's
  measured idle power, else its mean power (estimated). E_wait = Σ collective time × P_wait.
  E_after = E_now − E_wait + M × c_after × mean P_wait, with c_after between c (communication per
  rank unchanged: the pessimistic end) and c·ring(M) (the optimistic end).
Assumptions (in the notes): busy energy per unit of work is unchanged by the larger per-rank
batch (it usually falls), the per-rank batch still fits in memory, the global batch is the same.
Advice only.
"""

from __future__ import annotations

import statistics

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import PredictedSaving, Recommendation, Risk
from wattlens.advisor.rules._common import ev, pct
from wattlens.advisor.rules._ranks import wait_power_w

RULE = "fewer-ranks"
NEEDS = ("a torch.distributed job with ≥ 2 ranks under `wattlens run` whose collectives are timed and "
         "whose every rank spends most of its step in collectives, with step energy per rank")

WAIT_SHARE_MIN = 0.5  # of each step, on the rank that waits least
SOURCE = "agent step and collective timing per rank"
ASSUMPTIONS = (
    "assumes the busy energy per unit of work stays the same with a larger per-rank batch (it usually "
    "falls: larger batches use the hardware better)",
    "assumes the larger per-rank batch fits in each device's memory and the global batch stays the same",
    "the interval spans communication per rank unchanged (pessimistic) to ring all-reduce scaling, "
    "2(M−1)/M of the data per rank and none on one rank (optimistic)",
    "half the ranks, each with twice the per-rank batch: the step time can change (its range is stated)",
    "advice only: wattlens does not change your launcher or training loop; re-profile after the change",
)


def _ring(m: int, n: int) -> float:
    """Communication per rank on m ranks ÷ on n (ring all-reduce: 2(k−1)/k of the data per rank)."""
    return ((m - 1) / m) / ((n - 1) / n)


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    job = f.ranks
    if not job or not job.get("collectives_timed") or len(job["ranks"]) < 2:
        return []
    ranks = job["ranks"]
    shares = [r["collective_share"] for r in ranks]
    if any(s is None for s in shares) or min(shares) < WAIT_SHARE_MIN:
        return []
    if any(r["energy_per_step_j"] is None for r in ranks):
        return []
    n = len(ranks)
    work_s = sum(r["busy_s_per_step"] for r in ranks)
    step_s = statistics.fmean(r["mean_step_s"] for r in ranks)
    comm_s = min(r["collective_s_per_step"] for r in ranks)
    if step_s - comm_s <= 0 or work_s <= 0:
        return []
    m = max(1, n // 2)
    powers = [wait_power_w(f, r) for r in ranks]
    if any(p is None for p, _ in powers):
        return []
    e_now = sum(r["energy_per_step_j"] for r in ranks)
    e_wait = sum(r["collective_s_per_step"] * p for r, (p, _) in zip(ranks, powers, strict=True))
    p_wait = statistics.fmean(p for p, _ in powers)
    ring = _ring(m, n)
    step_after = (work_s / m + comm_s * ring, work_s / m + comm_s)
    after_hi = e_now - e_wait + m * comm_s * p_wait  # communication per rank unchanged
    after_lo = e_now - e_wait + m * comm_s * ring * p_wait
    low, high = 1 - after_hi / e_now, 1 - after_lo / e_now
    if high <= 0:
        return []
    mid = (low + high) / 2
    saving = PredictedSaving(
        mid, low, high,
        "model from measured per-rank busy time, collective time, step energy and waiting power",
        (f"about {pct(mid)} less energy per step for the same work (between {pct(low)} and {pct(high)}): "
         f"{e_now:.3g} J per step on {n} ranks now, {after_lo:.3g}–{after_hi:.3g} J on {m} (predicted)"),
        basis="energy per step")
    evidence = [ev(f"share of rank {r['rank']}'s step in collectives", r["collective_share"], "fraction", SOURCE)
                for r in ranks]
    evidence += [ev("work per step (Σ busy time over ranks)", work_s, "s", SOURCE),
                 ev("communication per step (least-waiting rank's collective time)", comm_s, "s", SOURCE),
                 ev("mean step time", step_s, "s", SOURCE),
                 ev(f"energy per step, all {n} ranks", e_now, "J", job.get("energy_method") or "per-rank energy")]
    evidence += [ev(f"rank {r['rank']} power while waiting", p, "W", src)
                 for r, (p, src) in zip(ranks, powers, strict=True)]
    evidence.append(ev("energy per step spent waiting, all ranks (estimated)", e_wait, "J",
                       "Σ collective time × power while waiting"))
    return [Recommendation(
        rule=RULE, title=f"Run the same work on {m} rank{'s' if m > 1 else ''} instead of {n}, with "
                         f"{n / m:.3g}× the per-rank batch",
        rationale=(f"Every rank spends at least {pct(min(shares))} of its step in collectives: the "
                   f"{work_s * 1e3:.3g} ms of work per step is spread over {n} ranks that mostly wait. "
                   f"On {m} rank{'s' if m > 1 else ''} with {n / m:.3g}× the per-rank batch (the same global "
                   f"batch) a step takes {step_after[0] * 1e3:.3g}–{step_after[1] * 1e3:.3g} ms "
                   f"(now {step_s * 1e3:.3g} ms), and "
                   f"{n - m} rank{'s stop' if n - m > 1 else ' stops'} drawing power while waiting. Predicted "
                   f"{after_lo:.3g}–{after_hi:.3g} J per step instead of {e_now:.3g} J."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="low",
        risk=Risk("medium", "a larger per-rank batch needs more device memory; keep the global batch "
                  "(and so the learning rate schedule) the same"),
        action=None, command=None, notes=ASSUMPTIONS)]
