"""Where the attention heads and MLP neurons live in the model families we can prune.

transformers 5.x dropped ``PreTrainedModel.prune_heads``, so structured pruning is ours. Each
family is recognised by the attributes its modules carry (not by class name), so close relatives
(RoBERTa, ELECTRA, DistilGPT-2 ...) work too. Supported:

* GPT-2 style: attention with a fused ``c_attn`` Conv1D and ``c_proj``; MLP ``c_fc`` → ``c_proj``
  (config key ``n_inner``).
* BERT style: ``attention.self.{query,key,value}`` and ``attention.output.dense``; MLP
  ``intermediate.dense`` → ``output.dense`` (config key ``intermediate_size``).
* LLaMA style MLP: ``gate_proj``/``up_proj`` → ``down_proj`` (config key ``intermediate_size``).

Both attention forwards in transformers 5.x reshape with ``-1`` heads, so a module whose
projections are physically smaller runs as is once its head-count attributes are updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wattlens.profiler.errors import BadInputError

SUPPORTED_ATTENTION = "GPT-2 style (c_attn/c_proj) and BERT style (query/key/value + output.dense)"
SUPPORTED_MLP = "GPT-2 style (c_fc/c_proj), BERT style (intermediate/output) and LLaMA style (gate/up/down)"


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: plain torch models only
        return None
    return Conv1D


def is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def keep_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the output features ``index`` of a Linear or Conv1D, in place (on our copy)."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.index_select(0, index).clone())
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.index_select(0, index).clone())
            module.out_features = int(index.numel())
        elif is_conv1d(module):  # weight is [nx, nf]: outputs are columns
            module.weight = nn.Parameter(module.weight.index_select(1, index).clone())
            module.bias = nn.Parameter(module.bias.index_select(0, index).clone())
            module.nf = int(index.numel())
        else:
            raise TypeError(f"cannot shrink outputs of {type(module).__name__}")


def keep_inputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the input features ``index`` of a Linear or Conv1D (bias is untouched)."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(module.weight.index_select(1, index).clone())
            module.in_features = int(index.numel())
        elif is_conv1d(module):  # weight is [nx, nf]: inputs are rows
            module.weight = nn.Parameter(module.weight.index_select(0, index).clone())
            module.nx = int(index.numel())
        else:
            raise TypeError(f"cannot shrink inputs of {type(module).__name__}")


def output_rows(module: nn.Module) -> torch.Tensor:
    """Weight as [out_features, in_features] whatever the layer type (a view, not a copy)."""
    return module.weight.t() if is_conv1d(module) else module.weight


# --------------------------------------------------------------------------- attention


@dataclass
class AttentionSite:
    """One self-attention block: where its heads are and how to shrink them."""

    path: str
    module: nn.Module
    style: str  # "gpt2" | "bert"

    @property
    def num_heads(self) -> int:
        if self.style == "gpt2":
            return int(self.module.split_size // self.module.head_dim)
        return int(self.module.self.num_attention_heads)

    @property
    def head_dim(self) -> int:
        if self.style == "gpt2":
            return int(self.module.head_dim)
        return int(self.module.self.attention_head_size)

    def projections(self) -> tuple[list[nn.Module], nn.Module]:
        """(q/k/v producing layers, output projection)."""
        if self.style == "gpt2":
            return [self.module.c_attn], self.module.c_proj
        s = self.module.self
        return [s.query, s.key, s.value], self.module.output.dense

    def head_scores(self) -> torch.Tensor:
        """Importance of each head: ‖W_v,h‖·‖W_o,h‖.

        A head's contribution to the residual stream is its value vectors mapped through its slice
        of the output projection; the attention pattern (Q·K) only mixes those vectors with
        weights summing to one, so the V and O norms bound how much the head can add.
        """
        h, d = self.num_heads, self.head_dim
        out_rows = output_rows(self.projections()[1])  # [E, H*d]
        if self.style == "gpt2":
            v = output_rows(self.module.c_attn)[2 * h * d : 3 * h * d]  # [H*d, E]
        else:
            v = output_rows(self.module.self.value)
        v_norm = v.detach().float().reshape(h, d, -1).pow(2).sum(dim=(1, 2)).sqrt()
        o_norm = out_rows.detach().float().reshape(out_rows.shape[0], h, d).pow(2).sum(dim=(0, 2)).sqrt()
        return v_norm * o_norm

    def keep_heads(self, heads: list[int]) -> None:
        h, d = self.num_heads, self.head_dim
        per_head = torch.tensor(
            [hd * d + i for hd in sorted(heads) for i in range(d)], dtype=torch.long
        )
        if self.style == "gpt2":
            split = h * d
            fused = torch.cat([per_head + block * split for block in range(3)])
            keep_outputs(self.module.c_attn, fused)
            keep_inputs(self.module.c_proj, per_head)
            self.module.split_size = len(heads) * d
            self.module.num_heads = len(heads)
        else:
            s = self.module.self
            for layer in (s.query, s.key, s.value):
                keep_outputs(layer, per_head)
            keep_inputs(self.module.output.dense, per_head)
            s.num_attention_heads = len(heads)
            s.all_head_size = len(heads) * d


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    sites: list[AttentionSite] = []
    for path, m in model.named_modules():
        if all(hasattr(m, a) for a in ("c_attn", "c_proj", "head_dim", "split_size")):
            if getattr(m, "is_cross_attention", False):
                continue
            sites.append(AttentionSite(path, m, "gpt2"))
        elif (
            hasattr(m, "self")
            and all(hasattr(m.self, a) for a in ("query", "key", "value", "num_attention_heads"))
            and hasattr(m, "output")
            and hasattr(m.output, "dense")
            and not getattr(m, "is_cross_attention", False)
        ):
            sites.append(AttentionSite(path, m, "bert"))
    return sites


# --------------------------------------------------------------------------- MLP


@dataclass
class MlpSite:
    """One feed-forward block: the layers that produce the hidden neurons and the one that reads them."""

    path: str
    up: list[nn.Module]
    down: nn.Module
    config_key: str

    @property
    def width(self) -> int:
        return int(output_rows(self.up[0]).shape[0])

    def neuron_scores(self) -> torch.Tensor:
        """Importance of each hidden neuron: (sum of its input-row norms) · (its output-column norm).

        A neuron's effect on the block output is its activation times its column of the down
        projection; the activation grows with the norm of its input rows.
        """
        up_norm = sum(output_rows(u).detach().float().norm(dim=1) for u in self.up)
        down_norm = output_rows(self.down).detach().float().norm(dim=0)
        return up_norm * down_norm

    def keep_neurons(self, neurons: list[int]) -> None:
        index = torch.tensor(sorted(neurons), dtype=torch.long)
        for u in self.up:
            keep_outputs(u, index)
        keep_inputs(self.down, index)


def mlp_sites(model: nn.Module) -> list[MlpSite]:
    sites: list[MlpSite] = []
    for path, m in model.named_modules():
        if all(hasattr(m, a) for a in ("c_fc", "c_proj")) and is_conv1d(m.c_fc):
            sites.append(MlpSite(path, [m.c_fc], m.c_proj, "n_inner"))
        elif all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj")):
            sites.append(MlpSite(path, [m.gate_proj, m.up_proj], m.down_proj, "intermediate_size"))
        elif (
            hasattr(m, "intermediate")
            and isinstance(getattr(m.intermediate, "dense", None), nn.Linear)
            and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear)
        ):
            sites.append(MlpSite(path, [m.intermediate.dense], m.output.dense, "intermediate_size"))
    return sites


def count_to_remove(fraction: float, total: int, what: str) -> int:
    """How many of ``total`` units ``fraction`` means; refuses 0 and "all" with a clear line."""
    k = round(fraction * total)
    if k < 1:
        raise BadInputError(
            f"{fraction:g} of {total} {what} rounds to 0 removed",
            hint=f"use a fraction of at least {0.5 / total:.3g}",
        )
    if k >= total:
        raise BadInputError(
            f"{fraction:g} of {total} {what} would remove all of them",
            hint="use a smaller fraction; at least one must stay",
        )
    return k


def config_of(model: nn.Module) -> Any | None:
    return getattr(model, "config", None)
