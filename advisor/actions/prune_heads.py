"""``prune-heads:FRACTION``: remove the least important attention heads, physically.

The same number of heads, ``round(FRACTION × heads)``, goes from every layer, chosen per layer by
‖W_v,h‖·‖W_o,h‖ (see :meth:`AttentionSite.head_scores`). The q/k/v and output projections lose the
matching rows/columns, so the matrices really are smaller and dense kernels do less work.

transformers 5.x removed ``prune_heads`` and no config field can express fewer heads of the same
size, so the saved folder records which heads each layer kept and the loader rebuilds that shape
("structure" replay) before loading the weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wattlens.advisor.actions._arch import (
    SUPPORTED_ATTENTION,
    AttentionSite,
    attention_sites,
    count_to_remove,
)
from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def attention_param_count(sites: list[AttentionSite]) -> int:
    """Elements in the head-shaped tensors: q/k/v weights and biases and the output weight."""
    total = 0
    for site in sites:
        produce, out = site.projections()
        for layer in produce:
            total += layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        total += out.weight.numel()
    return total


class PruneHeads(Action):
    name = "prune-heads"
    takes_fraction = True
    description = (
        "Remove a fraction of attention heads in every layer (lowest ‖V‖·‖O‖ first); the "
        "projection matrices become smaller, so dense kernels do less work."
    )
    replay = "structure"

    @property
    def claim(self) -> str:
        return (
            f"round({self.fraction:g} × heads) heads leave every layer and the attention "
            "projections shrink by that share"
        )

    def _sites(self, model: nn.Module) -> list[AttentionSite]:
        sites = attention_sites(model)
        if not sites:
            raise BadInputError(
                f"prune-heads found no attention blocks it knows in {type(model).__name__}",
                hint=f"it supports {SUPPORTED_ATTENTION}",
            )
        return sites

    def check_expressible(self, model: nn.Module) -> None:
        raise BadInputError(
            "prune-heads keeps different heads in each layer and shrinks the projections, which no "
            "transformers config can express: plain from_pretrained could not load the result",
            hint="on a Hugging Face folder use prune-mlp:F or prune-layers:F (config fields); "
            "prune-heads works on a torch module file",
        )

    def check_applicable(self, model: nn.Module) -> None:
        for site in self._sites(model):
            count_to_remove(self.fraction, site.num_heads, f"heads in {site.path}")

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        kept: list[list[int]] = []
        heads_before: list[int] = []
        for site in self._sites(model):
            h = site.num_heads
            k = count_to_remove(self.fraction, h, f"heads in {site.path}")
            scores = site.head_scores()
            keep = sorted(scores.argsort(descending=True)[: h - k].tolist())
            site.keep_heads(keep)
            kept.append(keep)
            heads_before.append(h)
        return {
            "kept_heads": kept,
            "heads_before": heads_before,
            "removed_per_layer": [b - len(k) for b, k in zip(heads_before, kept, strict=True)],
            "score": "norm(W_v,h) * norm(W_o,h)",
        }

    def restore(self, model: nn.Module, details: dict[str, Any]) -> None:
        sites = self._sites(model)
        if len(sites) != len(details["kept_heads"]):
            raise BadInputError(
                f"the saved head layout has {len(details['kept_heads'])} layers, the model {len(sites)}",
                hint="the folder's config.json and manifest disagree; re-run optimize",
            )
        for site, keep in zip(sites, details["kept_heads"], strict=True):
            site.keep_heads(list(keep))

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        sb, sa = attention_sites(before), attention_sites(after)
        heads_b = sum(s.num_heads for s in sb)
        heads_a = sum(s.num_heads for s in sa)
        removed = sum(round(self.fraction * s.num_heads) for s in sb)
        pb, pa = attention_param_count(sb), attention_param_count(sa)
        expected_share = removed / heads_b if heads_b else 0.0
        observed_share = 1 - pa / pb if pb else 0.0
        return ClaimCheck(
            claim=self.claim,
            holds=heads_b - heads_a == removed and abs(observed_share - expected_share) < 1e-9,
            observed=(
                f"{heads_b - heads_a} of {heads_b} heads removed; attention projection "
                f"parameters {pb} → {pa} ({observed_share:.1%} fewer)"
            ),
            values={
                "heads_before": heads_b,
                "heads_after": heads_a,
                "attention_params_before": pb,
                "attention_params_after": pa,
                "expected_share": expected_share,
                "observed_share": observed_share,
            },
        )
