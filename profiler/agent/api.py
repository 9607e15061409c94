"""The explicit API a user's script may call. Every function is a harmless no-op without wattlens.

``watch(model)`` names the main model; ``step(samples=None, tokens=None)`` marks a step boundary
(from then on only these calls mark steps); ``knob(name, default)`` returns the knob's current value,
which wattlens may change while the job runs (issue 5 uses it for batch size).
"""

from __future__ import annotations

import os
from typing import Any

from .protocol import ENV_SOCKET, ENV_TOKEN
from .runtime import Agent, log_once

_AGENT: Agent | None = None
_TRIED = False


def activate_from_env() -> Agent | None:
    """Start the agent when wattlens launched this process (its two variables are set).

    Called by the bootstrap ``sitecustomize`` at interpreter start, or lazily by the first API
    call. A connection failure is reported once on stderr and the program runs unprofiled.
    """
    global _AGENT, _TRIED
    if _AGENT is not None or _TRIED:
        return _AGENT
    _TRIED = True
    path = os.environ.get(ENV_SOCKET)
    token = os.environ.get(ENV_TOKEN)
    if not path or not token:
        return None
    try:
        agent = Agent(path, token)
        agent.start()
    except Exception as exc:
        log_once("connect", f"could not connect to wattlens at {path} ({exc}); running without "
                            "profiling")
        return None
    _AGENT = agent
    return agent


def current() -> Agent | None:
    return _AGENT if _AGENT is not None else activate_from_env()


def is_active() -> bool:
    agent = current()
    return agent is not None and not agent._quiet


def watch(model: Any) -> Any:
    """Tell wattlens which module is the model (names are paths from it). Returns ``model``."""
    agent = current()
    if agent is not None:
        agent.watch(model)
    return model


def step(samples: int | None = None, tokens: int | None = None) -> None:
    """Mark the end of one step (and the start of the next) now.

    ``samples``/``tokens`` override what the agent counted from the model's inputs.
    """
    agent = current()
    if agent is not None:
        agent.step(samples, tokens)


def knob(name: str, default: Any) -> Any:
    """Return the current value of a tunable setting, ``default`` until wattlens changes it.

    Call it where the value is used (e.g. each epoch for ``batch_size``) to pick up changes.
    """
    agent = current()
    if agent is None:
        return default
    return agent.knob(name, default)
