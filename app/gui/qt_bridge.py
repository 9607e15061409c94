"""The bridge between the session's threads and the GUI thread.

``ProfilingSession.on_layers`` / ``on_steps`` call back from the stack-sampler / agent threads.
The bridge's handlers only emit Qt signals; because the bridge lives on the GUI thread, Qt
queues those emissions and the connected slots run on the GUI thread, where models may change.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal


class QtSessionBridge(QObject):
    layers_arrived = Signal(object)  # list[LayerCost]
    step_arrived = Signal(object)  # StepRecord

    def connect_session(self, session) -> None:
        session.on_layers(self._emit_layers)
        session.on_steps(self._emit_step)

    def _emit_layers(self, rows) -> None:  # any thread
        try:
            self.layers_arrived.emit(list(rows))
        except RuntimeError:  # the window (and this bridge) is gone; the store still has the rows
            pass

    def _emit_step(self, step) -> None:  # any thread
        try:
            self.step_arrived.emit(step)
        except RuntimeError:
            pass
