"""A minimal observer for models: views ``connect`` handlers, the model ``emit``s.

Deliberately not thread-safe: a model is changed on one thread (the GUI thread). Callbacks from
other threads (the sampler, the stack sampler) go through the Qt bridge, which re-emits them as
queued Qt signals on the GUI thread (see ``qt_bridge.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Signal:
    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[..., Any] | None = None) -> None:
        """Remove one callback, or all of them when ``callback`` is None."""
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for cb in list(self._callbacks):
            cb(*args)
