"""A model's repeated blocks without torch: where transformers keeps them, how many a stored
session shows, and the ``prune-layers`` fraction that removes a given number of them.

``actions/prune_layers.py`` finds the blocks on the module itself; ``features.py`` counts them
from what a session stored (the agent's module table, per-instance layer rows, the model folder's
config.json), so the prune-layers rule can suggest a fraction optimize will accept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

#: where transformers keeps the repeated blocks, most specific first
BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
               "bert.encoder.layer", "encoder.layer", "layers", "h")
#: config.json keys holding the block count (their names differ by architecture)
CONFIG_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def removed_blocks(fraction: float, n: int) -> int:
    """How many of ``n`` blocks ``prune-layers:fraction`` removes: round(fraction × n), Python's
    round (half to even), exactly as the action counts them."""
    return round(fraction * n)


def fraction_removing(k: int, n: int) -> float:
    """The shortest fraction (2 to 6 decimals) that removes exactly ``k`` of ``n`` blocks."""
    if not 1 <= k < n:
        raise ValueError(f"cannot remove {k} of {n} blocks and keep one")
    for digits in range(2, 7):
        f = round(k / n, digits)
        if removed_blocks(f, n) == k:
            return f
    return k / n


def count_blocks(paths: Iterable[str]) -> int | None:
    """The block count that module paths (``transformer.h.3.mlp``) show: the distinct indices
    under the first of :data:`BLOCK_PATHS` that has any; None when none has."""
    paths = [p for p in paths if p and not p.startswith("@")]
    for base in BLOCK_PATHS:
        pattern = re.compile(rf"^{re.escape(base)}\.(\d+)(?:\.|$)")
        found = {int(m.group(1)) for p in paths if (m := pattern.match(p))}
        if found:
            return max(found) + 1
    return None


def config_blocks(model_path: str | None) -> int | None:
    """The block count in a Hugging Face folder's config.json (None: no folder, key or file)."""
    if not model_path:
        return None
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    value = next((config[k] for k in CONFIG_KEYS if isinstance(config.get(k), int)), None)
    return value if value and value > 0 else None
