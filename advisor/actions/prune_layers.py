"""``prune-layers:FRACTION``: remove whole decoder (or encoder) blocks, chosen by measurement.

Each block's redundancy is measured on calibration inputs: the mean cosine similarity between the
hidden state a block receives and the one it returns, over every token. A block whose output
points where its input did changes the representation least, so the ``round(FRACTION × blocks)``
blocks with the highest score go (ties: the later block first). The block list shrinks and the
config's layer count (``num_hidden_layers``, and ``layer_types`` where the config has one) follows,
so plain ``from_pretrained`` reloads the smaller model.

Calibration inputs are the user's text when ``--calibration`` is given (``calibration``), else
seeded random token ids — the result says which.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wattlens.advisor.actions.base import Action, ClaimCheck
from wattlens.advisor.blocks import BLOCK_PATHS, fraction_removing, removed_blocks
from wattlens.profiler.errors import BadInputError

_BLOCK_PATHS = BLOCK_PATHS


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(path, ModuleList) of the model's repeated blocks, or None when none is known."""
    for path in _BLOCK_PATHS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList) and len(found) >= 1:
            return path, found
    return None


def _hidden(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def block_scores(model: nn.Module, blocks: nn.ModuleList, inputs: Any) -> list[float]:
    """Mean cosine(input hidden state, output hidden state) per block on ``inputs``."""
    from wattlens.advisor.modelio import forward

    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)

    def hook(i: int):
        def run(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = _hidden(args) if args else _hidden(kwargs.get("hidden_states"))
            y = _hidden(out)
            if x is None or y is None or x.shape != y.shape:
                return
            cos = torch.nn.functional.cosine_similarity(x.float().flatten(0, -2), y.float().flatten(0, -2), dim=-1)
            sums[i] += float(cos.sum())
            counts[i] += cos.numel()
        return run

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    if not all(counts):
        raise BadInputError("prune-layers could not read the hidden states of every block",
                            hint="this model family is not supported by prune-layers")
    return [s / c for s, c in zip(sums, counts, strict=True)]


def _keep_blocks(model: nn.Module, path: str, blocks: nn.ModuleList, kept: list[int]) -> None:
    """Keep only blocks ``kept`` (in order); the config's layer count and layer types follow."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
    for new_index, block in enumerate(getattr(parent, attr)):
        for m in block.modules():  # attention layers index the KV cache by their layer number
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]


class PruneLayers(Action):
    name = "prune-layers"
    takes_fraction = True
    replay = "config"
    description = (
        "Remove a fraction of whole blocks, those that change their hidden state least (highest "
        "cosine between a block's input and output on calibration inputs); the config's layer "
        "count follows."
    )
    #: set by ``optimize`` to the user's calibration text (ModelInputs); None → seeded random ids
    calibration: Any = None

    @property
    def claim(self) -> str:
        return f"round({self.fraction:g} × blocks) whole blocks leave the model and its config's layer count"

    def _blocks(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        found = block_list(model)
        config = getattr(model, "config", None)
        if found is None or config is None or not hasattr(config, "num_hidden_layers"):
            raise BadInputError(
                f"prune-layers found no block list with a layer count in {type(model).__name__}",
                hint="it supports transformers decoders/encoders (model.layers, transformer.h, encoder.layer)",
            )
        return found

    def _count(self, n: int) -> int:
        k = removed_blocks(self.fraction, n)
        if k < 1 or k >= n:
            if n < 2:
                hint = "a model of one block has none to spare: use prune-mlp or prune-heads instead"
            elif n == 2:
                hint = f"use prune-layers:{fraction_removing(1, n):g} (removes 1 of the 2 blocks)"
            else:
                hint = (f"choose a fraction that removes between 1 and {n - 1} of the {n} blocks, e.g. "
                        f"prune-layers:{fraction_removing(1, n):g} (1 block) up to "
                        f"prune-layers:{fraction_removing(n - 1, n):g} ({n - 1} blocks)")
            raise BadInputError(f"prune-layers:{self.fraction:g} removes {k} of {n} blocks", hint=hint)
        return k

    def check_applicable(self, model: nn.Module) -> None:
        self._count(len(self._blocks(model)[1]))

    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        from wattlens.advisor.modelio import random_inputs

        path, blocks = self._blocks(model)
        n = len(blocks)
        k = self._count(n)
        inputs = self.calibration or random_inputs(model, 2, 32, seed=0)
        scores = block_scores(model, blocks, inputs)
        order = sorted(range(n), key=lambda i: (scores[i], i), reverse=True)
        removed = sorted(order[:k])
        kept = [i for i in range(n) if i not in removed]
        _keep_blocks(model, path, blocks, kept)
        return {
            "blocks_before": n,
            "blocks_after": len(kept),
            "removed_blocks": removed,
            "kept_blocks": kept,
            "block_scores": [round(s, 6) for s in scores],
            "score": "mean cosine(block input, block output) over calibration tokens (higher = more redundant)",
            "calibration": inputs.description,
            "calibration_samples": inputs.n_samples,
        }

    def restore(self, model: nn.Module, details: dict[str, Any]) -> None:
        """The same blocks leave a fresh instance (a module file's loader; a folder's config says it)."""
        path, blocks = self._blocks(model)
        if len(blocks) != details["blocks_before"]:
            raise BadInputError(f"the model has {len(blocks)} blocks; {self.spec} was applied to "
                                f"{details['blocks_before']}", hint="pass an instance of the class that was optimized")
        _keep_blocks(model, path, blocks, list(details["kept_blocks"]))

    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        nb = len(self._blocks(before)[1])
        na = len(self._blocks(after)[1])
        k = round(self.fraction * nb)
        config_n = after.config.num_hidden_layers
        return ClaimCheck(
            claim=self.claim,
            holds=nb - na == k and config_n == na,
            observed=f"{nb} → {na} blocks (config layer count {config_n})",
            values={"blocks_before": nb, "blocks_after": na, "config_layers": config_n},
        )
