"""The repeated blocks (attention + MLP) carry the model's time → remove whole blocks.

Which blocks go is not guessed here: ``wattlens optimize --action prune-layers:F`` measures every
block's redundancy (cosine between the hidden state it receives and the one it returns, on the
``--calibration`` text or seeded random ids) and removes the most redundant; the saving follows
the share of time the blocks take. Stored A/B results of earlier prune-layers runs train the
regression like every other action's. When the fidelity loss is too large, healing
(``--heal-steps N --heal-text FILE``) distils the original back into the smaller model.

The action removes round(F × blocks) blocks and refuses a fraction that removes none or all, so
where the session shows the block count (``features.n_blocks``) the rule suggests — and predicts
for — a fraction that removes between 1 and blocks − 1 (a quarter where that is at least one
block); a model of one block gets no suggestion.
"""

from __future__ import annotations

from wattlens.advisor.blocks import fraction_removing, removed_blocks
from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import Recommendation
from wattlens.advisor.rules._common import ev
from wattlens.advisor.rules._structured import structured_pruning

RULE = "prune-layers"
FRACTION = 0.25
ACTION = f"prune-layers:{FRACTION:g}"
NEEDS = ("inference with layer costs where attention + MLP blocks take ≥ 60 % of the model's time, "
         "in a model of at least 2 blocks")
BLOCK_SHARE_MIN = 0.60


def plan(n_blocks: int | None) -> tuple[float, int | None] | None:
    """(fraction, blocks it removes) for a model of ``n_blocks``: FRACTION where it removes at least
    one block and keeps one, else the fraction that removes one; (FRACTION, None) when the count is
    unknown; None when no fraction can remove a block and keep one."""
    if n_blocks is None:
        return FRACTION, None
    if n_blocks < 2:
        return None
    k = min(max(removed_blocks(FRACTION, n_blocks), 1), n_blocks - 1)
    fraction = FRACTION if removed_blocks(FRACTION, n_blocks) == k else fraction_removing(k, n_blocks)
    return fraction, k


def silent_reason(f: SessionFeatures) -> str | None:
    if f.n_blocks is not None and plan(f.n_blocks) is None:
        return (f"the model has {f.n_blocks} block ({f.n_blocks_source}): removing a whole block would "
                "leave none — prune-mlp or prune-heads shrink it instead")
    return None


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    if f.is_training is not False:
        return []
    parts = (f.attention_share_of_model, f.mlp_share_of_model)
    shares = (f.attention_share, f.mlp_share)
    if None in parts or None in shares or sum(parts) < BLOCK_SHARE_MIN:
        return []
    chosen = plan(f.n_blocks)
    if chosen is None:
        return []
    fraction, k = chosen
    if k is None:
        title, which, evidence = None, "the quarter of blocks", ()
        notes = (f"the session does not show how many blocks the model has: prune-layers:{FRACTION:g} "
                 f"removes round({FRACTION:g} × blocks), which optimize refuses on a model of 2 blocks or "
                 "fewer (there, prune-layers:0.5 removes 1 of 2)",)
    else:
        title = f"Prune {k} of the {f.n_blocks} decoder blocks (structured)"
        which = f"the {k} of {f.n_blocks} blocks"
        evidence = (ev("blocks in the model", f.n_blocks, "", f.n_blocks_source or "session"),)
        notes = ()
    return structured_pruning(
        f, rule=RULE, action=f"prune-layers:{fraction:g}", category=None, what="decoder blocks",
        share_of_model=sum(parts), share=sum(shares), other_share=None, fraction=fraction, title=title,
        extra_evidence=evidence, extra_notes=notes,
        rationale=("Attention and MLP blocks take most of the model's time. Removing "
                   f"{which} that change their hidden state least (measured per block by optimize) "
                   "removes their whole cost; the config's layer count follows, so the result is a "
                   "plain transformers model."),
        risk=("whole blocks going costs more quality than neuron pruning; check the fidelity "
              "optimize reports (--max-quality-loss) and, if it is too large, heal with "
              "--heal-steps N --heal-text FILE"))
