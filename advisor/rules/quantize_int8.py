"""fp32, Linear-heavy inference on a CPU → dynamic int8 quantization of the Linear layers.

Gated on what decides whether int8 pays on a CPU: instructions for int8 dot products (VNNI,
AMX-INT8, ARM dot product; without them int8 kernels are often no faster than fp32) and layer
sizes (on small matrices the per-call quantize/dequantize of activations outweighs the cheaper
multiply, so small shapes can be *slower*). Training and non-fp32 models are out of scope.

The command must be one ``wattlens optimize`` accepts. For a Hugging Face folder, quantization
goes through transformers' torchao integration, which quantizes ``nn.Linear`` only; GPT-2's
``Conv1D`` layers would stay in float, so the folder is refused (actions/quantize_int8.py). When
the sampled Linear-like time includes Conv1D, the card therefore gives the expressible path
instead: the two lines that export the model as a torch module file, and the command on that
file (wattlens turns Conv1D into Linear there; the output loads with
``wattlens.advisor.load_optimized``). Whether the session's model is a folder or a file is known
only where the session recorded the path (optimize sessions); layer classes say Conv1D either way.

Why not a quantized GPT-2 folder (investigated with transformers 5.24 / torchao 0.18): the
torchao quantizer does quantize a Conv1D *weight parameter* when a ``FqnToConfig`` names it
(``param_needs_quantization`` accepts fqn matches of any module), and the checkpoint saves, but
the model cannot run: Conv1D's forward is ``torch.addmm(bias, x, weight)`` and torchao's
``Int8Tensor`` implements no ``aten.addmm`` (NotImplementedError for both int8 weight-only and
int8 dynamic; Conv1D also stores the weight transposed, so the per-row scales would fall on the
input dimension). The only transformers integration that handles Conv1D is bitsandbytes (it
transposes Conv1D weights into its own Linear8bitLt), a second backend against "torchao is the
one quantization backend" and not installed here. So no supported mechanism loads a quantized
GPT-2 Conv1D checkpoint with plain transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import (
    MODEL_PLACEHOLDER,
    Evidence,
    PredictedSaving,
    Recommendation,
    Risk,
    optimize_command,
    rule_of_thumb,
)
from wattlens.advisor.regression import predict_action_saving
from wattlens.advisor.rules._common import (
    ev,
    fit_confidence,
    layer_source,
    model_arg,
    model_source,
    pct,
    top_layer_evidence,
)

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
#: The module file the export lines write (next to the user's MODEL folder).
MODULE_FILE = f"{MODEL_PLACEHOLDER}.pt"


@dataclass(frozen=True)
class Int8Case:
    """What the int8 rules share once the gates hold: evidence, notes, the share a saving applies
    to, whether the CPU has int8 dot products."""

    evidence: list[Evidence]
    notes: list[str]
    share: float | None
    fast: bool | None


@dataclass(frozen=True)
class Route:
    """The command that ``wattlens optimize`` will accept for this model, and why it is that one."""

    command: str
    notes: tuple[str, ...]
    evidence: tuple[Evidence, ...]
    module_file: bool


def int8_case(f: SessionFeatures) -> Int8Case | None:
    """None when int8 does not pay here (the gates of the module docstring); else the evidence."""
    if f.cpu_inference is not True or f.is_training is not False:
        return None
    if f.dtype not in (None, "float32"):
        return None
    if f.linear_share_of_model is None or f.linear_share_of_model < LINEAR_SHARE_MIN:
        return None
    flags = set(f.cpu.flags) if f.cpu and f.cpu.flags is not None else None
    if flags is not None and not (flags & {"avx2", "avx512f", "asimd"}) and not f.cpu.int8_dot_product:
        return None  # no vector int8 kernels worth having on this CPU
    if f.linear_params_median is not None and f.linear_params_median < SMALL_LINEAR_PARAMS:
        return None  # small shapes: quantizing activations per call costs more than it saves

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
    share = f.linear_share if f.linear_share is not None else f.linear_share_of_model
    # two different shares, each named once and read from the stored features once (issue 11: one
    # card said "77 %" and then "74 %" for what read as the same figure)
    if share is not None and f.linear_share is not None and pct(share) != pct(f.linear_share_of_model):
        evidence.insert(1, ev("Linear/Conv1D share of all sampled time", share, "fraction", src))
    return Int8Case(evidence, notes, share, fast)


def export_lines(f: SessionFeatures) -> str:
    """The two lines that save the user's Hugging Face model as a whole torch module file."""
    cls = f.model_class if f.model_class and f.model_class.isidentifier() else None
    if cls is None and f.layer_method == "stack-sampling" and f.top_layers:
        root = f.top_layers[0].path.split("/", 1)[0]
        cls = root if root.isidentifier() else None
    loader = f"transformers.{cls or 'AutoModelForCausalLM'}"
    return (f'`import torch, transformers` and `torch.save({loader}.from_pretrained("{MODEL_PLACEHOLDER}"), '
            f'"{MODULE_FILE}")`')


def route(f: SessionFeatures, action: str, *, why_folder_refused: str | None, extra: str = "") -> Route:
    """The command for ``action``: on the model as the user has it, or — where a Hugging Face
    folder would be refused (``why_folder_refused``) — on a torch module file exported from it.

    A model the session knows to be a module file needs no export; a folder known to be one, or a
    model of unknown kind, gets the export lines (they are harmless for a user who already has
    the module file)."""
    suffix = action.replace(":", "-").replace(".", "")
    if why_folder_refused is None:
        return Route(optimize_command(action, model_arg(f)) + extra, (), (), False)
    if f.model_kind == "torch-module-file":
        return Route(optimize_command(action) + " --trust-pickle" + extra, (), (
            ev("the model as the session recorded it", "torch module file", "", model_source(f)),),
            True)
    known = (ev("the model as the session recorded it", "Hugging Face folder", "", model_source(f)),
             ) if f.model_kind == "hf-folder" else ()
    command = (f"wattlens optimize {MODULE_FILE} --trust-pickle --action {action} "
               f"--out {MODEL_PLACEHOLDER}-{suffix}{extra}")
    notes = (f"`wattlens optimize {MODEL_PLACEHOLDER} --action {action}` on a Hugging Face folder is refused: "
             f"{why_folder_refused}. The expressible path is a torch module file: save it with "
             f"{export_lines(f)}, then run the command below (the output is model.safetensors + a manifest, "
             "loaded with `wattlens.advisor.load_optimized(out, model)`; plain from_pretrained cannot load it)",)
    return Route(command, notes, known, True)


CONV1D_REFUSAL = ("transformers' torchao integration quantizes nn.Linear only and GPT-2's Conv1D layers "
                  "would stay in float (torchao has no int8 kernel for Conv1D's addmm)")


def conv1d_evidence(f: SessionFeatures) -> tuple[Evidence, ...]:
    if not f.conv1d_share_of_linear:
        return ()
    return (ev("Conv1D share of the Linear-like time", f.conv1d_share_of_linear, "fraction",
               layer_source(f.layer_method)),)


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    case = int8_case(f)
    if case is None:
        return []
    evidence, notes, share, fast = case.evidence, case.notes, case.share, case.fast
    conv = bool(f.conv1d_share_of_linear)
    way = route(f, ACTION, why_folder_refused=CONV1D_REFUSAL if conv else None)
    evidence = [*evidence, *conv1d_evidence(f), *way.evidence]

    reg = predict_action_saving(f.ab_history, ACTION, params=f.model_params, flops=f.flops_per_forward,
                                model=MODEL_PLACEHOLDER if way.module_file else model_arg(f))
    saving: PredictedSaving
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
    of_all = (f" ({pct(share)} of all sampled time, the share a saving applies to)"
              if share is not None and f.linear_share is not None and pct(share) != pct(f.linear_share_of_model) else "")
    rationale = (f"The model spends {pct(f.linear_share_of_model)} of its time in Linear layers{of_all}, running "
                 "inference on the CPU. Dynamic int8 stores those weights as 8-bit integers and multiplies "
                 "with integer kernels, which is faster and moves 4× fewer weight bytes"
                 + (" on this CPU's int8 dot-product instructions" if fast else "")
                 + ". Embeddings, norms and attention arithmetic stay in float."
                 + (" Its Linear layers are GPT-2 Conv1D, which only a torch module file can quantize."
                    if conv else ""))
    return [Recommendation(
        rule=RULE, title="Quantize the Linear layers to int8 (dynamic)"
        + (" — as a torch module file" if way.module_file else ""), rationale=rationale,
        evidence=tuple(evidence), predicted_saving=saving, confidence=confidence,
        risk=Risk("medium", "int8 rounds each weight to one of 256 levels per channel: outputs shift a "
                  "little; `wattlens optimize` reports top-1 agreement / KL — use --max-quality-loss"),
        action=ACTION, command=way.command, notes=(*way.notes, *notes))]
