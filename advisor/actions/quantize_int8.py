"""Quantization through torchao — the one backend, offline (``wattlens optimize``) and live
(``wattlens run --apply``, see :mod:`wattlens.profiler.agent.live`).

torch 2.13 deprecates eager ``torch.ao.quantization.quantize_dynamic`` in favour of torchao's
``quantize_``; wattlens uses torchao only, so one action name means one backend and one set of
numbers. Each variant is a torchao config (``ao_config``) applied to every ``nn.Linear``:

* ``quantize-int8`` — int8 weights, activations quantized per token at run time
  (``Int8DynamicActivationInt8WeightConfig``); CPU and CUDA;
* ``quantize-int8-weight-only`` — int8 weights, float activations (``Int8WeightOnlyConfig``);
  CPU and CUDA;
* ``quantize-int4`` and ``quantize-float8`` (their own files) — CUDA only, refused elsewhere with
  the reason.

A Hugging Face folder is saved through transformers' torchao integration (``TorchAoConfig`` in
config.json, the weights stored quantized), so plain ``from_pretrained`` reloads it; that
integration quantizes ``nn.Linear`` only and keeps the output head in float, and wattlens does the
same in process so the verified model is the shipped one. GPT-2's ``Conv1D`` is not a Linear:
for a torch module file it is first swapped for the equivalent ``nn.Linear`` (weight
transposed); a GPT-2 *folder* cannot be quantized in a form plain transformers loads, so it is
refused before any work (see :meth:`TorchaoQuantization.check_expressible`).
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import torch
from torch import nn

from wattlens.advisor.actions._arch import is_conv1d
from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def torchao_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torchao")
    except Exception:  # noqa: BLE001
        return None


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


def is_quantized_weight(weight: Any) -> bool:
    """A torchao tensor subclass (Int8Tensor, ...) rather than a plain tensor or Parameter."""
    return type(weight) not in (torch.Tensor, nn.Parameter)


def kept_float_names(model: nn.Module) -> set[str]:
    """Modules quantization leaves in float: the output head (as transformers' integration does)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name for name, m in model.named_modules() if head is not None and m is head}


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear or is_conv1d(m)]


class TorchaoQuantization(Action):
    """Shared behaviour of the torchao variants; subclasses name the config and where it runs."""

    replay = "on-load"
    must_be_last = True
    quantizes: ClassVar[bool] = True
    #: weight dtype the torchao config expects on input
    input_dtype: ClassVar[torch.dtype] = torch.float32

    def ao_config(self) -> Any:
        raise NotImplementedError

    def device_refusal(self, device: torch.device) -> str | None:
        """Why this variant cannot run on ``device`` (None when it can)."""
        if device.type in ("cpu", "cuda"):
            return None
        return f"torchao has {self.name} kernels for CPU and CUDA only, not {device.type}"

    @property
    def claim(self) -> str:
        return f"every Linear (and Conv1D) layer except the output head holds {self.name[9:]} torchao weights"

    def check_expressible(self, model: nn.Module) -> None:
        """Refuse what transformers' torchao integration cannot save and reload as verified."""
        convs = sum(1 for m in model.modules() if is_conv1d(m))
        if convs:
            raise BadInputError(
                f"{self.name} cannot be saved for plain transformers here: its torchao integration "
                f"quantizes nn.Linear only and this model keeps {convs} GPT-2 Conv1D layers in float",
                hint="use bf16, prune-mlp:F or prune-layers:F on this folder, or quantize a torch "
                "module file of the model (wattlens turns Conv1D into Linear there)",
            )

    def check_applicable(self, model: nn.Module) -> None:
        if not torchao_available():
            raise BadInputError(f"{self.name} needs torchao, which is not installed",
                                hint="pip install torchao (wattlens pins a version that works with its torch)")
        devices = {p.device for p in model.parameters()}
        for device in devices:
            reason = self.device_refusal(device)
            if reason:
                raise BadInputError(f"{self.name} is refused on {device}: {reason}",
                                    hint="quantize-int8 and quantize-int8-weight-only run on CPU and CUDA")
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes - {self.input_dtype}:
            raise BadInputError(
                f"{self.name} needs {str(self.input_dtype)[6:]} weights, found "
                + ", ".join(sorted(str(d)[6:] for d in dtypes)),
                hint=f"apply {self.name} instead of bf16, not after it",
            )
        if not set(_linear_names(model)) - kept_float_names(model):
            raise BadInputError("the model has no Linear or Conv1D layers to quantize",
                                hint="quantization only helps models made of linear layers")

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        from torchao.quantization import quantize_

        keep = kept_float_names(model)
        converted = conv1d_to_linear(model)
        config = self.ao_config()
        quantize_(model, config, filter_fn=lambda m, fqn: type(m) is nn.Linear and fqn not in keep)
        return {
            "backend": f"torchao {torchao_version()} quantize_({type(config).__name__})",
            "torchao_config": type(config).__name__,
            "conv1d_converted": converted,
            "kept_float": sorted(keep),
            "linear_quantized": sum(1 for m in model.modules()
                                    if type(m) is nn.Linear and is_quantized_weight(m.weight)),
        }

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        keep = kept_float_names(before)
        expected = len([n for n in _linear_names(before) if n not in keep])
        linear = [(n, m) for n, m in after.named_modules() if type(m) is nn.Linear or is_conv1d(m)]
        quantized = sum(1 for _, m in linear if is_quantized_weight(m.weight))
        left_float = [n for n, m in linear if not is_quantized_weight(m.weight) and n not in keep]
        return ClaimCheck(
            claim=self.claim,
            holds=quantized == expected and not left_float,
            observed=(f"{quantized} of {expected} linear layers quantized, {len(left_float)} left in "
                      f"float (output head kept in float: {', '.join(sorted(keep)) or 'none'})"),
            values={"expected": expected, "quantized": quantized, "left_float": len(left_float)},
        )


class QuantizeInt8(TorchaoQuantization):
    name = "quantize-int8"
    description = (
        "int8 weights and per-token dynamically quantized int8 activations (torchao "
        "Int8DynamicActivationInt8WeightConfig) for every Linear/Conv1D but the output head. Cuts "
        "their weight memory about 4x; speed and energy depend on the int8 kernels, so measure."
    )

    def ao_config(self) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


class QuantizeInt8WeightOnly(TorchaoQuantization):
    name = "quantize-int8-weight-only"
    description = (
        "int8 weights, float activations (torchao Int8WeightOnlyConfig): 4x smaller linear weights; "
        "helps memory-bound runs (small batches); the A/B run says whether it saves energy."
    )

    @property
    def claim(self) -> str:
        return "every Linear (and Conv1D) layer except the output head holds int8 weight-only torchao weights"

    def ao_config(self) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(set_inductor_config=False)
