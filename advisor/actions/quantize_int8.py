"""``quantize-int8``: dynamic int8 quantization of every Linear (and transformers' Conv1D) on CPU.

Weights are stored as int8 with a per-tensor scale; activations are quantized on the fly per
batch. Embeddings, norms and the attention arithmetic stay in float.

Backend, checked against the torch 2.13 docs: ``torch.ao.quantization.quantize_dynamic`` still
works but is deprecated (the docs say to migrate eager-mode quantization to torchao's
``quantize_``, and it emits a ``DeprecationWarning`` when called). We use torchao when it is
installed; otherwise we keep ``torch.ao`` and let its warning through unsilenced, because a user
should know the path they depend on is going away.

Conv1D (GPT-2's transposed linear) is not an ``nn.Linear``, so neither backend would touch it;
it is first swapped for the equivalent ``nn.Linear`` (weight transposed).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from wattlens.advisor.actions._arch import is_conv1d
from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return DynamicQuantizedLinear


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def usable_engines() -> list[str]:
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every Conv1D in ``model`` (our copy) by an equal ``nn.Linear``; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if is_conv1d(m)]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        nx, nf = conv.weight.shape
        linear = nn.Linear(nx, nf, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        setattr(parent, child, linear)
    return len(targets)


def _float_linear_count(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if type(m) is nn.Linear or is_conv1d(m))


def _is_torchao_weight(weight: Any) -> bool:
    return type(weight) not in (torch.Tensor, nn.Parameter)


class QuantizeInt8(Action):
    name = "quantize-int8"
    description = (
        "Dynamic int8 quantization of Linear/Conv1D weights (activations quantized per batch at run "
        "time). CPU only. Cuts the weight memory of those layers about 4x; speed and energy depend "
        "on the CPU's int8 kernels (VNNI/AMX help), so measure."
    )
    replay = "on-load"
    must_be_last = True

    @property
    def claim(self) -> str:
        return "every Linear and Conv1D layer becomes an int8 dynamically quantized Linear"

    def check_applicable(self, model: nn.Module) -> None:
        if not usable_engines():
            raise BadInputError(
                "this CPU build of torch has no quantized engine (torch.backends.quantized."
                "supported_engines is empty)",
                hint="use bf16 or a pruning action instead",
            )
        devices = {p.device.type for p in model.parameters()}
        if devices - {"cpu"}:
            raise BadInputError(
                "quantize-int8 runs on CPU only and the model is on " + ", ".join(sorted(devices)),
                hint="load the model on CPU (dynamic int8 kernels are CPU kernels)",
            )
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes - {torch.float32}:
            raise BadInputError(
                "quantize-int8 needs float32 weights, found " + ", ".join(sorted(map(str, dtypes))),
                hint="apply quantize-int8 instead of bf16, not after it",
            )
        if _float_linear_count(model) == 0:
            raise BadInputError(
                "the model has no Linear or Conv1D layers to quantize",
                hint="quantize-int8 only helps models made of linear layers",
            )

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        converted = conv1d_to_linear(model)
        n_linear = sum(1 for m in model.modules() if type(m) is nn.Linear)
        if torchao_available():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
            backend = "torchao.quantization.quantize_(Int8DynamicActivationInt8WeightConfig)"
        else:
            from torch.ao.quantization import quantize_dynamic

            quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
            backend = "torch.ao.quantization.quantize_dynamic (deprecated in torch 2.13)"
        return {
            "backend": backend,
            "engine": torch.backends.quantized.engine,
            "conv1d_converted": converted,
            "linear_quantized": n_linear,
        }

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        expected = _float_linear_count(before)
        dyn = _dynamic_linear_type()
        quantized = sum(1 for m in after.modules() if isinstance(m, dyn))
        quantized += sum(
            1 for m in after.modules() if type(m) is nn.Linear and _is_torchao_weight(m.weight)
        )
        left_float = sum(
            1
            for m in after.modules()
            if (type(m) is nn.Linear and not _is_torchao_weight(m.weight)) or is_conv1d(m)
        )
        return ClaimCheck(
            claim=self.claim,
            holds=quantized == expected and left_float == 0,
            observed=f"{quantized} of {expected} linear layers quantized, {left_float} left in float",
            values={"expected": expected, "quantized": quantized, "left_float": left_float},
        )
