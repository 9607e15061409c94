"""Starting and ending what the live view shows: attach to a PID, or launch a command in run
mode (``wattlens.profiler.runmode.RunSession``: launcher + in-process agent + session).

Plain Python; the Qt view runs :meth:`LiveRun.start` and :meth:`LiveRun.stop` in workers
(``session.start`` may wait seconds for py-spy to attach; ``stop`` joins threads and writes).

The target is never killed, except a program the user launched from the app *and* chose to end.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wattlens.app.gui.models.settings_model import GuiSettings
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.session import command_name


@dataclass(frozen=True)
class LaunchRequest:
    command: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, command_text: str, cwd_text: str = "", env_text: str = "") -> LaunchRequest:
        """The Launch dialog's three fields → a request; one BadInputError line per problem."""
        try:
            command = shlex.split(command_text)
        except ValueError as exc:
            raise BadInputError(f"cannot read the command line: {exc}",
                                hint="check the quotes, e.g. python train.py --lr 0.1") from None
        if not command:
            raise BadInputError("no command given", hint="type the command to run, e.g. python train.py")
        cwd = cwd_text.strip() or None
        if cwd is not None:
            path = Path(cwd).expanduser()
            if not path.is_dir():
                raise BadInputError(f"working directory {cwd} does not exist",
                                    hint="choose an existing folder or leave it empty")
            cwd = str(path)
        env = {}
        for n, line in enumerate(env_text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not key or " " in key:
                raise BadInputError(f"environment line {n} '{line}' is not NAME=VALUE",
                                    hint="write one NAME=VALUE per line")
            env[key] = value
        return cls(command, cwd, env)


def _log_file():
    """Where a launched program's output goes, so nothing is lost when the app has no terminal."""
    return tempfile.NamedTemporaryFile(prefix="wattlens-run-", suffix=".log", delete=False)


class LiveRun:
    """One profiling run owned by the GUI: an attach session, or a run-mode ``RunSession``
    (launcher + in-process agent + session) for a program launched from the app."""

    def __init__(self, session=None, *, runner=None, log_file=None):
        self._session = session
        self.runner = runner  # wattlens.profiler.runmode.RunSession in run mode
        self._log = log_file  # the launched program's output file (closed once it has started)
        self.log_path: str | None = log_file.name if log_file is not None else None

    @property
    def session(self):
        return self.runner.session if self.runner is not None else self._session

    @property
    def launched(self) -> subprocess.Popen | None:
        return self.runner.proc if self.runner is not None else None

    @classmethod
    def attach(cls, store, settings: GuiSettings, pid: int, *, name: str | None = None,
               discovery=None) -> LiveRun:
        """Build (not start) a session on a running PID. Raises TargetNotFoundError /
        TargetAccessError with the one-line fix."""
        from wattlens.profiler.process import Target, refuse_self
        from wattlens.profiler.session import ProfilingSession

        refuse_self(pid)
        target = Target(pid)
        return cls(ProfilingSession(
            store, target=target, kind="attach", name=name, interval_s=settings.interval_s,
            discovery=discovery or _discover(settings), stacks=settings.stacks,
            stack_rate_hz=settings.stack_rate_hz, grid_g_per_kwh=settings.grid_g_per_kwh,
            settings={"gui": True, "cpu_tdp_w": settings.cpu_tdp_w}))

    @classmethod
    def launch(cls, store, settings: GuiSettings, req: LaunchRequest, *, name: str | None = None,
               discovery=None) -> LiveRun:
        """Build a run-mode session; ``start`` launches the program with the in-process agent
        (steps and per-module timing arrive through the agent link)."""
        from wattlens.profiler.runmode import RunSession

        log = _log_file()
        runner = RunSession(store, req.command, cwd=req.cwd, env={**os.environ, **req.env},
                            name=name or command_name(req.command), interval_s=settings.interval_s,
                            discovery=discovery or _discover(settings), stdout=log,
                            stderr=subprocess.STDOUT, grid_g_per_kwh=settings.grid_g_per_kwh)
        return cls(runner=runner, log_file=log)

    # ---- lifecycle (workers) -------------------------------------------------------------------
    def start(self) -> int:
        try:
            return self.runner.start() if self.runner is not None else self._session.start()
        finally:
            if self._log is not None:  # the child holds its own copy of the file
                self._log.close()

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user",
             end_program: bool = False) -> dict:
        """Finalise the session; end the launched program only when asked (never an attached one)."""
        try:
            session = self.session
            if session is None or session.status != "running":
                return (session.summary or {}) if session is not None else {}
            if self.runner is not None:
                return self.runner.stop(status, reason)
            return session.stop(status, reason)
        finally:
            if end_program:
                self.end_launched()

    def end_launched(self, timeout_s: float = 5.0) -> None:
        p = self.launched
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout_s)

    @property
    def is_launched(self) -> bool:
        return self.runner is not None


def _discover(settings: GuiSettings):
    from wattlens.profiler.sources import discover

    return discover(cpu_tdp_w=settings.effective_tdp_w())
