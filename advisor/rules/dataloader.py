"""Time outside the model (data loading, an idle main thread, waiting on the GPU) → DataLoader
and pipeline settings. Advice only: no automatic action changes a user's input pipeline.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, rule_of_thumb
from wattlens.advisor.rules._common import ev, layer_source, pct

RULE = "input-pipeline"
NEEDS = "stack-sampled or agent time in the 'data loading', 'idle' or 'gpu-wait' buckets"

DATA_SHARE_MIN = 0.10
IDLE_SHARE_MIN = 0.15
GPU_WAIT_SHARE_MIN = 0.15


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if not f.outside_shares:
        return []
    data = f.outside_shares.get("data loading", 0.0)
    idle = f.outside_shares.get("idle", 0.0)
    wait = f.outside_shares.get("gpu-wait", 0.0)
    gpu_low = f.gpu_util_mean_pct is not None and f.gpu_util_mean_pct < 60
    hits = {k: v for k, v in (("data loading", data), ("idle", idle), ("gpu-wait", wait))
            if (k == "data loading" and v >= DATA_SHARE_MIN) or (k == "idle" and v >= IDLE_SHARE_MIN)
            or (k == "gpu-wait" and v >= GPU_WAIT_SHARE_MIN and gpu_low)}
    if not hits:
        return []
    src = layer_source(f.layer_method)
    evidence = [ev(f"share of sampled time in '{k}'", v, "fraction", src) for k, v in hits.items()]
    if f.gpu_util_mean_pct is not None:
        evidence.append(ev("GPU utilisation, mean", f.gpu_util_mean_pct, "%", "util_pct"))
    cores = f.cpu.logical_cores if f.cpu else None
    workers = max(1, min(8, (cores or 2) - 1))
    steps = []
    if "data loading" in hits or "idle" in hits:
        steps.append(f"DataLoader(num_workers={workers}, persistent_workers=True, prefetch_factor=4) so "
                     "batches are prepared while the model computes")
        if f.gpus:
            steps.append("pin_memory=True and .to(device, non_blocking=True) so host→GPU copies overlap")
        steps.append("move per-sample Python work (tokenising, decoding, augmentation) out of the loop or "
                     "precompute it")
    if "gpu-wait" in hits:
        steps.append("avoid per-step .item()/.cpu()/print of GPU tensors: each forces the CPU to wait "
                     "for the GPU; log every N steps instead")
    waiting = sum(hits.values())
    saving = rule_of_thumb(0.0, waiting,
                           f"{pct(waiting)} of sampled time spent outside the model; overlapping it with "
                           "compute shortens each step by at most that share, and energy per sample falls "
                           "by less, because waiting hardware draws less than busy hardware")
    return [Recommendation(
        rule=RULE, title="Keep the model fed: tune the input pipeline",
        rationale=(f"{pct(waiting)} of the sampled time was spent outside the model ("
                   + ", ".join(f"{k} {pct(v)}" for k, v in hits.items())
                   + "). During that time the hardware idles but still draws power, charged to every "
                     "sample. Suggested: " + "; ".join(steps) + "."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="low",
        risk=Risk("low", "does not change the model or its outputs; more workers use more host memory"),
        action=None, command=None,
        notes=("advice only: wattlens does not change your input pipeline; re-profile after the change "
               "to see the effect",))]
