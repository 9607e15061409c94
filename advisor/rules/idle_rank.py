"""A rank that is busy for far less of each step than the others and spends most of its step
waiting in collectives (an unbalanced shard, a rank given less work): it draws power while idle.
Names the rank and the energy it spends waiting.

Evidence, from :mod:`wattlens.profiler.ranks`: each rank's busy time per step (step minus timed
collectives) and collective share. The mirror of ``straggler``: that rule names the slow rank the
others wait for; this one names the rank that waits, and what its waiting costs. Advice only.
"""

from __future__ import annotations

import statistics

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, rule_of_thumb
from wattlens.advisor.rules._common import ev, pct
from wattlens.advisor.rules._ranks import wait_power_w

RULE = "idle-rank"
NEEDS = ("a torch.distributed job with ≥ 2 ranks under `wattlens run` whose collectives are timed, "
         "with one rank busy for far less of each step than the others")

BUSY_RATIO_MAX = 0.5  # its busy time ≤ half the median busy time of the other ranks
WAIT_SHARE_MIN = 0.5  # and at least half of its step in collectives
SOURCE = "agent step and collective timing per rank"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    job = f.ranks
    if not job or not job.get("collectives_timed") or len(job["ranks"]) < 2:
        return []
    out = []
    for r in job["ranks"]:
        others = [o["busy_s_per_step"] for o in job["ranks"] if o["rank"] != r["rank"]]
        median_other = statistics.median(others)
        share = r["collective_share"]
        if share is None or median_other <= 0 or share < WAIT_SHARE_MIN:
            continue
        ratio = r["busy_s_per_step"] / median_other
        if ratio > BUSY_RATIO_MAX:
            continue
        out.append(_advice(f, job, r, ratio, median_other))
    return out


def _advice(f: SessionFeatures, job: dict, r: dict, ratio: float, median_other: float) -> Recommendation:
    rank, wait_s = r["rank"], r["collective_s_per_step"]
    power_w, power_src = wait_power_w(f, r)
    evidence = [ev(f"rank {rank} busy time per step", r["busy_s_per_step"], "s", SOURCE),
                ev("median busy time per step of the other ranks", median_other, "s", SOURCE),
                ev(f"rank {rank} busy time ÷ the others' median", ratio, "ratio", SOURCE),
                ev(f"rank {rank} share of its step in collectives", r["collective_share"], "fraction", SOURCE)]
    step_j = [x["energy_per_step_j"] for x in job["ranks"]]
    if power_w is not None and all(e is not None for e in step_j):
        idle_j = wait_s * power_w
        run_j = idle_j * r["steps"]
        frac = min(1.0, idle_j / sum(step_j))
        evidence += [ev(f"rank {rank} power while waiting", power_w, "W", power_src),
                     ev(f"rank {rank} energy spent waiting, per step (estimated)", idle_j, "J",
                        f"time in collectives × power while waiting ({power_src})"),
                     ev(f"rank {rank} energy spent waiting over the run (estimated)", run_j, "J",
                        f"per step × {r['steps']} steps")]
        saving = rule_of_thumb(frac * 0.5, frac,
                               f"rank {rank}'s waiting energy is {pct(frac)} of a step's energy (all ranks); "
                               "balancing the work removes up to all of it", basis="energy per step")
        energy_text = (f" While it waits it still draws about {power_w:.3g} W: about {idle_j:.3g} J per step, "
                       f"{run_j:.3g} J over the {r['steps']} steps recorded (estimated).")
    else:
        saving = rule_of_thumb(0.0, min(1.0, r["collective_share"]) / len(job["ranks"]),
                               f"rank {rank} waits {pct(r['collective_share'])} of its step",
                               basis="energy per step")
        energy_text = " No step energy was measured for every rank, so its idle energy is not stated."
    return Recommendation(
        rule=RULE, title=f"Rank {rank} is mostly idle: it waits in collectives for the other ranks",
        rationale=(f"Rank {rank} is busy only {r['busy_s_per_step'] * 1e3:.3g} ms per step, "
                   f"{ratio:.2f}× the other ranks' median ({median_other * 1e3:.3g} ms), and spends "
                   f"{pct(r['collective_share'])} of its step in collectives waiting for them."
                   + energy_text + " Give it its share of the work (equal data shards and per-rank "
                   "batch sizes, work only some ranks do spread over all), or run the job on fewer "
                   "ranks with larger per-rank batches."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="medium",
        risk=Risk("low", "rebalancing shards does not change the model; changing per-rank batch sizes "
                  "changes the effective batch: keep the global batch the same"),
        action=None, command=None,
        notes=("advice only: wattlens does not change your training loop; re-profile after the change",))
