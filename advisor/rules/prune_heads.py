"""Attention dominating the model's time → remove a quarter of the attention heads.

Structured: the Q/K/V and output projections really shrink, so dense kernels do less work (unlike
unstructured sparsity). Heads go by lowest ``norm(W_v,h) · norm(W_o,h)``, the same count per layer.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation
from wattlens.advisor.rules._structured import structured_pruning

RULE = "prune-heads"
FRACTION = 0.25
ACTION = f"prune-heads:{FRACTION:g}"
NEEDS = "layer costs where attention modules take ≥ 40 % of the model's time and more than the MLP"


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    return structured_pruning(
        f, rule=RULE, action=ACTION, category="attention", what="attention heads",
        share_of_model=f.attention_share_of_model, share=f.attention_share,
        other_share=f.mlp_share_of_model, fraction=FRACTION,
        rationale=("Attention takes the largest part of the model's time. Removing the heads that "
                   "contribute least (smallest value/output weight norms) shrinks the Q/K/V and output "
                   "projections and the attention arithmetic, so the dense kernels do less work."),
        risk=("removing heads without fine-tuning usually costs quality, more in small models; check the "
              "fidelity `wattlens optimize` reports (--max-quality-loss) and fine-tune if it drops. "
              "It applies to a torch module file only: no transformers config can express different "
              "heads per layer, so a Hugging Face folder is refused — prune-layers:F or prune-mlp:F "
              "is the expressible variant there"))
