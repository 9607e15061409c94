"""Unstructured magnitude pruning, offered honestly: a *size* option, not an energy one.

Zeroing half the weights leaves every tensor its shape, and dense kernels multiply the zeros as
fast as any other number, so energy per sample does not change; only the compressed file shrinks.
It is offered when the Linear layers hold the model's time (and so most of its weights).
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, optimize_command, rule_of_thumb
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import ev, layer_source, model_arg, pct

RULE = "prune-unstructured"
FRACTION = 0.5
ACTION = f"prune-unstructured:{FRACTION:g}"
NEEDS = "layer costs where Linear/Conv1D layers take ≥ 30 % of the model's time"
LINEAR_SHARE_MIN = 0.30


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if f.linear_share_of_model is None or f.linear_share_of_model < LINEAR_SHARE_MIN:
        return []
    evidence = [ev("Linear/Conv1D share of the model's time", f.linear_share_of_model, "fraction",
                   layer_source(f.layer_method))]
    if f.model_params is not None:
        evidence.append(ev("model parameters", f.model_params, "parameters", "agent model report"))
    notes = []
    reg = predict_action_saving(f.ab_history, ACTION, params=f.model_params, flops=f.flops_per_forward,
                                model=model_arg(f))
    if reg.ok:
        saving = reg.to_predicted_saving()
        notes.append("predicted from your own A/B results of unstructured pruning")
    else:
        saving = rule_of_thumb(-0.02, 0.02, "dense kernels multiplying zeros as fast as any other value "
                               "(tensor shapes do not change); ±2 % is measurement noise",
                               central=0.0)
    return [Recommendation(
        rule=RULE, title=f"Size only: zero {pct(FRACTION)} of the Linear weights (unstructured)",
        rationale=("Unstructured pruning zeroes the smallest weights but keeps every tensor's shape. "
                   "It buys no speed and no energy on dense kernels — use it only to shrink the "
                   "compressed model file. For energy, prefer structured pruning or int8/bf16."),
        evidence=tuple(evidence), predicted_saving=saving, confidence="medium",
        risk=Risk("medium", f"zeroing {pct(FRACTION)} of the weights without fine-tuning changes outputs; "
                  "check the fidelity `wattlens optimize` reports"),
        action=ACTION, command=optimize_command(ACTION, model_arg(f)), notes=tuple(notes))]
