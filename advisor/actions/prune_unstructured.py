"""``prune-unstructured:FRACTION``: zero the smallest-magnitude weights of every linear layer.

Uses ``torch.nn.utils.prune.l1_unstructured`` per weight tensor, then ``prune.remove`` so the zeros
are plain values in an ordinary weight (no mask, no hook, nothing to re-apply on load).

This buys no speed and no energy on dense kernels: the tensors keep their shape and every zero is
still multiplied. It is a size option — zeros compress well (sparse storage, zip) — and a first
step before structured pruning. Weights shared with another module (a tied output head) are left
dense, because pruning one side would silently change the other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wattlens.advisor.actions._arch import is_conv1d
from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv1D layers whose weight is not shared with any other module."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and uses.get(id(m.weight), 0) == 1
    ]


def zero_fraction(layers: list[tuple[str, nn.Module]]) -> tuple[int, int]:
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    return zeros, total


class PruneUnstructured(Action):
    name = "prune-unstructured"
    takes_fraction = True
    description = (
        "Zero the smallest weights of each linear layer (magnitude pruning, made permanent). A "
        "size/compressibility option only: it buys NO speed or energy on dense kernels, which "
        "still multiply every zero."
    )
    replay = "weights"

    @property
    def claim(self) -> str:
        return f"at least {self.fraction:g} of each pruned linear weight is zero"

    def check_applicable(self, model: nn.Module) -> None:
        if not 0 < self.fraction < 1:
            raise BadInputError(
                f"prune-unstructured fraction must be between 0 and 1, got {self.fraction:g}",
                hint="for example prune-unstructured:0.5",
            )
        if not prunable_layers(model):
            raise BadInputError(
                "the model has no unshared Linear or Conv1D weights to prune",
                hint="prune-unstructured only applies to linear layers",
            )

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        from torch.nn.utils import prune

        layers = prunable_layers(model)
        for _, m in layers:
            prune.l1_unstructured(m, name="weight", amount=self.fraction)
            prune.remove(m, "weight")
        zeros, total = zero_fraction(layers)
        return {
            "layers": [name for name, _ in layers],
            "zero_fraction": zeros / total,
            "note": "no speed-up on dense kernels",
        }

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        names = [name for name, _ in prunable_layers(before)]
        after_layers = [(n, after.get_submodule(n)) for n in names]
        per_layer = []
        for _, m in after_layers:
            n = m.weight.numel()
            per_layer.append(float((m.weight == 0).sum()) / n >= round(self.fraction * n) / n)
        zeros, total = zero_fraction(after_layers)
        shapes_same = all(
            before.get_submodule(n).weight.shape == m.weight.shape for n, m in after_layers
        )
        return ClaimCheck(
            claim=self.claim,
            holds=all(per_layer) and shapes_same,
            observed=(
                f"{zeros / total:.1%} of {total} weights in {len(after_layers)} layers are zero; "
                "shapes unchanged (dense kernels run at the same cost)"
            ),
            values={"zero_fraction": zeros / total, "weights": total, "layers": len(after_layers)},
        )

