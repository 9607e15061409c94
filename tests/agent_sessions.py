"""Record a real `run`-mode session in a test: a child under ``launch()`` with a live AgentServer
feeding a ProfilingSession, as `wattlens run` wires them (no CLI, so the test holds the Store)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from wattlens.profiler.agentlink import AgentServer
from wattlens.profiler.launch import launch
from wattlens.profiler.process import Target
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.sources import discover
from wattlens.profiler.store import Store


def record_agent_session(store: Store, argv: Sequence[str], *, name: str, wait_s: float) -> int:
    """Run ``argv`` (a child that prints "ready" once its model is built) to its end under the agent;
    returns the stored session's id."""
    holder: dict = {}

    def put(item):
        s = holder.get("s")
        if s is not None and s.writer is not None:
            s.writer.put(item)

    server = AgentServer(
        on_step=lambda st: holder["s"].add_step(st),
        on_layer_costs=lambda rows: holder["s"].add_layer_costs(rows),
        on_event=put,
        on_hello=lambda info: holder["s"].event("agent-hello", "agent connected", **info),
        energy_between=lambda a, b: holder["s"].attributed_energy_between(a, b),
        energy_wait_s=1.0)
    child = launch(list(argv), server=server, stdout=subprocess.PIPE, text=True)
    try:
        session = ProfilingSession(store, target=Target(child.pid), kind="run", name=name,
                                   discovery=discover(gpu=False))
        holder["s"] = session
        sid = session.start()
        assert child.stdout.readline().strip() == "ready"
        child.wait(timeout=wait_s)
        server.stop()
        session.stop("target-exited", "the target finished")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        child.stdout.close()
        server.stop()
    return sid
