"""The small interface every optimisation action shares.

An action never touches the model it is given: ``apply`` deep-copies first and returns the copy.
``apply_detailed`` also returns what it did (which heads went, which engine quantized ...): the
saved folder's manifest records it and the loader replays it.

``replay`` says how the saved folder brings the action back:

* ``"weights"`` — the saved weights already hold it (unstructured pruning);
* ``"config"`` — the saved config describes the new shapes (MLP and layer pruning); a torch
  module file's output has no config, so there ``load_optimized`` rebuilds them from ``details``
  (``restore``) like a ``"structure"`` action;
* ``"dtype"`` / ``"structure"`` — the loader rebuilds it on a fresh model from ``details`` before
  loading the saved weights (bf16 casting; head pruning, which no transformers config can express);
* ``"on-load"`` — the saved weights are the ones *before* the action and the loader applies it
  again (dynamic int8: deterministic from the weights, and no pickle of quantized modules).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch import nn

from wattlens.profiler.errors import ActionError, WattlensError


@dataclass(frozen=True)
class ClaimCheck:
    """What an action promised about the model's form, and what we observed after applying it."""

    claim: str
    holds: bool
    observed: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Applied:
    """The result of one action: the new model and what was done to get it."""

    model: nn.Module
    details: dict[str, Any]


class Action(ABC):
    """One optimisation. Subclasses set the class variables and implement ``_apply_inplace``."""

    name: ClassVar[str]
    description: ClassVar[str]
    takes_fraction: ClassVar[bool] = False
    replay: ClassVar[str] = "weights"
    #: True when nothing may follow this action (its modules cannot be pruned or cast further).
    must_be_last: ClassVar[bool] = False
    #: True for the torchao quantization variants (saved through transformers' TorchAoConfig)
    quantizes: ClassVar[bool] = False

    def __init__(self, fraction: float | None = None):
        self.fraction = fraction

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.fraction:g}" if self.takes_fraction else self.name

    def __repr__(self) -> str:
        return f"<Action {self.spec}>"

    @property
    @abstractmethod
    def claim(self) -> str:
        """One sentence: what this action promises to change in the model."""

    def check_applicable(self, model: nn.Module) -> None:
        """Raise :class:`BadInputError` (with the fix) when this model or machine cannot take it."""
        return None

    def check_expressible(self, model: nn.Module) -> None:
        """For a Hugging Face model: raise :class:`BadInputError` (naming the closest variant that
        is) when plain transformers could not load the result as the verified model. Checked
        before any work, so nothing is ever written that ``from_pretrained`` would load as a
        different model."""
        return None

    @abstractmethod
    def _apply_inplace(self, model: nn.Module) -> dict[str, Any]:
        """Change ``model`` (already our private copy) and return the details to record."""

    @abstractmethod
    def check_claim(self, before: nn.Module, after: nn.Module) -> ClaimCheck:
        """Measure whether ``after`` shows the promised change relative to ``before``."""

    def restore(self, model: nn.Module, details: dict[str, Any]) -> None:
        """Rebuild this action's shapes/dtypes on a fresh model (replay "structure"/"dtype", and
        "config" for a torch module file, whose output has no config.json to say the new shape).

        Actions replayed from weights or on load have nothing to rebuild.
        """
        return None

    def replay_into(self, model: nn.Module, details: dict[str, Any]) -> None:
        """Bring this action back, in place, on a freshly loaded model the loader owns."""
        if self.replay == "on-load":
            self.check_applicable(model)
            self._apply_inplace(model)
            model.eval()
        else:
            self.restore(model, details)

    def apply_detailed(self, model: nn.Module) -> Applied:
        """Apply to a deep copy; any failure becomes an :class:`ActionError` and the input is untouched."""
        self.check_applicable(model)
        work = copy.deepcopy(model)
        try:
            details = self._apply_inplace(work)
        except WattlensError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything inside torch/transformers
            raise ActionError(
                f"{self.spec} failed: {type(exc).__name__}: {exc}".splitlines()[0],
                hint="the input model is untouched; try another action or report this model type",
            ) from exc
        work.eval()
        return Applied(work, details)

    def apply(self, model: nn.Module) -> nn.Module:
        """Return an optimised deep copy of ``model``; ``model`` itself is never modified."""
        return self.apply_detailed(model).model
