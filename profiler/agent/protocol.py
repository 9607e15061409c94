"""The wire protocol between the in-process agent and the wattlens host.

JSON lines over a Unix stream socket: every line is one JSON object with a ``"type"``. The agent's
first line is a ``hello`` carrying the session token. No pickle, ever: both sides parse with
:func:`decode` and check every message against :data:`AGENT_MESSAGES` / :data:`HOST_COMMANDS`
before acting on it, so a malformed or unknown message is dropped, never executed.

This module is shared by both sides, so it is stdlib only and must not import torch or any other
part of wattlens (the agent side runs in the target's own interpreter).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

PROTOCOL_VERSION = 1

ENV_SOCKET = "WATTLENS_AGENT_SOCKET"
ENV_TOKEN = "WATTLENS_AGENT_TOKEN"
# Set by each agent for its own children: 0 in the first Python process of a run, 1 in the
# Python processes it starts (DataLoader spawn workers, torchrun workers), and so on.
ENV_DEPTH = "WATTLENS_AGENT_DEPTH"
# Optional tuning, read by the agent.
# minimum layer-cost window (default 100 ms: the power sampling interval; shorter windows add
# per-window cost to the target and no energy detail)
ENV_WINDOW_MS = "WATTLENS_AGENT_WINDOW_MS"
# how module calls are timed: "wrap" (nn.Module.__call__ wrapped, default) or "hooks" (global
# forward hooks: the older, slower path, kept as a fallback)
ENV_CALLS = "WATTLENS_AGENT_CALLS"
ENV_FLOPS = "WATTLENS_AGENT_FLOPS"  # "0" off, "force" count on the first forward, else auto

MAX_LINE_BYTES = 16 * 1024 * 1024
# The deepest nesting a message may have. Ours are at most 4 deep (a layers message: object →
# list → object → scalar); anything much deeper is refused before a validator walks it, and a
# line nested deeper than the parser's recursion limit is refused, not raised (issue 9).
MAX_DEPTH = 32

# ---------------------------------------------------------------------------------------------
# Field checkers: each takes a value and says whether it is acceptable.


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_nonneg_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_scalar(v: Any) -> bool:
    """A knob value: a JSON scalar (no containers, no NaN)."""
    if v is None or isinstance(v, (bool, str)) or _is_int(v):
        return True
    return isinstance(v, float) and v == v and v not in (float("inf"), float("-inf"))


def _is_call(v: Any) -> bool:
    """One timed collective call: [op name, start ns, end ns] with end ≥ start."""
    return (isinstance(v, list) and len(v) == 3 and _is_str(v[0]) and _is_nonneg_int(v[1])
            and _is_nonneg_int(v[2]) and v[2] >= v[1])


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _obj(schema: dict[str, tuple[Callable[[Any], bool], bool]]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and check_fields(v, schema) is None


Schema = dict[str, tuple[Callable[[Any], bool], bool]]  # field -> (checker, required)


def check_fields(msg: dict[str, Any], schema: Schema) -> str | None:
    """Return None when ``msg`` fits ``schema``, else a short reason."""
    for name, (check, required) in schema.items():
        if name not in msg:
            if required:
                return f"missing field {name!r}"
            continue
        if not check(msg[name]):
            return f"field {name!r} has the wrong type or value"
    return None


_STEP: Schema = {
    "step": (_is_nonneg_int, True),
    "t_start_ns": (_is_nonneg_int, True),
    "t_end_ns": (_is_nonneg_int, True),
    "samples": (_opt(_is_nonneg_int), False),
    "tokens": (_opt(_is_nonneg_int), False),
}

PHASES = ("forward", "backward")

_ROW: Schema = {
    "path": (_is_str, True),
    "phase": (lambda v: v in PHASES, True),
    "time_ns": (_is_nonneg_int, True),
    "self_time_ns": (_is_nonneg_int, True),
    "calls": (_is_nonneg_int, False),
    "flops": (_opt(_is_nonneg_int), False),
    "params": (_opt(_is_nonneg_int), False),
}

_MODULE: Schema = {
    "path": (_is_str, True),
    "class": (_is_str, True),
    "params": (_is_nonneg_int, True),
    "bytes": (_is_nonneg_int, True),
}

# Messages the agent may send. The first one on a connection must be "hello".
AGENT_MESSAGES: dict[str, Schema] = {
    "hello": {
        "token": (_is_str, True),
        "protocol": (_is_int, True),
        "pid": (_is_int, True),
        "ppid": (_opt(_is_int), False),
        "depth": (_is_nonneg_int, False),
        "python": (_is_str, True),
        "executable": (_opt(_is_str), False),
        "argv": (_list_of(_is_str), False),
        "torch": (_opt(_is_str), False),
        "t_ns": (_is_nonneg_int, True),
        # a torch.distributed job's rank (RANK / LOCAL_RANK / WORLD_SIZE), absent outside one
        "rank": (_opt(_is_nonneg_int), False),
        "local_rank": (_opt(_is_nonneg_int), False),
        "world_size": (_opt(_is_nonneg_int), False),
        "local_world_size": (_opt(_is_nonneg_int), False),  # ranks on this host
    },
    "model": {
        "t_ns": (_is_nonneg_int, True),
        "prefix": (_is_str, True),
        "class": (_is_str, True),
        "main": (lambda v: isinstance(v, bool), True),
        "params": (_is_nonneg_int, True),
        "bytes": (_is_nonneg_int, True),
        "device": (_opt(_is_str), False),
        "dtype": (_opt(_is_str), False),
        "timing": (_is_str, True),
        "torch": (_opt(_is_str), False),
        "source": (_opt(_is_str), False),  # the local folder from_pretrained loaded it from
        "modules": (_list_of(_obj(_MODULE)), True),
    },
    "steps": {
        "steps": (_list_of(_obj(_STEP)), True),
    },
    "layers": {
        "t_start_ns": (_is_nonneg_int, True),
        "t_end_ns": (_is_nonneg_int, True),
        "first_step": (_opt(_is_nonneg_int), False),
        "last_step": (_opt(_is_nonneg_int), False),
        "timing": (_is_str, True),
        "rows": (_list_of(_obj(_ROW)), True),
        # optimizer.step() time in the window (CPU timing; absent when none was timed)
        "optimizer_ns": (_opt(_is_nonneg_int), False),
        "optimizer_calls": (_opt(_is_nonneg_int), False),
    },
    "event": {
        "t_ns": (_is_nonneg_int, True),
        "kind": (_is_str, True),
        "message": (_is_str, True),
        "data": (lambda v: isinstance(v, dict), False),
    },
    "knob": {"t_ns": (_is_nonneg_int, True), "name": (_is_str, True), "value": (_is_scalar, True)},
    "knob_set": {
        "t_ns": (_is_nonneg_int, True),
        "name": (_is_str, True),
        "value": (_is_scalar, True),
    },
    "refused": {
        "t_ns": (_is_nonneg_int, True),
        "command": (_is_str, True),
        "reason": (_is_str, True),
    },
    # "error": the uncaught exception that ended the program (in a multiprocessing child: the one
    # that ended its run()); "dropped_step": whether the step it cut short was left out (a step that
    # had done its work is sent); "rank": with an error, torch.distributed's rank then, if any (a
    # torch.multiprocessing.spawn worker's hello has none: no launcher exported RANK)
    "bye": {"t_ns": (_is_nonneg_int, True), "steps": (_is_nonneg_int, False), "error": (_opt(_is_str), False),
            "dropped_step": (lambda v: isinstance(v, bool), False), "rank": (_opt(_is_nonneg_int), False)},
    # torch.distributed collective calls timed in the target (agent/dist.py): [op, t0_ns, t1_ns]
    "collectives": {"calls": (_list_of(_is_call), True)},
    # live apply / revert (issue 5): "step" is the first step that ran with the change (applied)
    # or without it (reverted); steps before it ran as before.
    "applied": {
        "t_ns": (_is_nonneg_int, True),
        "id": (_is_str, True),
        "action": (_is_str, True),
        "step": (_is_nonneg_int, True),
    },
    "reverted": {
        "t_ns": (_is_nonneg_int, True),
        "id": (_is_str, True),
        "action": (_is_str, True),
        "step": (_is_nonneg_int, True),
    },
    "apply-refused": {
        "t_ns": (_is_nonneg_int, True),
        "id": (_is_str, True),
        "action": (_is_str, True),  # "revert" for a refused revert
        "step": (_opt(_is_nonneg_int), False),
        "reason": (_is_str, True),
    },
}

# Commands the host may send. "apply"/"revert" run in the agent at the next step boundary.
HOST_COMMANDS: dict[str, Schema] = {
    "set_knob": {"name": (_is_str, True), "value": (_is_scalar, True)},
    "apply": {"action": (_is_str, True), "id": (_is_str, True)},
    "revert": {"id": (_is_str, True)},
}


def is_knob_value(value: Any) -> bool:
    """Knob values are JSON scalars: int, float (finite), str, bool or None."""
    return _is_scalar(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a message object; raise ValueError when it is not one.

    NaN/Infinity are refused (they are not JSON), so is nesting deeper than :data:`MAX_DEPTH`,
    and the top level must be an object with a string ``type``.
    """
    try:
        msg = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if _depth_exceeds(msg, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    if not isinstance(msg.get("type"), str):
        raise ValueError("a message needs a string 'type'")
    return msg


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def encode(msg: dict[str, Any]) -> bytes:
    """One JSON line. ``allow_nan=False``: we never send what :func:`decode` would refuse."""
    return (json.dumps(msg, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def validate(msg: dict[str, Any], table: dict[str, Schema]) -> str | None:
    """None when ``msg`` is a known type with well-typed fields, else a short reason."""
    schema = table.get(msg["type"])
    if schema is None:
        return f"unknown message type {msg['type']!r}"
    return check_fields(msg, schema)
