"""Much of each step spent in torch.distributed collectives → synchronise less often: gradient
accumulation (DDP's ``no_sync()`` for all but the last micro-batch), larger DDP buckets, fewer
per-step logging collectives. Advice only: no automatic action changes a training loop.

The share used is the *smallest* over the ranks: a rank that waits for a straggler shows that
wait as collective time too, and the least-waiting rank is closest to the pure communication
cost. Only collectives called through the Python API are timed (agent/dist.py); DDP's gradient
all-reduce runs in its C++ reducer and stays inside the backward time.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, rule_of_thumb
from wattlens.advisor.rules._common import ev, pct

RULE = "collective-share"
NEEDS = "a torch.distributed job under `wattlens run` whose ranks spend time in timed collectives"

SHARE_MIN = 0.15  # of each step, on the rank that waits least
SOURCE = "agent collective timing per rank (torch.distributed Python calls)"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    job = f.ranks
    if not job or not job.get("collectives_timed"):
        return []
    shares = [(r["collective_share"], r) for r in job["ranks"] if r["collective_share"] is not None]
    if len(shares) < 2:
        return []
    share, least = min(shares, key=lambda x: x[0])
    if share < SHARE_MIN:
        return []
    evidence = [ev(f"share of rank {r['rank']}'s step in collectives", s, "fraction", SOURCE)
                for s, r in shares]
    ops = sorted(least["collective_s_by_op"].items(), key=lambda kv: -kv[1])
    evidence += [ev(f"rank {least['rank']}: time in {op}", t, "s (whole run)", SOURCE) for op, t in ops[:3]]
    # accumulating k micro-batches per synchronisation cuts communication per sample by 1 - 1/k:
    # k = 2 → half of the share, k = 4 → three quarters; energy falls by less than time, because
    # hardware waiting on the network draws less than busy hardware
    saving = rule_of_thumb(share * 0.5, share * 0.75,
                           f"{pct(share)} of each step in collectives on the least-waiting rank; "
                           "synchronising every 2-4 micro-batches removes 1/2-3/4 of that time",
                           basis="energy per sample")
    return [Recommendation(
        rule=RULE, title="Synchronise ranks less often: gradient accumulation, larger DDP buckets",
        rationale=(f"Every rank spends at least {pct(share)} of each step in torch.distributed "
                   f"collectives (rank {least['rank']}, the one that waits least). While ranks "
                   "communicate their devices mostly idle but still draw power. Accumulate gradients "
                   "over k micro-batches (wrap all but the last backward in `ddp.no_sync()`), raise "
                   "DDP's `bucket_cap_mb` so fewer, larger all-reduces run, and all-reduce logged "
                   "metrics every N steps instead of every step."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="low",
        risk=Risk("medium", "gradient accumulation changes the effective batch size: scale the "
                  "learning rate or the micro-batch so training converges as before"),
        action=None, command=None,
        notes=("advice only: wattlens does not change your training loop; re-profile after the change",
               "DDP's own gradient all-reduce runs in C++ and is not in the timed share, so the real "
               "communication share can be larger"))]
