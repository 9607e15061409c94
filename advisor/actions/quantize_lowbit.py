"""``quantize-int4`` (int4 weight-only) and ``quantize-float8`` (float8 weights and activations):
torchao variants that only have kernels on some GPUs, so they are refused elsewhere with the reason.

* int4 weight-only uses torchao's CUDA tinygemm kernel with bfloat16 activations: CUDA only (the
  model must already be bf16 there — apply ``bf16`` first is not possible since quantization is
  last, so give a bf16 model);
* float8 dynamic activation + weight needs float8 tensor cores: CUDA compute capability 8.9+
  (Ada, Hopper and newer).
"""

from __future__ import annotations

from typing import Any

import torch

from wattlens.advisor.actions.quantize_int8 import TorchaoQuantization


def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


class QuantizeInt4(TorchaoQuantization):
    name = "quantize-int4"
    input_dtype = torch.bfloat16
    description = ("int4 weight-only (torchao Int4WeightOnlyConfig, group size 128): 8x smaller "
                   "linear weights; CUDA only, bf16 model.")

    def device_refusal(self, device: torch.device) -> str | None:
        if _cuda_capability(device) is None:
            return "torchao's int4 weight-only kernel (tinygemm) runs on CUDA GPUs only"
        return None

    def ao_config(self) -> Any:
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=128, set_inductor_config=False)


class QuantizeFloat8(TorchaoQuantization):
    name = "quantize-float8"
    description = ("float8 weights and dynamically quantized float8 activations (torchao "
                   "Float8DynamicActivationFloat8WeightConfig); CUDA compute capability 8.9+ only.")

    def device_refusal(self, device: torch.device) -> str | None:
        cap = _cuda_capability(device)
        if cap is None:
            return "float8 matrix multiplies need a CUDA GPU with float8 tensor cores"
        if cap < (8, 9):
            return f"float8 needs compute capability 8.9+ (Ada/Hopper), this GPU has {cap[0]}.{cap[1]}"
        return None

    def ao_config(self) -> Any:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        return Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False)
