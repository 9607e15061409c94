"""``WattlensCallback``: a transformers ``TrainerCallback`` that reports Trainer steps.

transformers is imported only when the class is first asked for, so the agent works without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_CLASS: type | None = None


def callback_class(watch: Callable[[Any], Any], step: Callable[..., None]) -> type:
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from transformers import TrainerCallback

    class WattlensCallback(TrainerCallback):
        """One wattlens step per optimizer update of the Trainer; the model is watched at start.

        Samples and tokens per step are what the agent counts from the model's training inputs
        (all gradient-accumulation micro-batches of the step).
        """

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                           **kwargs: Any) -> None:
            if model is not None:
                watch(model)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step()

    _CLASS = WattlensCallback
    return _CLASS
