"""``prune-mlp:FRACTION``: remove the least important MLP neurons, physically, in every layer.

The same count, ``round(FRACTION × width)``, leaves every feed-forward block (so one config value
still describes the model), chosen per layer by input-row norm × output-column norm. The
producing projection(s) lose rows and the reading projection loses the matching columns; the
config's intermediate size is updated so the saved folder reloads with plain
``from_pretrained``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wattlens.advisor.actions._arch import SUPPORTED_MLP, MlpSite, count_to_remove, mlp_sites
from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.profiler.errors import BadInputError


def mlp_param_count(sites: list[MlpSite]) -> int:
    """Elements in the neuron-shaped tensors: producing weights and biases, reading weight."""
    total = 0
    for site in sites:
        for layer in site.up:
            total += layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        total += site.down.weight.numel()
    return total


class PruneMlp(Action):
    name = "prune-mlp"
    takes_fraction = True
    description = (
        "Remove a fraction of MLP neurons, the same count in every layer (lowest norm product "
        "first); both projections shrink and the config's intermediate size follows."
    )
    replay = "config"

    @property
    def claim(self) -> str:
        return (
            f"round({self.fraction:g} × width) neurons leave every MLP and its projections shrink "
            "by that share"
        )

    def _sites(self, model: nn.Module) -> list[MlpSite]:
        sites = mlp_sites(model)
        if not sites:
            raise BadInputError(
                f"prune-mlp found no MLP blocks it knows in {type(model).__name__}",
                hint=f"it supports {SUPPORTED_MLP}",
            )
        widths = {s.width for s in sites}
        if len(widths) != 1:
            raise BadInputError(
                f"the MLP widths differ between layers ({sorted(widths)})",
                hint="prune-mlp keeps one width for all layers; it cannot start from mixed widths",
            )
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, sites[0].config_key):
            raise BadInputError(
                f"prune-mlp needs a transformers config with '{sites[0].config_key}' to save the new width",
                hint="give a Hugging Face model folder",
            )
        return sites

    def check_applicable(self, model: nn.Module) -> None:
        sites = self._sites(model)
        count_to_remove(self.fraction, sites[0].width, "MLP neurons")

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        sites = self._sites(model)
        width = sites[0].width
        k = count_to_remove(self.fraction, width, "MLP neurons")
        for site in sites:
            keep = site.neuron_scores().argsort(descending=True)[: width - k].tolist()
            site.keep_neurons(keep)
        setattr(model.config, sites[0].config_key, width - k)
        return {
            "width_before": width,
            "width_after": width - k,
            "config_key": sites[0].config_key,
            "layers": len(sites),
            "score": "sum(norm(W_in,j)) * norm(W_out,j)",
        }

    def restore(self, model: nn.Module, details: dict[str, Any]) -> None:
        """Shrink a fresh instance's MLPs to the saved width (the weights are loaded next)."""
        sites = self._sites(model)
        if sites[0].width != details["width_before"] or len(sites) != details["layers"]:
            raise BadInputError(f"the model's MLPs ({len(sites)} × {sites[0].width}) are not those {self.spec} "
                                f"was applied to ({details['layers']} × {details['width_before']})",
                                hint="pass an instance of the class that was optimized")
        for site in sites:
            site.keep_neurons(list(range(details["width_after"])))
        setattr(model.config, details["config_key"], details["width_after"])

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        sb, sa = mlp_sites(before), mlp_sites(after)
        width_b = sb[0].width
        k = round(self.fraction * width_b)
        pb, pa = mlp_param_count(sb), mlp_param_count(sa)
        # bias of the reading projection keeps its size, so only the counted tensors shrink by k/width
        expected_share = k / width_b
        observed_share = 1 - pa / pb
        key = sb[0].config_key
        config_width = getattr(after.config, key, None)
        if key == "n_inner" and config_width is None:
            config_width = 4 * after.config.n_embd
        widths_after = {s.width for s in sa}
        return ClaimCheck(
            claim=self.claim,
            holds=(
                widths_after == {width_b - k}
                and config_width == width_b - k
                and abs(observed_share - expected_share) < 1e-9
            ),
            observed=(
                f"MLP width {width_b} → {sorted(widths_after)} in {len(sa)} layers (config "
                f"{key}={config_width}); MLP parameters {pb} → {pa} ({observed_share:.1%} fewer)"
            ),
            values={
                "width_before": width_b,
                "widths_after": sorted(widths_after),
                "mlp_params_before": pb,
                "mlp_params_after": pa,
                "expected_share": expected_share,
                "observed_share": observed_share,
            },
        )
