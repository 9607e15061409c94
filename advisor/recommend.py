"""What a rule hands back: a :class:`Recommendation`, frozen, explainable, never a promise.

Published results disagree on when int8, bf16, pruning or a larger batch save energy, so every
recommendation carries the measurements it rests on (``evidence``), a predicted saving *with an
interval and the method that produced it* (a regression fitted on the user's own measurements,
or a stated rule of thumb), a confidence, the risk to quality, and the exact command that would
apply or measure it. When the advisor lacks data it says "measure first" and names the
measurement, instead of guessing.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["low", "medium", "high"]
LEVELS: tuple[str, ...] = ("low", "medium", "high")

#: The placeholder for the user's model folder in suggested commands: a session records a
#: process, not the path of the model it ran.
MODEL_PLACEHOLDER = "MODEL"

MEASURE_FIRST = "measure first"


@dataclass(frozen=True)
class Evidence:
    """One measurement a recommendation rests on (``source`` says where it was read)."""

    what: str
    value: float | int | str | None
    unit: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        return cls(str(d.get("what") or ""), d.get("value"), str(d.get("unit") or ""), str(d.get("source") or ""))


@dataclass(frozen=True)
class PredictedSaving:
    """Predicted change of energy per sample (or per token): ``1 - E_after / E_before``.

    ``fraction`` is the central value and ``low``/``high`` the interval; all three are None for
    a "measure first" answer, whose ``measure_command`` names the measurement to run.
    ``method`` is ``"regression (…, LOO CV error ±x)"``, ``"rule of thumb from <reason>"`` or
    ``"measure first"``. ``text`` says it in words.
    """

    fraction: float | None
    low: float | None
    high: float | None
    method: str
    text: str
    basis: str = "energy per sample"
    measure_command: str | None = None

    def __post_init__(self) -> None:
        values = (self.fraction, self.low, self.high)
        if any(v is None for v in values) and any(v is not None for v in values):
            raise ValueError("fraction, low and high are all given or all None")
        if self.fraction is not None and not (self.low <= self.fraction <= self.high):
            raise ValueError(f"interval [{self.low}, {self.high}] does not contain {self.fraction}")

    @property
    def is_measure_first(self) -> bool:
        return self.fraction is None

    def interval_text(self) -> str:
        if self.fraction is None:
            return MEASURE_FIRST
        return f"{_pct(self.fraction)} (interval {_pct(self.low)} … {_pct(self.high)})"

    @property
    def includes_zero(self) -> bool:
        """True when the interval reaches from a saving to a cost (or touches "no change"): the
        prediction cannot tell whether applying it helps — "not worth it yet"."""
        return self.fraction is not None and self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictedSaving:
        return cls(d.get("fraction"), d.get("low"), d.get("high"), str(d.get("method") or MEASURE_FIRST),
                   str(d.get("text") or ""), str(d.get("basis") or "energy per sample"), d.get("measure_command"))


def measure_first(text: str, command: str | None, basis: str = "energy per sample") -> PredictedSaving:
    return PredictedSaving(None, None, None, MEASURE_FIRST, text, basis, command)


def rule_of_thumb(low: float, high: float, reason: str, *, central: float | None = None,
                  basis: str = "energy per sample") -> PredictedSaving:
    """A stated rule of thumb: the interval ``[low, high]`` and where it comes from."""
    low, high = min(low, high), max(low, high)
    mid = (low + high) / 2 if central is None else min(max(central, low), high)
    text = (f"about {_pct(mid)} less {basis} (somewhere between {_pct(low)} and {_pct(high)}); "
            f"a rule of thumb, not a measurement of this model — verify with the A/B run")
    return PredictedSaving(mid, low, high, f"rule of thumb from {reason}", text, basis)


@dataclass(frozen=True)
class Risk:
    level: Level
    text: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Risk:
        return cls(d.get("level"), str(d.get("text") or ""))


@dataclass(frozen=True)
class Recommendation:
    """One piece of advice from one rule.

    ``action`` is the spec string for ``wattlens optimize --action`` (None for advice that no
    automatic action realises); ``command`` is the exact command line to apply or measure it.
    """

    rule: str
    title: str
    rationale: str
    evidence: tuple[Evidence, ...]
    predicted_saving: PredictedSaving
    confidence: Level
    risk: Risk
    action: str | None = None
    command: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.confidence not in LEVELS:
            raise ValueError(f"confidence must be one of {LEVELS}, got {self.confidence!r}")
        if self.risk.level not in LEVELS:
            raise ValueError(f"risk level must be one of {LEVELS}, got {self.risk.level!r}")
        if not self.evidence:
            raise ValueError(f"rule {self.rule}: a recommendation without evidence is a guess")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "title": self.title,
            "rationale": self.rationale,
            "evidence": [e.to_dict() for e in self.evidence],
            "predicted_saving": self.predicted_saving.to_dict(),
            "confidence": self.confidence,
            "risk": self.risk.to_dict(),
            "action": self.action,
            "command": self.command,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recommendation:
        """The inverse of :meth:`to_dict` (what the store keeps): the same checks apply, so a stored
        document that is not a recommendation raises ValueError instead of rendering half."""
        return cls(
            rule=str(d["rule"]), title=str(d["title"]), rationale=str(d.get("rationale") or ""),
            evidence=tuple(Evidence.from_dict(e) for e in d.get("evidence") or ()),
            predicted_saving=PredictedSaving.from_dict(d.get("predicted_saving") or {}),
            confidence=d.get("confidence"), risk=Risk.from_dict(d.get("risk") or {}),
            action=d.get("action"), command=d.get("command"), notes=tuple(d.get("notes") or ()))


def load_recommendations(docs: list[dict[str, Any]]) -> list[Recommendation]:
    """Stored documents (``Store.recommendations``) read back as :class:`Recommendation` objects."""
    return [Recommendation.from_dict(d) for d in docs]


def shell_path(path: str) -> str:
    """A path as a shell word (the placeholder stays as it is)."""
    return path if path == MODEL_PLACEHOLDER else shlex.quote(path)


def optimize_command(action: str, model: str = MODEL_PLACEHOLDER) -> str:
    """The command that applies ``action`` to a copy of the model and A/B-verifies it; the copy
    goes beside the model (``MODEL-<action>``), never over it."""
    suffix = action.replace(":", "-").replace(".", "")
    out = f"{model.rstrip('/') or model}-{suffix}"
    return f"wattlens optimize {shell_path(model)} --action {action} --out {shell_path(out)}"


def sweep_command(batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                  model: str = MODEL_PLACEHOLDER) -> str:
    """The measurement that gives the batch-size regression its data."""
    return f"wattlens optimize {shell_path(model)} --batch-sizes {','.join(str(b) for b in batch_sizes)}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"
