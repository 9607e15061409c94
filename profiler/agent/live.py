"""Live changes to the running main model (issue 5): apply an action at a step boundary, revert it.

Runs inside the target (stdlib + torch only; torch is passed in, never imported here). Every
change keeps what its revert needs *before* it touches anything:

- module swaps (quantize-int8) keep the original child module objects and put them back on their
  parents, so the running model object stays the same and its original weights are untouched;
  the quantized copies are made by torchao (``Int8DynamicActivationInt8WeightConfig``), the same
  backend as ``wattlens optimize``; torchao is imported only when that action is asked for, and a
  target without it gets a refusal that says so;
- weight changes (prune, bf16) keep a CPU clone of each tensor they change and copy it back
  (``param.data = clone``), so revert gives bit-identical weights and outputs.

If applying fails half way, what was done is undone before the refusal is reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

LIVE_ACTIONS = ("quantize-int8", "prune-unstructured:F (0 < F < 1)", "bf16")


class Refused(Exception):
    """The action cannot run live on this model; the message says why."""


def parse_action(action: str) -> tuple[str, float | None]:
    """``("quantize-int8", None)``, ``("prune-unstructured", 0.3)``, ``("bf16", None)``.

    Raises :class:`Refused` for anything else (unknown actions are never executed).
    """
    if action in ("quantize-int8", "bf16"):
        return action, None
    if action.startswith("prune-unstructured:"):
        try:
            amount = float(action.split(":", 1)[1])
        except ValueError:
            amount = -1.0
        if not 0.0 < amount < 1.0:
            raise Refused(f"{action!r}: the pruned fraction must be a number between 0 and 1")
        return "prune-unstructured", amount
    raise Refused(f"unknown live action {action!r}; live actions are: {', '.join(LIVE_ACTIONS)}")


@dataclass
class Applied:
    """What one apply changed, in the order it was changed."""

    id: str
    action: str
    step: int
    swaps: list[tuple[Any, str, Any]] = field(default_factory=list)  # (parent, name, original)
    tensors: list[tuple[Any, str, str, Any]] = field(default_factory=list)  # (module, name, kind, cpu clone)
    hooks: list[Any] = field(default_factory=list)


def _is_conv1d(module: Any) -> bool:
    """transformers' Conv1D (GPT-2): ``y = x @ weight + bias`` with weight (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def _device(model: Any) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.device) if p is not None else "cpu"


def _targets(torch: Any, model: Any) -> list[tuple[Any, str, Any]]:
    """(parent, child name, child) for every nn.Linear / Conv1D below ``model``."""
    out = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear) or _is_conv1d(child):
                out.append((parent, name, child))
    return out


def _save_tensor(rec: Applied, module: Any, name: str, kind: str) -> None:
    table = module._parameters if kind == "param" else module._buffers
    t = table.get(name)
    if t is None:
        return
    if any(m is module and n == name and k == kind for m, n, k, _ in rec.tensors):
        return
    rec.tensors.append((module, name, kind, t.detach().to("cpu", copy=True)))


def apply(torch: Any, model: Any, rec: Applied) -> None:
    """Apply ``rec.action`` to ``model`` in place, filling ``rec`` with what revert needs."""
    kind, amount = parse_action(rec.action)
    if model.training and kind == "quantize-int8":
        raise Refused("quantize-int8 is for inference: the model is in training mode")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notes: not the user's business
            if kind == "quantize-int8":
                _quantize(torch, model, rec)
            elif kind == "prune-unstructured":
                _prune(torch, model, rec, float(amount or 0.0))
            else:
                _bf16(torch, model, rec)
    except BaseException:
        revert(torch, rec)
        raise


def _quantize(torch: Any, model: Any, rec: Applied) -> None:
    device = _device(model)
    if not (device.startswith("cpu") or device.startswith("cuda")):
        raise Refused(f"quantize-int8 has torchao kernels for CPU and CUDA; the model is on {device}")
    targets = _targets(torch, model)
    if not targets:
        raise Refused("the model has no nn.Linear or Conv1D layers to quantize")
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise Refused(
            "quantize-int8 needs torchao in the target's Python environment (pip install torchao); "
            f"it cannot be imported there: {exc}"
        ) from None
    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    for parent, name, child in targets:
        # quantize a copy: the original module (and its float weights) stay as they were
        weight = child.weight.t() if _is_conv1d(child) else child.weight  # Conv1D holds (in, out)
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=child.bias is not None,
                              dtype=weight.dtype, device=weight.device)
        lin.weight.copy_(weight)
        if child.bias is not None:
            lin.bias.copy_(child.bias)
        holder = torch.nn.Sequential(lin)
        quantize_(holder, config)
        q = holder[0]
        q.train(child.training)
        rec.swaps.append((parent, name, child))
        setattr(parent, name, q)


def _prune(torch: Any, model: Any, rec: Applied, amount: float) -> None:
    from torch.nn.utils import prune

    targets = _targets(torch, model)
    if not targets:
        raise Refused("the model has no nn.Linear or Conv1D layers to prune")
    for _, _, child in targets:
        _save_tensor(rec, child, "weight", "param")
        prune.l1_unstructured(child, "weight", amount=amount)
        prune.remove(child, "weight")  # permanent: the mask is folded into the weight


def _bf16(torch: Any, model: Any, rec: Applied) -> None:
    device = _device(model)
    if not device.startswith("cuda"):
        raise Refused(f"bf16 is applied live only where the model runs on CUDA; it runs on {device}")
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and p.is_floating_point():
                _save_tensor(rec, module, name, "param")
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point():
                _save_tensor(rec, module, name, "buffer")
    model.to(torch.bfloat16)

    def cast_inputs(_module: Any, args: Any, kwargs: Any) -> Any:
        def cast(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.bfloat16:
                return v.to(torch.bfloat16)
            return v
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    rec.hooks.append(model.register_forward_pre_hook(cast_inputs, with_kwargs=True))


def revert(torch: Any, rec: Applied) -> None:
    """Undo ``rec``: hooks off, original modules back on their parents, original tensors back."""
    for h in reversed(rec.hooks):
        h.remove()
    for parent, name, original in reversed(rec.swaps):
        setattr(parent, name, original)
    with torch.no_grad():
        for module, name, kind, saved in reversed(rec.tensors):
            table = module._parameters if kind == "param" else module._buffers
            current = table.get(name)
            device = current.device if current is not None else saved.device
            if kind == "param" and current is not None:
                current.data = saved.to(device, copy=True)
            else:
                table[name] = saved.to(device, copy=True)
    rec.hooks, rec.swaps, rec.tensors = [], [], []
