"""A stored pruning result lost more quality than the user allows → heal it by distillation.

Reads the optimize results stored for the session (recorded by it, or applied from its advice
with ``--from-session``): a structured pruning result (prune-layers, prune-mlp) of a causal LM
whose measured quality loss exceeded the ``--max-quality-loss`` it ran with — optimize refused
it and wrote nothing. Healing (``--heal-steps N --heal-text FILE``) trains the pruned model
against the original on the user's text, so the recommendation repeats that pruning with
healing. The pruned shapes do not change with healing, so the saving is the one measured A/B on
that result, shown with its interval; whether healing brings the loss under the bound is what
the run measures (held-out KL before/after, refused again if not).

Healing needs text in the model's language, read with the model folder's tokenizer. Without
``wattlens advise ID --heal-text FILE``, or for a model without a tokenizer (a torch module
file; prune-heads exists only there) or that is not a causal LM, the rule says nothing and
:func:`silent_reason` says why.
"""

from __future__ import annotations

from wattlens.advisor.features import HEALABLE_PRUNING, OptimizeOutcome, SessionFeatures
from wattlens.advisor.recommend import (
    MODEL_PLACEHOLDER,
    PredictedSaving,
    Recommendation,
    Risk,
    shell_path,
)
from wattlens.advisor.regression import action_name
from wattlens.advisor.rules._common import ev

RULE = "heal"
NEEDS = ("a stored prune-layers/prune-mlp result of a causal LM whose quality loss exceeded its "
         "--max-quality-loss, and text to heal on: `wattlens advise ID --heal-text FILE`")
#: Steps of a first healing run; a result already healed with N steps gets 2 N.
HEAL_STEPS = 100


def _pruning(o: OptimizeOutcome) -> bool:
    names = [action_name(s) for s in o.spec.split(",") if s.strip()]
    return any(n in HEALABLE_PRUNING for n in names)


def _candidates(f: SessionFeatures) -> list[OptimizeOutcome]:
    return [o for o in f.optimize_results if _pruning(o) and o.exceeds_quality_bound]


def _blocker(o: OptimizeOutcome) -> str | None:
    """Why ``optimize`` would refuse healing this result (None when it would run)."""
    if o.model_kind is None:
        return f"the model of result #{o.action_id} ({o.model_path}) is not on this host"
    if o.model_kind != "hf-folder" or not o.has_tokenizer:
        return (f"result #{o.action_id}'s model has no tokenizer ({o.model_kind.replace('-', ' ')}), "
                "and healing reads text with it")
    if o.fidelity_mode != "next-token":
        return f"result #{o.action_id}'s model is not a causal LM; healing distils next-token logits"
    return None


def silent_reason(f: SessionFeatures) -> str | None:
    """Why the rule said nothing although a pruning result exceeded its bound (None otherwise)."""
    found = _candidates(f)
    if not found:
        return None
    if not f.heal_text:
        o = found[-1]
        return (f"result #{o.action_id} ({o.spec}) lost {o.quality_loss:.4g} > --max-quality-loss "
                f"{o.max_quality_loss:g}; healing needs text in the model's language and wattlens does not "
                "train on random ids: give `wattlens advise ID --heal-text FILE`")
    return "; ".join(b for b in (_blocker(o) for o in found) if b) or None


def _saving(o: OptimizeOutcome) -> PredictedSaving:
    iv = o.saving_interval or (o.saving_fraction, o.saving_fraction)
    lo, hi = min(iv[0], o.saving_fraction), max(iv[1], o.saving_fraction)
    method = (f"measured A/B of optimize result #{o.action_id} ({o.energy_method or 'energy method n/a'}); "
              "healing changes weights, not shapes")
    text = (f"{o.saving_fraction * 100:.1f} % less energy per sample, measured on the pruned model "
            f"(95 % interval {lo * 100:.1f} … {hi * 100:.1f} %); healing keeps the pruned shapes")
    return PredictedSaving(o.saving_fraction, lo, hi, method, text)


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if not f.heal_text:
        return []
    recs = []
    seen: set[str] = set()
    for o in reversed(_candidates(f)):  # the latest result of each spec
        if o.spec in seen or _blocker(o) is not None or o.saving_fraction is None:
            continue
        seen.add(o.spec)
        done = int((o.healing or {}).get("steps") or 0)
        steps = 2 * done if done else HEAL_STEPS
        src = f"optimize result #{o.action_id}"
        evidence = [ev(f"quality loss of {o.spec} ({o.quality_metric})", o.quality_loss, "fraction", src),
                    ev("your --max-quality-loss", o.max_quality_loss, "fraction", src),
                    ev(f"energy saving of {o.spec} (A/B)", o.saving_fraction, "fraction", src)]
        if o.kl_base_candidate is not None:
            evidence.append(ev("KL(original ‖ pruned)", o.kl_base_candidate, "nats per token", src))
        notes = []
        if done:
            h = o.healing or {}
            evidence.append(ev(f"held-out KL after {done} healing steps", h.get("held_out_kl_after"), "nats",
                               f"{src} (before: {h.get('held_out_kl_before')})"))
            notes.append(f"{done} healing steps were not enough; this doubles them")
        notes.append(f"healing trains on the first four fifths of {f.heal_text} and measures the last fifth; "
                     "the result reports the joules healing cost and the samples until they are paid back")
        model = o.model_path or MODEL_PLACEHOLDER
        suffix = o.spec.replace(":", "-").replace(".", "").replace(",", "-")
        command = (f"wattlens optimize {shell_path(model)} --action {o.spec} --heal-steps {steps} "
                   f"--heal-text {shell_path(f.heal_text)} --max-quality-loss {o.max_quality_loss:g} "
                   f"--out {shell_path(f'{model}-{suffix}-healed')}")
        recs.append(Recommendation(
            rule=RULE, title=f"Heal the pruned model ({o.spec}) by distillation, {steps} steps",
            rationale=(f"{o.spec} saved energy but lost {o.quality_loss:.4g} ({o.quality_metric}), more than "
                       f"your --max-quality-loss {o.max_quality_loss:g}, so nothing was written. Healing "
                       "fine-tunes the pruned model to match the original's next-token distributions (KL) "
                       "on your text; it keeps the smaller shapes and their saving."),
            evidence=tuple(evidence), predicted_saving=_saving(o), confidence="medium",
            risk=Risk("medium", "healing may not bring the loss under the bound (the run refuses again and "
                      "writes nothing) and costs training energy, reported with its payback in samples"),
            action=o.spec, command=command, notes=tuple(notes)))
    return recs
