"""Optimisation actions: one file per action, one small interface (:class:`Action`).

``parse_actions("prune-heads:0.25,quantize-int8")`` turns the CLI's ``--action`` value into
action objects; a bad spec is a :class:`BadInputError` listing what is valid.
"""

from __future__ import annotations

from collections.abc import Iterable

from wattlens.advisor.actions.base import Action, Applied, ClaimCheck
from wattlens.profiler.errors import BadInputError

__all__ = ["Action", "Applied", "ClaimCheck", "ACTIONS", "VALID_SPECS", "parse_action", "parse_actions"]


def _registry() -> dict[str, type[Action]]:
    from wattlens.advisor.actions.bf16 import Bf16
    from wattlens.advisor.actions.prune_heads import PruneHeads
    from wattlens.advisor.actions.prune_layers import PruneLayers
    from wattlens.advisor.actions.prune_mlp import PruneMlp
    from wattlens.advisor.actions.prune_unstructured import PruneUnstructured
    from wattlens.advisor.actions.quantize_int8 import QuantizeInt8, QuantizeInt8WeightOnly
    from wattlens.advisor.actions.quantize_int8_static import QuantizeInt8Static
    from wattlens.advisor.actions.quantize_lowbit import QuantizeFloat8, QuantizeInt4

    return {c.name: c for c in (QuantizeInt8, QuantizeInt8WeightOnly, QuantizeInt8Static, QuantizeInt4, QuantizeFloat8,
                                Bf16, PruneHeads, PruneMlp, PruneLayers, PruneUnstructured)}


ACTIONS: dict[str, type[Action]] = _registry()
VALID_SPECS = ", ".join(f"{n}:FRACTION" if c.takes_fraction else n for n, c in ACTIONS.items()) + (
    " (FRACTION between 0 and 1, e.g. prune-mlp:0.25)"
)


def _bad(spec: str, why: str) -> BadInputError:
    return BadInputError(f"bad action '{spec}': {why}", hint=f"valid actions: {VALID_SPECS}")


def parse_action(spec: str) -> Action:
    """``"prune-heads:0.25"`` → ``PruneHeads(0.25)``."""
    text = spec.strip()
    name, sep, arg = text.partition(":")
    cls = ACTIONS.get(name.strip())
    if cls is None:
        raise _bad(text, "unknown action")
    if not cls.takes_fraction:
        if sep:
            raise _bad(text, f"{cls.name} takes no argument")
        return cls()
    if not sep or not arg.strip():
        raise _bad(text, f"{cls.name} needs a fraction")
    try:
        fraction = float(arg)
    except ValueError:
        raise _bad(text, f"'{arg}' is not a number") from None
    if not 0 < fraction < 1:
        raise _bad(text, "the fraction must be between 0 and 1 (exclusive)")
    return cls(fraction)


def parse_actions(specs: str | Iterable[str]) -> list[Action]:
    """Parse a comma-separated string (or a list of specs) and check the order makes sense."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    items = [s for s in (i.strip() for i in items) if s]
    if not items:
        raise BadInputError("no action given", hint=f"valid actions: {VALID_SPECS}")
    actions = [parse_action(s) for s in items]
    names = [a.name for a in actions]
    quant = [a.name for a in actions if a.quantizes]
    if quant and "bf16" in names:
        raise BadInputError(
            f"{quant[0]} and bf16 cannot be combined (the quantized weights replace the float ones)",
            hint="choose one of them",
        )
    for i, a in enumerate(actions[:-1]):
        if a.must_be_last:
            raise BadInputError(
                f"{a.spec} must be the last action (its quantized layers cannot be changed further)",
                hint=f"put it last, e.g. --action {','.join([*items[:i], *items[i + 1 :], items[i]])}",
            )
    return actions
