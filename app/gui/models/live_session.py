"""The live session's state and its start / stop / watch logic, in plain Python.

``QtMainWindow`` owns one ``LiveSession``: it runs the work functions this model hands out in
Qt workers, calls back with their results, and shows the messages returned. Everything that
decides — whether a start is allowed, what a stop or a watch tick means, what is finished when
the window closes — lives here, where tests drive it without Qt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from wattlens.app.gui.models.errors import error_text
from wattlens.app.gui.models.live_model import LiveModel
from wattlens.app.gui.models.run_model import LiveRun
from wattlens.app.gui.models.signal import Signal
from wattlens.profiler.errors import WattlensError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchResult:
    """One watch tick: a store-writer problem to show (once per distinct error), and the
    (status, reason) the session should end with, if it ended by itself."""

    writer_error: str | None = None
    end: tuple[str, str] | None = None


class LiveSession:
    """At most one running (or starting) session; ``changed`` fires on every state change."""

    def __init__(self) -> None:
        self.run: LiveRun | None = None
        self.model: LiveModel | None = None
        self.starting = False
        self.stopping = False
        self._pending: LiveRun | None = None  # built by a start worker, not yet delivered
        self._shown_writer_error: str | None = None
        self.changed = Signal()

    @property
    def busy(self) -> bool:
        return self.run is not None or self.starting

    # ---- start ------------------------------------------------------------------------------------
    def refuse_start(self, store, store_error: str | None) -> str | None:
        """Why a new session cannot start now (one line), or None."""
        if self.busy:
            return "a session is already running — stop it on the Live tab first"
        if store is None:
            return f"no database is open: {store_error or 'still opening'} — choose one in Settings"
        return None

    def start_work(self, factory: Callable[[], LiveRun]) -> Callable[[], LiveRun]:
        """The worker's job: build the run, start it (py-spy may take seconds), return it."""
        self.starting = True
        self.changed.emit()

        def work() -> LiveRun:
            run = factory()
            self._pending = run  # finished by shutdown() if the window closes meanwhile
            try:
                run.start()
            except WattlensError as exc:
                if run.launched is not None and run.launched.poll() is None:
                    raise WattlensError(f"{exc} (the launched program, PID {run.launched.pid}, keeps "
                                        "running)") from None
                raise
            return run

        return work

    def started(self, run: LiveRun, grid_g_per_kwh: float | None) -> LiveModel:
        self.starting, self._pending, self.run = False, None, run
        self.model = LiveModel(run.session, grid_g_per_kwh=grid_g_per_kwh, launched_log=run.log_path,
                               command=run.runner.command if run.runner is not None else None)
        self.changed.emit()
        return self.model

    def start_failed(self, exc: BaseException) -> str:
        self.starting, self._pending = False, None
        self.changed.emit()
        return error_text(exc)

    # ---- stop -------------------------------------------------------------------------------------
    def stop_work(self, end_program: bool, status: str, reason: str) -> Callable[[], dict] | None:
        """The worker's job that stops the run, or None when there is nothing to stop."""
        if self.run is None or self.stopping:
            return None
        self.stopping = True
        run = self.run
        return lambda: run.stop(status, reason, end_program)

    def stopped(self, status: str, reason: str) -> tuple[str, bool]:
        """(message, is_error) once the session is saved."""
        run, model = self.run, self.model
        self.run, self.stopping = None, False
        if run is not None and run.session.status == "partial":  # stored, not all of it: say what was lost
            status, reason = run.session.status, run.session.end_reason
        if model is not None:
            model.mark_ended(status, reason)
        self.changed.emit()
        sid = run.session.session_id if run else "?"
        return f"Session {sid} saved ({status}): {reason}.", status in ("failed", "partial")

    def stop_failed(self, exc: BaseException) -> str:
        model = self.model
        self.run, self.stopping = None, False
        if model is not None:
            model.mark_ended("failed", error_text(exc))
        self.changed.emit()
        return error_text(exc)

    # ---- watch ------------------------------------------------------------------------------------
    def watch(self) -> WatchResult:
        """What the window's watch timer should act on now."""
        run = self.run
        if run is None or self.stopping:
            return WatchResult()
        writer = run.session.writer
        err = writer.last_error if writer is not None else None
        shown = None
        if err is not None and str(err) != self._shown_writer_error:
            self._shown_writer_error = str(err)
            shown = f"{error_text(err)} (measuring continues; {writer.pending} records wait to be written)"
        return WatchResult(shown, run.session.end_condition())

    def set_grid(self, grid_g_per_kwh: float | None) -> None:
        if self.model is not None:
            self.model.grid_g_per_kwh = grid_g_per_kwh

    # ---- closing ----------------------------------------------------------------------------------
    def shutdown(self, reason: str = "the wattlens window was closed") -> None:
        """Finish the running and any half-started session as "stopped" (errors are logged:
        nothing is left to show them in)."""
        runs = [r for r in (self.run, self._pending) if r is not None]
        self.run, self._pending = None, None
        for run in runs:
            try:
                run.stop("stopped", reason)
            except WattlensError as exc:
                log.error("finishing the session failed: %s", exc)
