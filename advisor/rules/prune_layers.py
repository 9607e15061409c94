"""The repeated blocks (attention + MLP) carry the model's time → remove whole blocks.

Which blocks go is not guessed here: ``wattlens optimize --action prune-layers:F`` measures every
block's redundancy (cosine between the hidden state it receives and the one it returns, on the
``--calibration`` text or seeded random ids) and removes the most redundant; the saving follows
the share of time the blocks take. Stored A/B results of earlier prune-layers runs train the
regression like every other action's. When the fidelity loss is too large, healing
(``--heal-steps N --heal-text FILE``) distils the original back into the smaller model.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation
from wattlens.advisor.rules._structured import structured_pruning

RULE = "prune-layers"
FRACTION = 0.25
ACTION = f"prune-layers:{FRACTION:g}"
NEEDS = "inference with layer costs where attention + MLP blocks take ≥ 60 % of the model's time"
BLOCK_SHARE_MIN = 0.60


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if f.is_training is not False:
        return []
    parts = (f.attention_share_of_model, f.mlp_share_of_model)
    shares = (f.attention_share, f.mlp_share)
    if None in parts or None in shares or sum(parts) < BLOCK_SHARE_MIN:
        return []
    return structured_pruning(
        f, rule=RULE, action=ACTION, category=None, what="decoder blocks",
        share_of_model=sum(parts), share=sum(shares), other_share=None, fraction=FRACTION,
        rationale=("Attention and MLP blocks take most of the model's time. Removing the quarter of "
                   "blocks that change their hidden state least (measured per block by optimize) "
                   "removes their whole cost; the config's layer count follows, so the result is a "
                   "plain transformers model."),
        risk=("whole blocks going costs more quality than neuron pruning; check the fidelity "
              "optimize reports (--max-quality-loss) and, if it is too large, heal with "
              "--heal-steps N --heal-text FILE"))
