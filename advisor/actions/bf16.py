"""``bf16``: cast every floating-point weight and buffer to bfloat16.

Halves weight memory. Whether it saves energy depends on the hardware: GPUs from Ampere on and
CPUs with AVX512-BF16 or AMX have native bf16 matrix units; elsewhere torch emulates it and it can
be slower than float32. We do not guess: the A/B run measures it. ``details`` records what the
CPU reports so the result can be read in context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def cpu_native_bf16() -> bool | None:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16; None when it cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _floating(model: nn.Module) -> list[torch.Tensor]:
    tensors = list(model.parameters()) + list(model.buffers())
    return [t for t in tensors if t.is_floating_point()]


class Bf16(Action):
    name = "bf16"
    description = (
        "Cast weights and buffers to bfloat16. Halves weight memory; faster and cheaper only on "
        "hardware with native bf16 (Ampere+ GPUs, AVX512-BF16/AMX CPUs) — the A/B run decides."
    )
    replay = "dtype"

    @property
    def claim(self) -> str:
        return "every floating-point parameter and buffer is bfloat16"

    def check_applicable(self, model: nn.Module) -> None:
        if not _floating(model):
            raise BadInputError(
                "the model has no floating-point weights to cast", hint="bf16 does not apply"
            )

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        model.to(torch.bfloat16)
        device = next(model.parameters()).device
        return {
            "dtype": "bfloat16",
            "device": device.type,
            "cpu_native_bf16": cpu_native_bf16() if device.type == "cpu" else None,
        }

    def restore(self, model: nn.Module, details: dict[str, Any]) -> None:
        model.to(torch.bfloat16)

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        tensors = _floating(after)
        not_bf16 = sum(1 for t in tensors if t.dtype != torch.bfloat16)
        return ClaimCheck(
            claim=self.claim,
            holds=not_bf16 == 0 and bool(tensors),
            observed=f"{len(tensors) - not_bf16} of {len(tensors)} floating tensors are bfloat16",
            values={"floating_tensors": len(tensors), "not_bf16": not_bf16},
        )
