"""MLP blocks dominating the model's time → remove a quarter of the MLP neurons per layer.

Structured: both MLP matrices lose rows/columns and the config's intermediate size shrinks, so
dense kernels do proportionally less work.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation
from wattlens.advisor.rules._structured import structured_pruning

RULE = "prune-mlp"
FRACTION = 0.25
ACTION = f"prune-mlp:{FRACTION:g}"
NEEDS = "layer costs where MLP modules take ≥ 40 % of the model's time and at least as much as attention"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    return structured_pruning(
        f, rule=RULE, action=ACTION, category="mlp", what="MLP neurons",
        share_of_model=f.mlp_share_of_model, share=f.mlp_share,
        other_share=f.attention_share_of_model, fraction=FRACTION,
        rationale=("The MLP blocks take the largest part of the model's time. Removing the neurons with "
                   "the smallest input-row × output-column weight norms shrinks both MLP matrices, so "
                   "the dense matrix multiplies that dominate do proportionally less work."),
        risk=("removing MLP neurons without fine-tuning costs quality; check the fidelity "
              "`wattlens optimize` reports (--max-quality-loss) and fine-tune if it drops"))
