"""``quantize-int8-static``: int8 weights and int8 activations with *calibrated*, fixed scales.

Unlike dynamic int8 (which measures each batch's activation range at run time), the activation
scale of every Linear is measured once on calibration inputs — the largest absolute input value
seen, ÷ 127, per layer — and frozen into the model (torchao
``Int8StaticActivationInt8WeightConfig``, per-tensor activation scale). Calibration inputs are the
user's text (``--calibration FILE``, tokenized with the model folder's tokenizer) or, for a model
without a tokenizer, seeded random inputs — recorded in the result either way, with the number of
calibration samples.

transformers' torchao integration cannot write these per-layer scales into config.json (torchao
0.18's config encoder refuses tensors), so plain ``from_pretrained`` could not reload the model:
a Hugging Face folder is refused before any work (``quantize-int8`` is the closest variant that
is expressible). A torch module file's output records the scales in its manifest and
:func:`wattlens.advisor.load_optimized` applies them again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wattlens.advisor.actions.quantize_int8 import (
    TorchaoQuantization,
    conv1d_to_linear,
    is_quantized_weight,
    kept_float_names,
    torchao_version,
)
from wattlens.profiler.errors import BadInputError


def _static_config(scale: float, ndim: int) -> Any:
    from torchao.quantization import Int8StaticActivationInt8WeightConfig, PerTensor

    # torchao wants the per-tensor scale with as many dimensions as the activation
    return Int8StaticActivationInt8WeightConfig(act_quant_scale=torch.full([1] * ndim, scale),
                                                granularity=PerTensor(), set_inductor_config=False)


def _quantize_with_scales(model: nn.Module, scales: dict[str, list[float]]) -> None:
    """``scales``: fqn → [scale, activation ndim]."""
    from torchao.quantization import quantize_

    for fqn, (scale, ndim) in scales.items():
        quantize_(model, _static_config(float(scale), int(ndim)),
                  filter_fn=lambda m, name, f=fqn: name == f)


class QuantizeInt8Static(TorchaoQuantization):
    name = "quantize-int8-static"
    description = (
        "int8 weights and int8 activations with per-layer scales calibrated once on your data "
        "(torchao Int8StaticActivationInt8WeightConfig); no per-batch range measurement at run time."
    )
    #: set by ``optimize`` to calibration inputs (ModelInputs); None → seeded random inputs
    calibration: Any = None

    @property
    def claim(self) -> str:
        return "every Linear (and Conv1D) layer except the output head holds int8 weights with a calibrated static activation scale"

    def check_expressible(self, model: nn.Module) -> None:
        raise BadInputError(
            "quantize-int8-static cannot be saved for plain transformers: its per-layer activation "
            "scales do not fit in config.json's TorchAoConfig (torchao refuses to encode them)",
            hint="use quantize-int8 (dynamic activations) on a Hugging Face folder; "
            "quantize-int8-static works on a torch module file",
        )

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        from wattlens.advisor.modelio import forward, random_inputs

        keep = kept_float_names(model)
        converted = conv1d_to_linear(model)
        inputs = self.calibration or random_inputs(model, 4, 32, seed=0)
        amax: dict[str, float] = {}
        ndims: dict[str, int] = {}
        handles = []
        for fqn, m in model.named_modules():
            if type(m) is nn.Linear and fqn not in keep:
                def hook(_m, args, _out, f=fqn):
                    amax[f] = max(amax.get(f, 0.0), float(args[0].detach().abs().max()))
                    ndims[f] = args[0].ndim
                handles.append(m.register_forward_hook(hook))
        try:
            forward(model, inputs)
        finally:
            for h in handles:
                h.remove()
        scales = {f: [max(a, 1e-8) / 127.0, ndims[f]] for f, a in amax.items()}
        _quantize_with_scales(model, scales)
        return {
            "backend": f"torchao {torchao_version()} quantize_(Int8StaticActivationInt8WeightConfig)",
            "torchao_config": "Int8StaticActivationInt8WeightConfig",
            "conv1d_converted": converted,
            "kept_float": sorted(keep),
            "act_scales": scales,
            "scale": "[max |input| over the calibration inputs / 127, activation ndim], per layer",
            "calibration": inputs.description,
            "calibration_samples": inputs.n_samples,
            "linear_quantized": sum(1 for m in model.modules()
                                    if type(m) is nn.Linear and is_quantized_weight(m.weight)),
        }

    def replay_into(self, model: nn.Module, details: dict[str, Any]) -> None:
        self.check_applicable(model)
        conv1d_to_linear(model)
        _quantize_with_scales(model, details["act_scales"])
        model.eval()
