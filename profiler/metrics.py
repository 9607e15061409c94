"""Prometheus metrics of a live session (``--metrics-port`` on ``attach`` and ``run``).

The exporter never slows the sampler: its sink only stores the newest value of each series in a
dict (one assignment per point); the numbers are turned into metric families when Prometheus
scrapes, on the HTTP server's own thread. ``prometheus_client`` is imported only when an exporter
is built, so the CLI's import path stays light.

Metrics. Each series carries only the labels it can have: no label is ever sent empty (Prometheus
reads an empty label as an absent one, but users and joins trip over ``pid=""``):

- ``wattlens_energy_joules_total`` — counter. ``scope="machine"``, labels ``source, method, scope,
  host``: the source's own energy (``method`` = counter | polled | estimated, as the source
  measures it). ``scope="target"``, labels ``source, method, scope, host, pid``: the target's
  attributed share of that source (``method`` = ``attributed-<source method>``; ``pid``: the
  target, the launcher of a multi-rank job). There is no all-sources series, so ``sum by
  (scope)`` never counts a source twice; a machine series has no ``pid`` (it is not a process's).
- ``wattlens_power_watts`` — gauge, the same series and labels.
- ``wattlens_rank_energy_joules_total`` — counter, labels ``host, pid, rank, method``: each rank of
  a torch.distributed job under ``run`` (``pid``: the rank's process), its part of the target's
  attributed energy (profiler/rank_energy.py). ``method`` is how it was apportioned, in the words
  the reports' rank table uses ("per-rank CPU time + GPU per-process share of its device"; an
  "equal split of …" where a rank's own figures could not be had). The HELP text says when the
  figures are an estimate (a source is the CPU power model, or a rank is an equal split). A
  method that changes during the session (a fallback that starts) continues the counter under
  the new label value, so aggregate ``by (host, rank)`` rather than summing over ``method``. Σ
  ranks ≤ the target's energy: the launcher and the start-up before the ranks reported are in
  no rank. No series for a single-process job; not served under ``attach``.
- ``wattlens_steps_total`` — counter of training/inference steps the agent reported; labels
  ``host, pid, rank`` for a rank of a multi-rank job (``pid``: that rank's process), ``host,
  pid`` for a single-process job (``pid``: the target).
- ``wattlens_step_energy_joules`` — summary (count, sum) of the attributed energy of those steps
  that have one, same labels as the steps.

Earlier versions put ``rank=""`` on every energy and power series, ``pid=""`` on machine series
and ``rank=""`` on a single-process job's steps; the metric names are unchanged, so queries that
select by ``scope``, ``host``, ``pid`` or ``rank`` read the same (an absent label matches ``""``).

HTTP: ``GET /metrics`` serves the metrics; ``HEAD /metrics`` answers 200 with the same headers
and no body (monitors and load balancers probe with HEAD; prometheus_client's own handler said
405); ``/`` is a short page that links to ``/metrics`` (prometheus_client served the metrics on
every path); any other path is 404. ``OPTIONS`` says ``Allow: OPTIONS, GET, HEAD``.
"""

from __future__ import annotations

import errno
import html
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from wattlens.profiler import rank_energy
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.records import SamplePoint, StepRecord

ENERGY = "wattlens_energy_joules"  # a counter family: exposed as ..._total
POWER = "wattlens_power_watts"
RANK_ENERGY = "wattlens_rank_energy_joules"  # exposed as wattlens_rank_energy_joules_total
STEPS = "wattlens_steps"  # exposed as wattlens_steps_total
STEP_ENERGY = "wattlens_step_energy_joules"
METRICS_PATH = "/metrics"
ALLOW = "OPTIONS, GET, HEAD"
# the order a rank's methods are named in when several appear between two scrapes: the split
# charges the CPU before the GPUs each tick, as the rank-energy events (the reports' order) come
_METHOD_ORDER = (rank_energy.CPU_BY_TIME, rank_energy.CPU_EQUAL, rank_energy.GPU_BY_PROCESS,
                 rank_energy.GPU_SOLE, rank_energy.GPU_BY_DEVICE_MAP, rank_energy.GPU_EQUAL)
_EQUAL_SPLITS = (rank_energy.CPU_EQUAL, rank_energy.GPU_EQUAL)


class MetricsPortError(BadInputError):
    """The metrics port cannot be bound (taken, privileged, bad address)."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """A scrape is not worth a line on stderr."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds wattlens open at exit


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
        self.rank_split: rank_energy.RankSplit | None = None  # run mode's per-rank split, if any
        self._sources: dict[str, str] = {}  # source id → its method
        self._latest: dict[str, float] = {}  # series key → newest value (written by the sampler)
        # (rank, pid) → [steps, steps with energy, energy sum]; rank None: a single-process job
        self._steps: dict[tuple[int | None, str], list[float]] = {}
        self._rank_methods: dict[int, list[str]] = {}  # rank → its methods, in the order they came
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # ---- serving -------------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        app = _app(make_wsgi_app(registry), METRICS_PATH)
        try:
            family = socket.getaddrinfo(self.addr, self.port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            server_cls = type("_MetricsServer", (_ThreadingServer,), {"address_family": family})
            self._server = make_server(self.addr, self.port, app, server_cls, handler_class=_QuietHandler)
        except OSError as exc:
            taken = getattr(exc, "errno", None) in (errno.EADDRINUSE, errno.EACCES)
            raise MetricsPortError(
                f"cannot serve metrics on {self._host}:{self.port}: {exc.strerror or exc}",
                hint="pick a free port with --metrics-port (or stop what holds it)" if taken else
                "give --metrics-addr an address of this machine (127.0.0.1, 0.0.0.0, ::1, or one `ip addr` "
                "lists)") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="wattlens-metrics",
                                        daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        return self.port

    @property
    def _host(self) -> str:
        """The address as a URL writes it (an IPv6 one in brackets)."""
        return f"[{self.addr}]" if ":" in self.addr else self.addr

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}{METRICS_PATH}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- feeding -------------------------------------------------------------------------------
    def attach(self, session) -> None:
        """Follow a started ProfilingSession: its sampler's points, its steps and, in run mode,
        its per-rank split (``session.sampler.rank_split``, set by RunSession.start)."""
        self.pid = str(session.target.pid) if session.target is not None else ""
        self._sources = {s.id: s.method for s in session.discovery.usable}
        self.rank_split = getattr(session.sampler, "rank_split", None)
        session.on_steps(self.add_step)
        session.sampler.sinks.append(self)

    def __call__(self, points: list[SamplePoint]) -> None:  # the sampler's sink: keep it cheap
        latest = self._latest
        for p in points:
            latest[p.key] = p.value

    def add_step(self, step: StepRecord) -> None:
        rank = getattr(step, "rank", None)
        pid = self.pid
        if rank is not None and self.rank_split is not None:  # the rank's own process (its hello came first)
            pid = str(self.rank_split.ranks.get(rank, pid))
        with self._lock:
            acc = self._steps.setdefault((rank, pid), [0, 0, 0.0])
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
        from prometheus_client.samples import Sample

        latest = dict(self._latest)
        energy = CounterMetricFamily(ENERGY, "Energy measured (scope=machine) or attributed to the "
                                     "target (scope=target), joules")
        power = GaugeMetricFamily(POWER, "Power measured (scope=machine) or attributed to the target "
                                  "(scope=target), watts")
        for sid, method in self._sources.items():
            for scope, prefix, how in (("machine", "", method), ("target", "target/", f"attributed-{method}")):
                labels = {"source": sid, "method": how, "scope": scope, "host": self.host}
                if scope == "target" and self.pid:
                    labels["pid"] = self.pid
                e = latest.get(f"{prefix}{sid}/energy_j")
                if e is not None:
                    energy.samples.append(Sample(f"{ENERGY}_total", labels, e))
                p = latest.get(f"{prefix}{sid}/power_w")
                if p is not None:
                    power.samples.append(Sample(POWER, labels, p))
        yield energy
        yield power
        if self.rank_split is not None:  # run mode: a multi-rank job's ranks (none yet: no series)
            yield self._rank_energy(latest, CounterMetricFamily, Sample)
        steps = CounterMetricFamily(STEPS, "Steps the in-process agent reported")
        step_energy = SummaryMetricFamily(STEP_ENERGY, "Attributed energy per step, joules (steps with "
                                          "a measured energy only)")
        with self._lock:
            per_rank = {k: list(v) for k, v in self._steps.items()}
        for (rank, pid), (n, n_e, sum_e) in sorted(per_rank.items(), key=lambda kv: (kv[0][0] is not None,
                                                                                     kv[0][0] or 0, kv[0][1])):
            labels = {"host": self.host}
            if pid:
                labels["pid"] = pid
            if rank is not None:
                labels["rank"] = str(rank)
            steps.samples.append(Sample(f"{STEPS}_total", labels, n))
            step_energy.samples.append(Sample(f"{STEP_ENERGY}_count", labels, n_e))
            step_energy.samples.append(Sample(f"{STEP_ENERGY}_sum", labels, sum_e))
        yield steps
        yield step_energy

    def _rank_energy(self, latest: dict[str, float], family, sample):
        """``wattlens_rank_energy_joules_total``: each rank's cumulative energy, with how it was
        apportioned; the HELP text says when the figures are an estimate."""
        rs = self.rank_split
        pids, methods = rs.ranks, rs.methods()
        rows = []
        for rank in sorted(pids):
            value = latest.get(rank_energy.series_key(rank))
            words = self._method_words(rank, methods.get(rank, []))
            if value is not None and words:  # no method yet: no energy charged yet either
                rows.append((rank, pids[rank], words, value))
        doc = ("Energy of each rank of a torch.distributed job (its processes' part of the target's "
               "attributed energy), joules; method: how it was apportioned, as the reports word it. "
               "The launcher and the start-up before the ranks reported are in no rank")
        estimated = sorted(sid for sid, m in self._sources.items() if m == "estimated")
        equal = [str(rank) for rank, _pid, words, _v in rows if any(m in words for m in _EQUAL_SPLITS)]
        why = []
        if estimated:
            why.append(f"it rests on the CPU power model ({', '.join(estimated)}: TDP × load), not a meter")
        if equal:
            why.append(f"rank(s) {', '.join(equal)} are an equal split where its own figures could not "
                       "be had (method says so)")
        if why:
            doc += ". An estimate: " + "; ".join(why)
        fam = family(RANK_ENERGY, doc)
        for rank, pid, words, value in rows:
            fam.samples.append(sample(f"{RANK_ENERGY}_total", {"host": self.host, "pid": str(pid),
                                                               "rank": str(rank), "method": words}, value))
        return fam

    def _method_words(self, rank: int, methods: list[str]) -> str:
        """A rank's methods joined as the reports join them (ranks.rank_totals: " + " in the order
        they first applied); new ones are appended as they are seen."""
        known = self._rank_methods.setdefault(rank, [])
        order = {m: i for i, m in enumerate(_METHOD_ORDER)}
        for m in sorted(methods, key=lambda m: (order.get(m, len(order)), m)):
            if m not in known:
                known.append(m)
        return " + ".join(known)


def _app(metrics_app, path: str):
    """The WSGI app: prometheus_client's for ``GET <path>``, and HEAD, ``/`` and 404 around it."""

    def app(environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        where = environ.get("PATH_INFO") or "/"
        if where not in (path, "/"):
            return _reply(start_response, "404 Not Found", f"no {where} here: the metrics are at {path}\n",
                          method)
        if method == "OPTIONS":
            start_response("200 OK", [("Allow", ALLOW), ("Content-Length", "0")])
            return [b""]
        if method not in ("GET", "HEAD"):
            body = f"# HTTP 405 Method Not Allowed: {method}; use GET or HEAD\n"
            return _reply(start_response, "405 Method Not Allowed", body, method, [("Allow", ALLOW)])
        if where == "/":
            link = html.escape(path)
            page = (f"<!doctype html><html><head><title>wattlens metrics</title></head><body>"
                    f"<h1>wattlens</h1><p>Prometheus metrics of the live session: "
                    f"<a href=\"{link}\">{link}</a></p></body></html>\n")
            return _reply(start_response, "200 OK", page, method, content_type="text/html; charset=utf-8")
        if method == "GET":
            return metrics_app(environ, start_response)
        # HEAD: what GET would answer (status, headers, its length), without the body
        got: list = []
        body = b"".join(metrics_app({**environ, "REQUEST_METHOD": "GET"},
                                    lambda status, headers, exc_info=None: got.extend((status, headers))))
        status, headers = got
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [b""]

    return app


def _reply(start_response, status: str, text: str, method: str, extra: list | None = None,
           content_type: str = "text/plain; charset=utf-8"):
    body = text.encode()
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(extra or [])])
    return [b"" if method == "HEAD" else body]
