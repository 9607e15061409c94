"""One rank slower than the others (a straggler) → the other ranks wait for it in every
collective, drawing power while idle. Names the rank and the energy the others spend waiting.

Evidence is the straggler spread from :mod:`wattlens.profiler.ranks`: the slowest rank's busy
step time (step minus collectives) ÷ the median busy time. Advice only.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, rule_of_thumb
from wattlens.advisor.rules._common import ev, pct

RULE = "straggler"
NEEDS = ("a torch.distributed job with ≥ 2 ranks under `wattlens run` whose collectives are timed "
         "(the agent times torch.distributed calls)")

SPREAD_MIN = 1.15  # slowest busy time ≥ 15 % above the median
SOURCE = "agent step and collective timing per rank"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    job = f.ranks
    if not job or not job.get("collectives_timed") or job.get("straggler_spread") is None:
        return []
    spread, slow = job["straggler_spread"], job["slowest_rank"]
    if spread < SPREAD_MIN:
        return []
    by_rank = {r["rank"]: r for r in job["ranks"]}
    others = [r for r in job["ranks"] if r["rank"] != slow]
    waiting_s = sum(r["collective_s_per_step"] for r in others)
    evidence = [ev("straggler spread (slowest busy step time / median)", spread, "ratio", SOURCE),
                ev(f"rank {slow} busy time per step", by_rank[slow]["busy_s_per_step"], "s", SOURCE),
                ev("median busy time per step", job["median_busy_s"], "s", SOURCE)]
    evidence += [ev(f"rank {r['rank']} time in collectives per step", r["collective_s_per_step"], "s", SOURCE)
                 for r in others]
    wait_j = job.get("waiting_energy_j_per_step")
    step_j = [r["energy_per_step_j"] for r in job["ranks"] if r["energy_per_step_j"] is not None]
    if wait_j is not None:
        evidence.append(ev("energy the other ranks spend waiting, per step (estimated)", wait_j, "J",
                           job["method"]))
    if wait_j is not None and len(step_j) == len(job["ranks"]):
        frac = min(1.0, wait_j / sum(step_j))  # the ranks' shares add up to the job's step energy
        saving = rule_of_thumb(frac * 0.5, frac,
                               f"the other ranks' waiting energy is {pct(frac)} of a step's energy; "
                               "balancing the slow rank removes up to all of it",
                               basis="energy per step")
        wait_text = (f" The other ranks spend about {wait_j:.3g} J per step waiting for it "
                     "(estimated: their collective time × their mean power).")
    else:
        saving = rule_of_thumb(0.0, min(1.0, spread - 1.0) / spread,
                               f"a straggler spread of {spread:.2f}", basis="energy per step")
        wait_text = " No step energy was measured, so the waiting energy is not stated."
    return [Recommendation(
        rule=RULE, title=f"Rank {slow} is a straggler: the other ranks wait for it",
        rationale=(f"Rank {slow} is busy {spread:.2f}× as long per step as the median rank, and the "
                   f"other ranks spend {waiting_s * 1e3:.0f} ms per step in collectives waiting for it."
                   + wait_text + " Look for work only that rank does (logging, checkpointing, "
                   "evaluation, a slower device or a busier node) and move it off the step or spread "
                   "it across ranks; give it the same data shard size as the others."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="medium",
        risk=Risk("low", "does not change the model; moving rank-0-only work may change when logs "
                  "or checkpoints are written"),
        action=None, command=None,
        notes=("advice only: wattlens does not change your training loop; re-profile after the change",))]
