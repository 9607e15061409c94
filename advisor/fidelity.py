"""How far a candidate model's outputs moved from the baseline's.

* Models with logits: top-1 agreement and KL(base‖candidate) of the output distributions, per
  position (for a causal LM these are the next-token distributions).
* Models without (encoders): cosine similarity of the output vectors, per token.
* Causal LMs with user text and a tokenizer: perplexity of both models on that text.

Without user text the inputs are deterministic random token ids (seeded) and the result says so:
such numbers measure how much the outputs moved, not how good either model is at language.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wattlens.advisor.modelio import (
    ModelInputs,
    forward,
    forward_named,
    max_positions,
    model_device,
)
from wattlens.profiler.errors import BadInputError


@dataclass(frozen=True)
class Fidelity:
    """Agreement between baseline and candidate outputs; ``None`` fields say why in ``*_reason``."""

    mode: str  # "next-token" | "output-distribution" | "cosine"
    inputs: str
    n_positions: int
    top1_agreement: float | None
    kl_base_candidate: float | None  # nats per position, mean
    cosine_similarity: float | None  # mean over positions
    cosine_similarity_min: float | None
    perplexity_base: float | None
    perplexity_candidate: float | None
    perplexity_reason: str | None
    quality_loss: float
    quality_metric: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- pure metrics


def distribution_agreement(base_logits: torch.Tensor, cand_logits: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean KL(base‖candidate) in nats) over every position.

    Inputs are [..., vocab]; computed in float64 so that identical logits give exactly 0.
    """
    if base_logits.shape != cand_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(base_logits.shape)} vs {tuple(cand_logits.shape)}")
    b = base_logits.detach().reshape(-1, base_logits.shape[-1]).double()
    c = cand_logits.detach().reshape(-1, cand_logits.shape[-1]).double()
    agreement = (b.argmax(-1) == c.argmax(-1)).double().mean().item()
    log_b, log_c = F.log_softmax(b, -1), F.log_softmax(c, -1)
    kl = (log_b.exp() * (log_b - log_c)).sum(-1).clamp_min(0).mean().item()
    return agreement, kl


def cosine_agreement(base_out: torch.Tensor, cand_out: torch.Tensor) -> tuple[float, float]:
    """(mean, min) cosine similarity of the output vectors (last dimension) over every position."""
    if base_out.shape != cand_out.shape:
        raise ValueError(f"output shapes differ: {tuple(base_out.shape)} vs {tuple(cand_out.shape)}")
    b = base_out.detach().reshape(-1, base_out.shape[-1]).double()
    c = cand_out.detach().reshape(-1, cand_out.shape[-1]).double()
    cos = F.cosine_similarity(b, c, dim=-1)
    return cos.mean().item(), cos.min().item()


def perplexity(model: nn.Module, token_ids: torch.Tensor, window: int) -> float:
    """exp(mean next-token NLL) over ``token_ids`` (1-D), in non-overlapping windows."""
    ids = token_ids.reshape(-1)
    device = model_device(model)
    nll_sum, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window]
        if chunk.numel() < 2:
            break
        batch = chunk.unsqueeze(0).to(device)
        logits = forward(model, ModelInputs((), {"input_ids": batch, "attention_mask": torch.ones_like(batch)}, 1, ""))
        logp = F.log_softmax(logits[0, :-1].double(), -1)
        nll_sum += -logp.gather(-1, batch[0, 1:].unsqueeze(-1)).sum().item()
        count += chunk.numel() - 1
    return math.exp(nll_sum / count)


# --------------------------------------------------------------------------- eval text


def read_eval_tokens(path: str | Path, tokenizer: Any | None, tokenizer_reason: str | None,
                     *, flag: str = "--eval-text") -> torch.Tensor:
    """Token ids of the user's text file (given with ``flag``); needs the model folder's tokenizer."""
    p = Path(path).expanduser()
    if tokenizer is None:
        raise BadInputError(
            f"{flag} needs a tokenizer and the model has none ({tokenizer_reason})",
            hint=f"put the tokenizer files in the model folder or drop {flag}",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {flag} file {p}: {exc}", hint="give a UTF-8 text file") from exc
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].reshape(-1)
    if ids.numel() < 2:
        raise BadInputError(f"{p} holds fewer than 2 tokens", hint="give a longer text for perplexity")
    return ids


def eval_windows(ids: torch.Tensor, model: nn.Module, seq_len: int, max_windows: int = 8) -> ModelInputs:
    """The first ``max_windows`` full windows of the eval text as one batch (for agreement/KL)."""
    limit = max_positions(model)
    length = min(seq_len, limit) if limit else seq_len
    length = min(length, ids.numel())
    n = max(1, min(max_windows, ids.numel() // length))
    batch = ids[: n * length].reshape(n, length)
    return ModelInputs((), {"input_ids": batch, "attention_mask": torch.ones_like(batch)}, n,
                       f"eval text ({n}×{length} tokens)")


# --------------------------------------------------------------------------- the measurement


def measure_fidelity(
    base: nn.Module,
    candidate: nn.Module,
    inputs: ModelInputs,
    *,
    is_causal_lm: bool,
    eval_ids: torch.Tensor | None = None,
    eval_source: str | None = None,
    window: int = 128,
) -> Fidelity:
    """Compare ``candidate`` to ``base`` on ``inputs`` (and perplexity on ``eval_ids``)."""
    field_b, out_b = forward_named(base, inputs.to(model_device(base)))
    out_b = out_b.float().cpu()
    out_c = forward(candidate, inputs.to(model_device(candidate))).float().cpu()
    if out_b.shape != out_c.shape:
        raise BadInputError(
            f"the candidate's output shape {tuple(out_c.shape)} differs from the base's {tuple(out_b.shape)}",
            hint="this action changes what the model outputs; fidelity cannot be compared",
        )
    n_positions = int(out_b.reshape(-1, out_b.shape[-1]).shape[0])
    described = inputs.description + (f" from {eval_source}" if eval_source else "")
    top1 = kl = cos = cos_min = None
    if field_b == "logits":
        mode = "next-token" if is_causal_lm else "output-distribution"
        top1, kl = distribution_agreement(out_b, out_c)
        loss, metric = 1.0 - top1, "1 - top-1 agreement"
    else:
        mode = "cosine"
        cos, cos_min = cosine_agreement(out_b, out_c)
        loss, metric = 1.0 - cos, "1 - mean cosine similarity"

    ppl_b = ppl_c = None
    if not is_causal_lm:
        ppl_reason = "perplexity needs a causal language model"
    elif eval_ids is None:
        ppl_reason = "no eval text given (--eval-text FILE with a tokenizer in the model folder)"
    else:
        limit = max_positions(base)
        win = min(window, limit) if limit else window
        ppl_b, ppl_c = perplexity(base, eval_ids, win), perplexity(candidate, eval_ids, win)
        ppl_reason = None
        rel = ppl_c / ppl_b - 1.0
        if rel > loss:
            loss, metric = rel, "relative perplexity increase"
    return Fidelity(
        mode=mode,
        inputs=described,
        n_positions=n_positions,
        top1_agreement=top1,
        kl_base_candidate=kl,
        cosine_similarity=cos,
        cosine_similarity_min=cos_min,
        perplexity_base=ppl_b,
        perplexity_candidate=ppl_c,
        perplexity_reason=ppl_reason,
        quality_loss=max(0.0, loss),
        quality_metric=metric,
    )

