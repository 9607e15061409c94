"""Distillation healing: fine-tune a pruned student against the original model (the teacher).

``wattlens optimize --heal-steps N --heal-text FILE`` runs N AdamW steps minimising
KL(teacher ‖ student) of the next-token distributions on windows of the user's text. The text's
last fifth is held out and never trained on: the mean KL on it is measured before and after
healing, so the result shows what healing bought on unseen text. The training loop runs inside
its own energy window, so the result also reports the joules healing cost; with the A/B saving
per sample this gives the payback (healing J ÷ J saved per sample = samples until it pays off).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from wattlens.advisor.modelio import model_device
from wattlens.profiler.errors import BadInputError

HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class HealResult:
    steps: int
    learning_rate: float
    train_tokens: int
    held_out_tokens: int
    held_out_kl_before: float
    held_out_kl_after: float
    energy_j: float | None
    energy_method: str | None
    energy_reason: str | None
    duration_s: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_windows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train windows, held-out windows) of ``seq_len`` tokens; the held-out part comes last."""
    cut = int(ids.numel() * (1 - HELD_OUT_SHARE))
    train, held = ids[:cut], ids[cut:]
    if train.numel() < seq_len or held.numel() < seq_len:
        raise BadInputError(
            f"the healing text holds {ids.numel()} tokens; it needs at least {int(seq_len / HELD_OUT_SHARE)} "
            f"({seq_len}-token windows, the last {HELD_OUT_SHARE:.0%} held out)",
            hint="give a longer --heal-text file")
    n_t, n_h = train.numel() // seq_len, held.numel() // seq_len
    return train[: n_t * seq_len].reshape(n_t, seq_len), held[: n_h * seq_len].reshape(n_h, seq_len)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    kwargs: dict[str, Any] = {"input_ids": ids}
    if getattr(getattr(model, "config", None), "use_cache", False):
        kwargs["use_cache"] = False
    return model(**kwargs).logits.float()


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student), in nats."""
    t = torch.log_softmax(teacher_logits, dim=-1).flatten(0, -2)
    s = torch.log_softmax(student_logits, dim=-1).flatten(0, -2)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")


def held_out_kl(teacher: nn.Module, student: nn.Module, held: torch.Tensor) -> float:
    with torch.inference_mode():
        device = model_device(student)
        return float(_kl(_logits(teacher, held.to(device)), _logits(student, held.to(device))))


def heal(teacher: nn.Module, student: nn.Module, ids: torch.Tensor, *, steps: int, seq_len: int,
         meter: Any, source: str, batch_size: int = 4, learning_rate: float = 1e-4,
         progress: Callable[[str, float], None] | None = None, seed: int = 0) -> HealResult:
    """Train ``student`` (in place; our private copy) for ``steps`` steps; returns the numbers."""
    if steps < 1:
        raise BadInputError(f"--heal-steps must be at least 1, got {steps}", hint="e.g. --heal-steps 50")
    train, held = split_windows(ids, seq_len)
    device = model_device(student)
    before = held_out_kl(teacher, student, held)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=learning_rate)
    student.train()
    meter.begin_window("heal")
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            rows = torch.randint(0, train.shape[0], (min(batch_size, train.shape[0]),), generator=gen)
            batch = train[rows].to(device)
            with torch.no_grad():
                target = _logits(teacher, batch)
            loss = _kl(target, _logits(student, batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress:
                progress("heal", (step + 1) / steps)
    finally:
        duration = time.perf_counter() - t0
        m = meter.end_window("heal")
        student.eval()
    after = held_out_kl(teacher, student, held)
    reason = None
    if m.attributed_energy_j is None:
        reason = m.reasons.get("attributed") or "the meter gave no attributed energy"
    return HealResult(steps=steps, learning_rate=learning_rate, train_tokens=int(train.numel()),
                      held_out_tokens=int(held.numel()), held_out_kl_before=before,
                      held_out_kl_after=after, energy_j=m.attributed_energy_j,
                      energy_method=m.attributed_method, energy_reason=reason,
                      duration_s=duration, source=source)


def payback_samples(heal_energy_j: float | None, base_j_per_sample: float | None,
                    candidate_j_per_sample: float | None) -> tuple[float | None, str | None]:
    """(samples until healing's energy is paid back, reason when it cannot be said)."""
    if heal_energy_j is None:
        return None, "healing energy not measured"
    if base_j_per_sample is None or candidate_j_per_sample is None:
        return None, "energy per sample not measured"
    saved = base_j_per_sample - candidate_j_per_sample
    if saved <= 0:
        return None, "the optimized model saves no energy per sample, so healing never pays back"
    return heal_energy_j / saved, None
