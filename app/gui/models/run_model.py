"""Starting and ending what the live view shows: attach to a PID, or launch a command and attach
to it. Plain Python; the Qt view runs :meth:`LiveRun.start` and :meth:`LiveRun.stop` in workers
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
from wattlens.profiler.errors import BadInputError, TargetNotFoundError, WattlensError


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


def launch_process(req: LaunchRequest) -> tuple[subprocess.Popen, str]:
    """Start the command; its output goes to a log file (returned) so nothing is lost when the
    app has no terminal.

    TODO(run mode): use ``wattlens.profiler.launch.launch(command, cwd=, env=,
    server=AgentServer(...))`` once it exists, so launched programs get the in-process agent
    (per-layer timing and steps); until then a launched program is measured like an attached one.
    """
    log = tempfile.NamedTemporaryFile(prefix="wattlens-run-", suffix=".log", delete=False)
    try:
        proc = subprocess.Popen(req.command, cwd=req.cwd, env={**os.environ, **req.env},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        log.close()
        os.unlink(log.name)
        raise BadInputError(f"command not found: {req.command[0]}",
                            hint="give the full path or check PATH (e.g. python3 train.py)") from None
    except PermissionError:
        log.close()
        os.unlink(log.name)
        raise BadInputError(f"not allowed to run {req.command[0]}", hint="check that it is executable") from None
    except OSError as exc:
        log.close()
        os.unlink(log.name)
        raise WattlensError(f"cannot start {req.command[0]}: {exc.strerror or exc}") from None
    log.close()
    return proc, log.name


class LiveRun:
    """One profiling run owned by the GUI: the session, and the process if we launched it."""

    def __init__(self, session, *, launched: subprocess.Popen | None = None, log_path: str | None = None):
        self.session = session
        self.launched = launched
        self.log_path = log_path

    @classmethod
    def attach(cls, store, settings: GuiSettings, pid: int, *, name: str | None = None,
               discovery=None) -> LiveRun:
        """Build (not start) a session on a running PID. Raises TargetNotFoundError /
        TargetAccessError with the one-line fix."""
        from wattlens.profiler.process import Target

        target = Target(pid)
        return cls(cls._session(store, settings, target, "attach", name, discovery))

    @classmethod
    def launch(cls, store, settings: GuiSettings, req: LaunchRequest, *, name: str | None = None,
               discovery=None) -> LiveRun:
        from wattlens.profiler.process import Target

        proc, log_path = launch_process(req)
        try:
            target = Target(proc.pid)
        except TargetNotFoundError:
            code = proc.wait()
            raise WattlensError(f"{req.command[0]} exited at once with exit code {code}",
                                hint=f"see its output in {log_path}") from None
        session_name = name or f"{os.path.basename(req.command[0])} {' '.join(req.command[1:])}"[:120]
        return cls(cls._session(store, settings, target, "run", session_name, discovery),
                   launched=proc, log_path=log_path)

    @staticmethod
    def _session(store, settings: GuiSettings, target, kind: str, name: str | None, discovery):
        from wattlens.profiler.session import ProfilingSession

        if discovery is None:
            from wattlens.profiler.sources import discover

            discovery = discover(cpu_tdp_w=settings.effective_tdp_w())
        return ProfilingSession(
            store, target=target, kind=kind, name=name, interval_s=settings.interval_s,
            discovery=discovery, stacks=settings.stacks, stack_rate_hz=settings.stack_rate_hz,
            grid_g_per_kwh=settings.grid_g_per_kwh,
            settings={"gui": True, "cpu_tdp_w": settings.cpu_tdp_w})

    # ---- lifecycle (workers) -------------------------------------------------------------------
    def start(self) -> int:
        return self.session.start()

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user",
             end_program: bool = False) -> dict:
        """Finalise the session; end the launched program only when asked (never an attached one)."""
        try:
            if self.session.status != "running":
                return self.session.summary or {}
            return self.session.stop(status, reason)
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
        return self.launched is not None
