"""Prometheus metrics of a live session (``--metrics-port`` on ``attach`` and ``run``).

The exporter never slows the sampler: its sink only stores the newest value of each series in a
dict (one assignment per point); the numbers are turned into metric families when Prometheus
scrapes, on the HTTP server's own thread. ``prometheus_client`` is imported only when an exporter
is built, so the CLI's import path stays light.

Metrics (labels ``source``, ``method``, ``scope``, ``host``, ``pid``, ``rank``):

- ``wattlens_energy_joules_total`` — counter. ``scope="machine"``: the source's own energy
  (``method`` = counter | polled | estimated, as the source measures it); ``scope="target"``: the
  target's attributed share of that source (``method`` = ``attributed-<source method>``). There is
  no all-sources series, so ``sum by (scope)`` never counts a source twice.
- ``wattlens_power_watts`` — gauge, same labels.
- ``wattlens_steps_total`` — counter of training/inference steps the agent reported, per rank.
- ``wattlens_step_energy_joules`` — summary (count, sum) of the attributed energy of those steps
  that have one, per rank.

``rank`` is the job rank a step came from (``""`` where there is none: machine and whole-target
series, single-process jobs).
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Sequence

from wattlens.profiler.errors import BadInputError
from wattlens.profiler.records import SamplePoint, StepRecord

ENERGY = "wattlens_energy_joules"  # a counter family: exposed as ..._total
POWER = "wattlens_power_watts"
STEPS = "wattlens_steps"  # exposed as wattlens_steps_total
STEP_ENERGY = "wattlens_step_energy_joules"
LABELS = ("source", "method", "scope", "host", "pid", "rank")
STEP_LABELS = ("host", "pid", "rank")


class MetricsPortError(BadInputError):
    """The metrics port cannot be bound (taken, privileged, bad address)."""


class MetricsExporter:
    """Serves ``/metrics`` at ``addr:port`` while a session measures.

    ``start()`` binds the port (before the session starts, so a taken port costs nothing);
    ``attach(session)`` feeds it from a started :class:`ProfilingSession`; ``stop()`` closes it.
    """

    def __init__(self, port: int, addr: str = "127.0.0.1", *, host: str | None = None):
        if not 0 <= port <= 65535:
            raise MetricsPortError(f"--metrics-port {port}: not a TCP port",
                                   hint="give a number from 1 to 65535 (0 picks a free one)")
        self.addr, self.port = addr, port
        self.host = host or socket.gethostname()
        self.pid = ""
        self._sources: dict[str, str] = {}  # source id → its method
        self._latest: dict[str, float] = {}  # series key → newest value (written by the sampler)
        self._steps: dict[str, list[float]] = {}  # rank → [steps, steps with energy, energy sum]
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # ---- serving -------------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.addr, registry=registry)
        except OSError as exc:
            taken = getattr(exc, "errno", None) in (errno.EADDRINUSE, errno.EACCES)
            raise MetricsPortError(
                f"cannot serve metrics on {self._host}:{self.port}: {exc.strerror or exc}",
                hint="pick a free port with --metrics-port (or stop what holds it)" if taken else
                "give --metrics-addr an address of this machine (127.0.0.1, 0.0.0.0, ::1, or one `ip addr` "
                "lists)") from None
        self.port = self._server.server_port
        return self.port

    @property
    def _host(self) -> str:
        """The address as a URL writes it (an IPv6 one in brackets)."""
        return f"[{self.addr}]" if ":" in self.addr else self.addr

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- feeding -------------------------------------------------------------------------------
    def attach(self, session) -> None:
        """Follow a started ProfilingSession: its sampler's points and its steps."""
        self.pid = str(session.target.pid) if session.target is not None else ""
        self._sources = {s.id: s.method for s in session.discovery.usable}
        session.on_steps(self.add_step)
        session.sampler.sinks.append(self)

    def __call__(self, points: list[SamplePoint]) -> None:  # the sampler's sink: keep it cheap
        latest = self._latest
        for p in points:
            latest[p.key] = p.value

    def add_step(self, step: StepRecord) -> None:
        rank = getattr(step, "rank", None)
        key = "" if rank is None else str(rank)
        with self._lock:
            acc = self._steps.setdefault(key, [0, 0, 0.0])
            acc[0] += 1
            if step.energy_j is not None:
                acc[1] += 1
                acc[2] += step.energy_j

    # ---- scraping (the HTTP server's thread) -----------------------------------------------------
    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        latest = dict(self._latest)
        energy = CounterMetricFamily(ENERGY, "Energy measured (scope=machine) or attributed to the "
                                     "target (scope=target), joules", labels=LABELS)
        power = GaugeMetricFamily(POWER, "Power measured (scope=machine) or attributed to the target "
                                  "(scope=target), watts", labels=LABELS)
        for sid, method in self._sources.items():
            for scope, prefix, how in (("machine", "", method), ("target", "target/", f"attributed-{method}")):
                labels = self._labels(sid, how, scope)
                e = latest.get(f"{prefix}{sid}/energy_j")
                if e is not None:
                    energy.add_metric(labels, e)
                p = latest.get(f"{prefix}{sid}/power_w")
                if p is not None:
                    power.add_metric(labels, p)
        yield energy
        yield power
        steps = CounterMetricFamily(STEPS, "Steps the in-process agent reported", labels=STEP_LABELS)
        step_energy = SummaryMetricFamily(STEP_ENERGY, "Attributed energy per step, joules (steps with "
                                          "a measured energy only)", labels=STEP_LABELS)
        with self._lock:
            per_rank = {k: list(v) for k, v in self._steps.items()}
        for rank, (n, n_e, sum_e) in sorted(per_rank.items()):
            labels = [self.host, self.pid, rank]
            steps.add_metric(labels, n)
            step_energy.add_metric(labels, count_value=n_e, sum_value=sum_e)
        yield steps
        yield step_energy

    def _labels(self, source: str, method: str, scope: str) -> Sequence[str]:
        return [source, method, scope, self.host, self.pid if scope == "target" else "", ""]
