"""Slow work off the GUI thread: a QThreadPool per window, results delivered back on the GUI
thread through queued signals, and a ``wait`` that closing the window uses so no worker outlives
it. Results are routed through slots of the pool (a QObject living on the GUI thread), so they
always run there; after ``shutdown`` late results are dropped instead of touching widgets that
are being destroyed.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

log = logging.getLogger("wattlens.gui")
_ids = itertools.count(1)


class _WorkerSignals(QObject):
    done = Signal(int, object)
    failed = Signal(int, object)
    progress = Signal(int, str, float)


class QtWorker(QRunnable):
    """Runs ``fn(*args, **kwargs)`` in the pool; passes ``progress=`` when ``fn`` accepts it."""

    def __init__(self, signals: _WorkerSignals, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__()
        self.id = next(_ids)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.signals = signals
        try:
            wants_progress = "progress" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            wants_progress = False
        if wants_progress and "progress" not in kwargs:
            self.kwargs["progress"] = self._progress
        self.setAutoDelete(False)  # the pool below holds it until its result is delivered

    def _progress(self, text: str, fraction: float) -> None:
        self.signals.progress.emit(self.id, str(text), float(fraction))

    def run(self) -> None:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - delivered to the GUI as a message
            self.signals.failed.emit(self.id, exc)
        else:
            self.signals.done.emit(self.id, result)


class QtWorkerPool(QObject):
    def __init__(self, parent: QObject | None = None, max_threads: int = 4):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._signals = _WorkerSignals(self)
        self._signals.done.connect(self._on_done)
        self._signals.failed.connect(self._on_failed)
        self._signals.progress.connect(self._on_progress)
        self._live: dict[int, tuple[QtWorker, Callable | None, Callable | None, Callable | None]] = {}
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any,
               on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None,
               on_progress: Callable[[str, float], None] | None = None, **kwargs: Any) -> QtWorker:
        if self._closed:
            raise RuntimeError("the worker pool is shut down")
        w = QtWorker(self._signals, fn, *args, **kwargs)
        self._live[w.id] = (w, on_done, on_error, on_progress)
        self.pool.start(w)
        return w

    @Slot(int, object)
    def _on_done(self, wid: int, result: Any) -> None:
        entry = self._live.pop(wid, None)
        if entry is not None and not self._closed and entry[1] is not None:
            entry[1](result)

    @Slot(int, object)
    def _on_failed(self, wid: int, exc: BaseException) -> None:
        entry = self._live.pop(wid, None)
        if entry is None or self._closed:
            return
        if entry[2] is not None:
            entry[2](exc)
        else:
            log.error("worker failed", exc_info=exc)

    @Slot(int, str, float)
    def _on_progress(self, wid: int, text: str, fraction: float) -> None:
        entry = self._live.get(wid)
        if entry is not None and not self._closed and entry[3] is not None:
            entry[3](text, fraction)

    @property
    def busy(self) -> int:
        """Workers started whose result has not been delivered yet."""
        return len(self._live)

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until every started worker has returned (their results are then queued)."""
        return self.pool.waitForDone(timeout_ms)

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        self._closed = True
        self.pool.clear()
        ok = self.pool.waitForDone(timeout_ms)
        self._live.clear()
        return ok
