"""Forward FLOPs per module, counted once, inside the user's own first forward of the main model.

Why inside the real forward and not a shadow call: a second forward could have side effects
(dropout RNG draws, BatchNorm statistics, KV caches), so it could change the user's results. A
TorchDispatchMode only watches the aten ops the forward runs anyway and returns their real
outputs unchanged. It does slow that one forward down, so the agent drops the layer times of the
window that contains it.

Cost: the first op run under a dispatch mode imports ``torch._dynamo`` (about a second). The
tracker therefore counts only once the program has loaded it anyway (transformers does), unless
WATTLENS_AGENT_FLOPS=force.

What is counted: the ops in ``torch.utils.flop_counter``'s formula table (matmul, conv,
attention ...), the same set ``FlopCounterMode`` counts. Element-wise work is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_mode(on_flops: Callable[[int | None], None]) -> tuple[Any | None, str | None]:
    """Return (dispatch mode, None) or (None, why FLOPs cannot be counted here).

    ``on_flops(n)`` gets each counted op's FLOPs, or None for an op whose formula failed.
    """
    try:
        from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode
        from torch.utils.flop_counter import flop_registry
    except Exception as exc:  # a torch without these internals
        return None, f"this torch cannot count FLOPs ({exc})"
    try:
        if _get_current_dispatch_mode() is not None:
            return None, "another torch dispatch mode is active; FLOPs not counted to stay out of its way"
    except Exception as exc:
        return None, f"could not inspect torch dispatch modes ({exc})"

    class _FlopMode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(getattr(func, "_overloadpacket", None))
            if formula is not None:
                try:
                    on_flops(int(formula(*args, **kwargs, out_val=out)))
                except Exception:
                    on_flops(None)  # an op we cannot size: counted as such and reported
            return out

    return _FlopMode(), None
