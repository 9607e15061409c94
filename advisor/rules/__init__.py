"""The advisor's rules: one file per rule, each ``evaluate(features) -> list[Recommendation]``.

A rule reads only :class:`~wattlens.advisor.features.SessionFeatures` and stays silent (returns
``[]``) when the evidence it needs is absent; ``NEEDS`` in each module says in words what that
evidence is, so ``wattlens advise`` can tell the user why a rule said nothing.
"""

from __future__ import annotations

from types import ModuleType

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation
from wattlens.advisor.rules import (
    batch_size,
    bf16,
    collective_share,
    dataloader,
    fewer_ranks,
    idle_rank,
    prune_heads,
    prune_layers,
    prune_mlp,
    prune_unstructured,
    quantize_int8,
    straggler,
)

RULES: tuple[ModuleType, ...] = (batch_size, quantize_int8, bf16, prune_heads, prune_mlp, prune_layers,
                                 prune_unstructured, dataloader, straggler, collective_share,
                                 idle_rank, fewer_ranks)


def evaluate_all(features: SessionFeatures) -> tuple[list[Recommendation], list[dict[str, str]]]:
    """(recommendations of every rule, [{rule, needs}] for the rules that stayed silent)."""
    recs: list[Recommendation] = []
    silent: list[dict[str, str]] = []
    for rule in RULES:
        out = rule.evaluate(features)
        if out:
            recs.extend(out)
        else:
            silent.append({"rule": rule.RULE, "needs": rule.NEEDS})
    return recs, silent
