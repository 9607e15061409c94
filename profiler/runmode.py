"""Run mode: launch a command with the in-process agent and profile it as one session.

``RunSession`` ties together the launcher, the AgentServer (steps, per-instance layer costs,
knobs) and a ProfilingSession (power, attribution, store). Used by ``wattlens run``, the app's
Launch dialog and ``wattlens demo``.

Order on the way out matters: the agent link is stopped first, so steps still waiting for their
energy get it from the sampler that is still running; then the session stops and the writer
drains everything into the store.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wattlens.profiler.agentlink import AgentServer
from wattlens.profiler.launch import launch
from wattlens.profiler.process import Target
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.session import ProfilingSession, run_until_end
from wattlens.profiler.sources import Discovery


class RunSession:
    def __init__(self, store, command: Sequence[str], *, cwd: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None, name: str | None = None, interval_s: float = 0.1,
                 duration_s: float | None = None, discovery: Discovery | None = None,
                 stdout=None, stderr=None, grid_g_per_kwh: float | None = None):
        self.store = store
        self.command = [str(c) for c in command]
        self.cwd, self.env = cwd, env
        self.name = name or " ".join(self.command)[:120]
        self.interval_s, self.duration_s = interval_s, duration_s
        self.discovery = discovery
        self.stdout, self.stderr = stdout, stderr
        self.grid_g_per_kwh = grid_g_per_kwh
        self.session: ProfilingSession | None = None
        self.server: AgentServer | None = None
        self.proc: subprocess.Popen | None = None
        self.agent_info: dict[str, Any] = {}
        self._early: list[Any] = []  # records that arrive before the session exists

    # ---- agent callbacks (listener thread) ----------------------------------------------------
    def _on_step(self, step: StepRecord) -> None:
        self._deliver(step)

    def _on_layers(self, rows: list[LayerCost]) -> None:
        self._deliver(rows)

    def _on_event(self, ev: EventRecord) -> None:
        self._deliver(ev)

    def _on_hello(self, info: dict[str, Any]) -> None:
        self.agent_info = dict(info)
        self._deliver(EventRecord(time.monotonic_ns(), "agent-hello", "agent reported its process and models",
                                 dict(info)))

    def _deliver(self, item) -> None:
        s = self.session
        if s is None or s.writer is None:
            self._early.append(item)
            return
        if isinstance(item, StepRecord):
            s.add_step(item)
        elif isinstance(item, list):
            s.add_layer_costs(item)
        else:
            s.writer.put(item)

    def _energy_between(self, t0_ns: int, t1_ns: int) -> float | None:
        return self.session.attributed_energy_between(t0_ns, t1_ns) if self.session else None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> int:
        self.server = AgentServer(on_step=self._on_step, on_layer_costs=self._on_layers,
                                  on_event=self._on_event, on_hello=self._on_hello,
                                  energy_between=self._energy_between)
        try:
            self.proc = launch(self.command, cwd=self.cwd, env=self.env, server=self.server,
                               stdout=self.stdout, stderr=self.stderr)
            target = Target(self.proc.pid)
            if not target.cmdline:  # read straight after exec: /proc may not have it yet
                target.cmdline = list(self.command)
            self.session = ProfilingSession(
                self.store, target=target, kind="run", name=self.name, interval_s=self.interval_s,
                duration_s=self.duration_s, discovery=self.discovery, stacks=False,
                settings={"command": self.command, "cwd": str(self.cwd) if self.cwd else None},
                grid_g_per_kwh=self.grid_g_per_kwh)
            sid = self.session.start()
        except BaseException:
            self.server.stop()
            if self.proc is not None and self.proc.poll() is None and self.session is None:
                self.proc.terminate()
            raise
        early, self._early = self._early, []
        for item in early:
            self._deliver(item)
        return sid

    def end_condition(self) -> tuple[str, str] | None:
        return self.session.end_condition() if self.session else None

    def set_knob(self, name: str, value) -> None:
        self.server.set_knob(name, value)
        self.session.event("knob", f"set {name} = {value!r}", name=name, value=value)

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user") -> dict:
        if self.server is not None:
            self.server.stop()
        summary = self.session.stop(status, reason) if self.session else {}
        if self.proc is not None:
            # Target.exit_code() may have reaped the child already (then Popen reports 0): prefer it
            code = self.session.exit_code if self.session and self.session.exit_code is not None else self.proc.poll()
            summary.setdefault("exit_code", code)
        return summary

    def run(self, poll_s: float = 0.1, on_tick: Callable[[RunSession], None] | None = None) -> dict:
        """Block until the command exits or the duration passes (Ctrl-C stops measuring)."""
        return run_until_end(self, poll_s, on_tick)
