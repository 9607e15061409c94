"""Dynamic int8 would pay and the user gave calibration text → static (calibrated) int8.

Static int8 uses the same int8 matrix kernels as dynamic int8 but measures each Linear's
activation range once, on the user's text, instead of on every call; it is recommended only
where the dynamic rule's gates hold (CPU inference, fp32, Linear-heavy, int8-capable CPU, large
enough layers) *and* ``wattlens advise ID --calibration FILE`` named the text to calibrate on —
random ids would calibrate the scales on inputs the model never serves. The file goes into the
command (``--calibration FILE``), so the scales are measured on it.

The per-layer scales cannot be written into a Hugging Face folder's config.json (torchao refuses
to encode them), so ``optimize`` refuses static int8 on a folder; the command is always the torch
module file path (the two export lines, ``--tokenizer`` naming the folder whose tokenizer reads the
text). Stored A/B results of earlier quantize-int8-static runs train the regression like every
other action's.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, rule_of_thumb, shell_path
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import ev, fit_confidence, model_arg, pct
from wattlens.advisor.rules.quantize_int8 import (
    SPEEDUP_WITH_INT8_DOT,
    SPEEDUP_WITHOUT,
    conv1d_evidence,
    int8_case,
    route,
)

RULE = "quantize-int8-static"
ACTION = "quantize-int8-static"
NEEDS = ("the quantize-int8 rule's conditions, and text to calibrate on: "
         "`wattlens advise ID --calibration FILE` (a sample of what the model serves)")

FOLDER_REFUSAL = ("its per-layer activation scales do not fit in config.json's TorchAoConfig "
                  "(torchao refuses to encode them)")
#: what ``--tokenizer`` names when the session recorded a module file (no folder is known)
TOKENIZER_PLACEHOLDER = "TOKENIZER_DIR"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if not f.calibration_text:
        return []
    case = int8_case(f)
    if case is None:
        return []
    tokenizer = TOKENIZER_PLACEHOLDER if f.model_kind == "torch-module-file" else model_arg(f)
    way = route(f, ACTION, why_folder_refused=FOLDER_REFUSAL,
                extra=f" --tokenizer {shell_path(tokenizer)} --calibration {shell_path(f.calibration_text)}")
    evidence = [*case.evidence, *conv1d_evidence(f), *way.evidence,
                ev("calibration text", f.calibration_text, "", "wattlens advise --calibration")]
    notes = [*way.notes, *case.notes]
    if tokenizer == TOKENIZER_PLACEHOLDER:
        notes.append(f"{TOKENIZER_PLACEHOLDER} = the folder with your model's tokenizer files (a module "
                     "file has none, and the calibration text is read with it)")

    reg = predict_action_saving(f.ab_history, ACTION, params=f.model_params, flops=f.flops_per_forward)
    if reg.ok:
        saving = reg.to_predicted_saving()
        confidence = fit_confidence(reg.fit, reg.fit.loo_mae / max(abs(reg.saving_fraction), 0.05))
    else:
        lo, hi = SPEEDUP_WITH_INT8_DOT if case.fast else SPEEDUP_WITHOUT
        why = (f"the int8 Linear speed-ups of dynamic int8 ({lo}–{hi}× on CPUs "
               + ("with int8 dot-product instructions" if case.fast else "without VNNI/AMX")
               + "; static int8 runs the same int8 kernels without the per-call activation range pass), "
               f"applied to the Linear share of all sampled time ({pct(case.share)}), energy ∝ time")
        saving = rule_of_thumb(case.share * (1 - 1 / lo), case.share * (1 - 1 / hi), why)
        confidence = "low"
        notes.append(f"regression: {reg.reason}")
        dyn = predict_action_saving(f.ab_history, "quantize-int8", params=f.model_params,
                                    flops=f.flops_per_forward)
        if dyn.ok:
            evidence.append(ev("dynamic int8 saving predicted from your A/B results", dyn.saving_fraction,
                               "fraction", dyn.to_predicted_saving().method))
    rationale = (f"The model spends {pct(f.linear_share_of_model)} of its time in Linear layers, running "
                 "inference on the CPU, and you gave text to calibrate on. Static int8 measures each "
                 "layer's activation range once on that text and freezes it, so each call skips the "
                 "range measurement dynamic int8 makes; weights are 8-bit integers either way.")
    return [Recommendation(
        rule=RULE, title="Quantize the Linear layers to int8 (static, calibrated on your text)",
        rationale=rationale, evidence=tuple(evidence), predicted_saving=saving, confidence=confidence,
        risk=Risk("medium", "activations outside the range seen in the calibration text are clipped: "
                  "calibrate on text like what the model serves; `wattlens optimize` reports top-1 "
                  "agreement / KL and the number of calibration samples — use --max-quality-loss"),
        action=ACTION, command=way.command, notes=tuple(notes))]
