"""fp32, Linear-heavy inference on a CPU → dynamic int8 quantization of the Linear layers.

Gated on what decides whether int8 pays on a CPU: instructions for int8 dot products (VNNI,
AMX-INT8, ARM dot product; without them int8 kernels are often no faster than fp32) and layer
sizes (on small matrices the per-call quantize/dequantize of activations outweighs the cheaper
multiply, so small shapes can be *slower*). Training and non-fp32 models are out of scope.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, optimize_command, rule_of_thumb
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import ev, fit_confidence, layer_source, pct, top_layer_evidence

RULE = "quantize-int8"
ACTION = "quantize-int8"
NEEDS = ("inference on the CPU (no backward), Linear/Conv1D layers taking ≥ 40 % of the model's time, "
         "fp32 or unknown dtype, and a CPU with AVX2 or better")

LINEAR_SHARE_MIN = 0.40
#: Median Linear weight below this many elements (256 × 256) → int8 is likely not faster.
SMALL_LINEAR_PARAMS = 256 * 256
#: Rules of thumb: speed-up of the Linear layers with dynamic int8 (fbgemm/onednn/qnnpack).
SPEEDUP_WITH_INT8_DOT = (1.3, 2.5)
SPEEDUP_WITHOUT = (0.8, 1.5)


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if f.cpu_inference is not True or f.is_training is not False:
        return []
    if f.dtype not in (None, "float32"):
        return []
    if f.linear_share_of_model is None or f.linear_share_of_model < LINEAR_SHARE_MIN:
        return []
    flags = set(f.cpu.flags) if f.cpu and f.cpu.flags is not None else None
    if flags is not None and not (flags & {"avx2", "avx512f", "asimd"}) and not f.cpu.int8_dot_product:
        return []  # no vector int8 kernels worth having on this CPU
    if f.linear_params_median is not None and f.linear_params_median < SMALL_LINEAR_PARAMS:
        return []  # small shapes: quantizing activations per call costs more than it saves

    src = layer_source(f.layer_method)
    evidence = [
        ev("Linear/Conv1D share of the model's time", f.linear_share_of_model, "fraction", src),
        ev("training or inference", "inference", "", f.training_evidence or src),
        *top_layer_evidence(f),
    ]
    notes: list[str] = []
    if f.dtype is None:
        notes.append("dtype not reported: assumed fp32 (PyTorch's default)")
    else:
        evidence.append(ev("model dtype", f.dtype, "", "agent model report"))
    if f.linear_params_median is not None:
        evidence.append(ev("median Linear weight size", f.linear_params_median, "parameters",
                           f.linear_params_source or src))
    else:
        notes.append("layer shapes unknown (stack sampling sees classes, not shapes): int8 can be slower "
                     "than fp32 on small matrices — the A/B run will show it")
    fast = f.cpu.int8_dot_product if f.cpu else None
    if fast is not None:
        evidence.append(ev("CPU int8 dot-product instructions (VNNI/AMX/dotprod)", "yes" if fast else "no",
                           "", f.cpu.flags_source or "CPU flags"))
    else:
        notes.append("CPU flags unknown (session recorded on another host): int8 speed cannot be judged")
    if f.cpu and f.cpu.model_name:
        evidence.append(ev("CPU", f.cpu.model_name, "", "CPU source"))
    if f.cpu and f.cpu.quantized_engines is not None:
        evidence.append(ev("torch quantized engines", ",".join(f.cpu.quantized_engines), "",
                           "torch.backends.quantized.supported_engines"))

    reg = predict_action_saving(f.ab_history, ACTION, params=f.model_params, flops=f.flops_per_forward)
    share = f.linear_share if f.linear_share is not None else f.linear_share_of_model
    if reg.ok:
        saving = reg.to_predicted_saving()
        confidence = fit_confidence(reg.fit, reg.fit.loo_mae / max(abs(reg.saving_fraction), 0.05))
    else:
        lo, hi = SPEEDUP_WITH_INT8_DOT if fast else SPEEDUP_WITHOUT
        why = ("dynamic-int8 Linear speed-ups of " f"{lo}–{hi}× on CPUs "
               + ("with int8 dot-product instructions" if fast else "without VNNI/AMX (can be slower)")
               + f", applied to the Linear share of all sampled time ({pct(share)}), energy ∝ time")
        saving = rule_of_thumb(share * (1 - 1 / lo), share * (1 - 1 / hi), why)
        confidence = "low"
        notes.append(f"regression: {reg.reason}")
    # two different shares, each named once and read from the stored features once (issue 11: one
    # card said "77 %" and then "74 %" for what read as the same figure)
    of_all = (f" ({pct(share)} of all sampled time, the share a saving applies to)"
              if share is not None and f.linear_share is not None and pct(share) != pct(f.linear_share_of_model) else "")
    if of_all:
        evidence.insert(1, ev("Linear/Conv1D share of all sampled time", share, "fraction", src))
    rationale = (f"The model spends {pct(f.linear_share_of_model)} of its time in Linear layers{of_all}, running "
                 "inference on the CPU. Dynamic int8 stores those weights as 8-bit integers and multiplies "
                 "with integer kernels, which is faster and moves 4× fewer weight bytes"
                 + (" on this CPU's int8 dot-product instructions" if fast else "")
                 + ". Embeddings, norms and attention arithmetic stay in float.")
    return [Recommendation(
        rule=RULE, title="Quantize the Linear layers to int8 (dynamic)", rationale=rationale,
        evidence=tuple(evidence), predicted_saving=saving, confidence=confidence,
        risk=Risk("medium", "int8 rounds each weight to one of 256 levels per channel: outputs shift a "
                  "little; `wattlens optimize` reports top-1 agreement / KL — use --max-quality-loss"),
        action=ACTION, command=optimize_command(ACTION), notes=tuple(notes))]
