"""fp32 on a GPU with bf16 tensor cores (NVIDIA Ampere and later) → run the model in bf16.

The GPU generation is read from its name (NVML reports no "has bf16" capability): A100, A10,
A30, A40, H100, H200, L4, L40, RTX 30xx/40xx/50xx, RTX A-series and Ada workstation cards, B100/
B200 … have bf16 tensor cores; V100, T4, P100 and RTX 20xx do not.
"""

from __future__ import annotations

import re

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation, Risk, optimize_command, rule_of_thumb
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import ev, fit_confidence, model_arg, pct

RULE = "bf16"
ACTION = "bf16"
NEEDS = "a GPU of the Ampere generation or later (by name) used by the target, with an fp32 or unknown dtype"

# (pattern on the NVML name, architecture). Older generations first so "RTX A6000" ≠ "A6000 Ada".
_BF16_GPUS: tuple[tuple[str, str], ...] = (
    (r"\b(GB|B)(100|200)\b", "Blackwell"),
    (r"\bRTX\s*50\d0", "Blackwell"),
    (r"\b(GH|H)(100|200|800|20)\b", "Hopper"),
    (r"\bL(4|40S?|20)\b", "Ada Lovelace"),
    (r"\bRTX\s*40\d0", "Ada Lovelace"),
    (r"\bRTX\s*\d{4}\s*Ada", "Ada Lovelace"),
    (r"\bA(2|10G?|16|30|40|100|800)\b", "Ampere"),
    (r"\bRTX\s*A\d{4}", "Ampere"),
    (r"\bRTX\s*30\d0", "Ampere"),
)
_NO_BF16 = re.compile(r"\b(V100|T4|P100|P40|P4|K80|M60|RTX\s*20\d0|TITAN\s*(RTX|V)|Quadro|GTX)\b", re.I)


def bf16_architecture(name: str) -> tuple[bool | None, str | None]:
    """(has bf16 tensor cores, architecture) from an NVML GPU name; (None, None) when unknown."""
    if _NO_BF16.search(name):
        return False, None
    for pattern, arch in _BF16_GPUS:
        if re.search(pattern, name, re.IGNORECASE):
            return True, arch
    return None, None


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if not f.gpus or f.device is not None and not f.device.startswith("cuda"):
        return []
    if f.dtype not in (None, "float32"):
        return []
    capable = [(g, arch) for g in f.gpus for ok, arch in [bf16_architecture(g.name)] if ok]
    if not capable:
        return []
    used = f.gpu_used_by_target is True or any((g.util_mean_pct or 0) > 0 for g, _ in capable)
    if not used:
        return []
    g, arch = capable[0]
    evidence = [ev("GPU", g.name, "", f"{g.source_id} (NVML name)"),
                ev("architecture with bf16 tensor cores", arch, "", "GPU name")]
    if g.util_mean_pct is not None:
        evidence.append(ev("GPU utilisation, mean", g.util_mean_pct, "%", f"{g.source_id}/util_pct"))
    if g.target_energy_j is not None:
        evidence.append(ev("energy attributed to the target on this GPU", g.target_energy_j, "J",
                           f"target/{g.source_id}/energy_j"))
    notes = []
    if f.dtype is None:
        notes.append("dtype not reported: assumed fp32 (PyTorch's default); if the model already runs "
                     "in bf16/fp16 or under autocast, ignore this")
    else:
        evidence.append(ev("model dtype", f.dtype, "", "agent model report"))
    reg = predict_action_saving(f.ab_history, ACTION, params=f.model_params, flops=f.flops_per_forward,
                                model=model_arg(f))
    share = f.model_share if f.model_share is not None else 1.0
    if reg.ok:
        saving = reg.to_predicted_saving()
        confidence = fit_confidence(reg.fit, reg.fit.loo_mae / max(abs(reg.saving_fraction), 0.05))
    else:
        saving = rule_of_thumb(0.10 * share, 0.45 * share,
                               "bf16 tensor-core matmuls running about 2× faster than fp32/TF32 and "
                               "halving weight and activation traffic; savings of 10–45 % of the model's "
                               f"energy, applied to the model's share ({pct(share)}) of sampled time")
        confidence = "low"
        notes.append(f"regression: {reg.reason}")
    training = f.is_training is True
    return [Recommendation(
        rule=RULE, title=f"Run the model in bf16 on the {arch} GPU", rationale=(
            f"{g.name} has bf16 tensor cores, which fp32 models leave unused (or use only through "
            "TF32). bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling, and it "
            "halves the bytes every weight and activation moves."),
        evidence=tuple(evidence), predicted_saving=saving, confidence=confidence,
        risk=Risk("medium", "training: use torch.autocast(dtype=torch.bfloat16) and keep fp32 master "
                  "weights; 8 bits of mantissa can slow convergence") if training else
        Risk("low", "inference: logits shift slightly (8-bit mantissa); `wattlens optimize` reports "
                    "KL / top-1 agreement against the fp32 model"),
        action=ACTION, command=optimize_command(ACTION, model_arg(f)), notes=tuple(notes))]
