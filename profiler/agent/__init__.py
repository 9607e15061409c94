"""The wattlens in-process agent (runs inside the profiled program).

Stdlib + torch only, relative imports only, torch imported lazily: ``wattlens run`` puts
``bootstrap/`` on the child's PYTHONPATH, and its ``sitecustomize`` loads this folder as the
private package ``_wattlens_agent`` in the target's own interpreter, where wattlens itself may not
be installed. See ``tracker.py`` for what is measured and how.

Explicit API (no-ops when the program was not started by wattlens)::

    from wattlens.profiler import agent
    agent.watch(model)
    agent.step(samples=None, tokens=None)
    bs = agent.knob("batch_size", 32)
    trainer.add_callback(agent.WattlensCallback())

When the bootstrap already started the agent, this package (imported as
``wattlens.profiler.agent``) forwards to that running copy, so both names drive one agent.
"""

from __future__ import annotations

import sys as _sys
from typing import Any

BOOTSTRAP_PACKAGE = "_wattlens_agent"

_running = _sys.modules.get(BOOTSTRAP_PACKAGE)
if _running is not None and _running.__name__ != __name__ and hasattr(_running, "_api"):
    _api = _running._api
else:
    from . import api as _api

watch = _api.watch
step = _api.step
knob = _api.knob
is_active = _api.is_active
activate_from_env = _api.activate_from_env

__all__ = ["watch", "step", "knob", "is_active", "activate_from_env", "WattlensCallback"]


def __getattr__(name: str) -> Any:
    if name == "WattlensCallback":
        from .callback import callback_class

        return callback_class(watch, step)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
