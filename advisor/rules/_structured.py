"""Shared body of the structured-pruning rules (attention heads, MLP neurons, whole blocks)."""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, optimize_command, rule_of_thumb
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import (
    ev,
    fit_confidence,
    layer_source,
    model_arg,
    pct,
    top_layer_evidence,
)

DOMINANT_SHARE = 0.40


def structured_pruning(f: SessionFeatures, *, rule: str, action: str, category: str | None, what: str,
                       share_of_model: float | None, share: float | None, other_share: float | None,
                       fraction: float, rationale: str, risk: str, title: str | None = None,
                       extra_evidence: tuple = (), extra_notes: tuple[str, ...] = ()) -> list[Recommendation]:
    if share_of_model is None or share is None or share_of_model < DOMINANT_SHARE:
        return []
    if other_share is not None and other_share > share_of_model:
        return []
    src = layer_source(f.layer_method)
    evidence = [ev(f"{what} share of the model's time", share_of_model, "fraction", src),
                ev(f"{what} share of all sampled time", share, "fraction", src),
                *extra_evidence, *top_layer_evidence(f, category)]
    notes = list(extra_notes)
    if f.gpu_used_by_target and f.layer_method == "stack-sampling":
        notes.append("on a GPU, stack sampling measures CPU-side time (kernel launches), not GPU time: "
                     "run under `wattlens run` for per-layer GPU timing before trusting these shares")
    reg = predict_action_saving(f.ab_history, action, params=f.model_params, flops=f.flops_per_forward,
                                model=model_arg(f))
    if reg.ok:
        saving = reg.to_predicted_saving()
        confidence = fit_confidence(reg.fit, reg.fit.loo_mae / max(abs(reg.saving_fraction), 0.05))
    else:
        lo, hi = 0.6 * fraction, fraction
        saving = rule_of_thumb(share * lo, share * hi,
                               f"removing {pct(fraction)} of the {what} cutting its compute by "
                               f"{pct(lo)}–{pct(hi)} (fixed costs stay), applied to its share "
                               f"({pct(share)}) of sampled time, energy ∝ time")
        confidence = "low"
        notes.append(f"regression: {reg.reason}")
    return [Recommendation(
        rule=rule, title=title or f"Prune {pct(fraction)} of the {what} (structured)", rationale=rationale,
        evidence=tuple(evidence), predicted_saving=saving, confidence=confidence,
        risk=Risk("high", risk), action=action, command=optimize_command(action, model_arg(f)), notes=tuple(notes))]
