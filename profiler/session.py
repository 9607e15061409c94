"""A profiling session: sources → Sampler → (StoreWriter, RingBuffers), plus the optional stack
sampler (attach mode) and agent link (run mode), with one place that decides how it ends.

Threads: the sampler thread reads sources; the writer thread owns all SQL writes; the stack
sampler runs py-spy in its own thread; the agent link listens on its own thread. The caller's
thread (CLI loop or GUI timer) only polls ``end_condition()`` and reads ring buffers.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import socket
import time
from collections.abc import Callable

import psutil

from wattlens.profiler.errors import StoreError
from wattlens.profiler.process import Target
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources import Discovery, discover
from wattlens.profiler.store import Store
from wattlens.profiler.store.writer import StoreWriter
from wattlens.profiler.summary import summarize

log = logging.getLogger(__name__)

END_STATUSES = ("completed", "stopped", "target-exited", "interrupted", "failed")


def hardware_info(discovery: Discovery) -> dict:
    vm = psutil.virtual_memory()
    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_logical": psutil.cpu_count(logical=True),
        "memory_bytes": vm.total,
        "host": socket.gethostname(),
        "sources": [s.id for s in discovery.usable],
        "gpus": [s.label for s in discovery.usable if s.kind == "gpu"],
    }


class ProfilingSession:
    def __init__(self, store: Store, *, target: Target | None = None, kind: str = "attach",
                 name: str | None = None, interval_s: float = 0.1, duration_s: float | None = None,
                 discovery: Discovery | None = None, stacks: bool = False,
                 stack_rate_hz: float | None = None, settings: dict | None = None,
                 grid_g_per_kwh: float | None = None):
        self.store = store
        self.target = target
        self.kind = kind
        self.name = name or (f"{target.name} (PID {target.pid})" if target else "system")
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.discovery = discovery or discover()
        self.want_stacks = stacks
        self.stack_rate_hz = stack_rate_hz
        self.settings = dict(settings or {})
        self.grid_g_per_kwh = grid_g_per_kwh
        self.rings = RingBuffers()
        self.session_id: int | None = None
        self.sampler: Sampler | None = None
        self.writer: StoreWriter | None = None
        self.stack_sampler = None
        self.status = "new"
        self.end_reason: str | None = None
        self.notes: list[str] = []  # one-line messages the user should see (why no layers, ...)
        self.start_ns = 0
        self.started_at = 0.0
        self.summary: dict | None = None
        self._on_layers: list[Callable[[list[LayerCost]], None]] = []
        self._on_steps: list[Callable[[StepRecord], None]] = []
        self.exit_code: int | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> int:
        if not self.discovery.usable:
            raise StoreError("no power source is usable here", hint="run `wattlens doctor` for the fixes")
        self.sampler = Sampler(self.discovery.usable, interval_s=self.interval_s, target=self.target)
        self.started_at = time.time()
        self.start_ns = time.monotonic_ns()
        sources = [{"id": s.id, "kind": s.kind, "method": s.method, "label": s.label, "details": s.describe()}
                   for s in self.discovery.usable]
        settings = {**self.settings, "interval_s": self.interval_s, "duration_s": self.duration_s,
                    "stacks": self.want_stacks,
                    "unavailable": [dataclasses.asdict(u) for u in self.discovery.unavailable]}
        self.session_id, series_ids = self.store.create_session(
            name=self.name, kind=self.kind, started_at=self.started_at, start_ns=self.start_ns,
            target=self.target.describe() if self.target else None,
            hardware=hardware_info(self.discovery), settings=settings, interval_s=self.interval_s,
            sources=sources, series=self.sampler.series_specs())
        self.writer = StoreWriter(self.store, self.session_id, series_ids)
        self.sampler.sinks = [self.writer, self.rings]
        self.writer.start()
        self.sampler.start()
        self.status = "running"
        for u in self.discovery.unavailable:
            self.event("source-unavailable", f"{u.source_id}: {u.reason} — {u.fix}")
        if self.want_stacks and self.target is not None:
            self._start_stacks()
        return self.session_id

    def _start_stacks(self) -> None:
        try:
            from wattlens.profiler.stacks.sampler import StackSampler
        except ImportError as exc:  # the module is optional at this layer
            self.note(f"no layer figures: stack sampling is not available ({exc})")
            return
        kwargs = {}
        if self.stack_rate_hz:
            kwargs["rate_hz"] = self.stack_rate_hz
        self.stack_sampler = StackSampler(
            self.target.pid, on_window=self.add_layer_costs, energy_between=self.attributed_energy_between,
            gpu=any(s.kind == "gpu" for s in self.discovery.usable), **kwargs)
        if not self.stack_sampler.available:
            self.note(f"no layer figures: {self.stack_sampler.reason}")
            self.stack_sampler = None
            return
        self.stack_sampler.start()

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.event("note", message)

    def event(self, kind: str, message: str, **data) -> None:
        if self.writer is not None:
            self.writer.put(EventRecord(time.monotonic_ns(), kind, message, data))

    def add_layer_costs(self, rows: list[LayerCost]) -> None:
        if self.writer is not None:
            self.writer.put(list(rows))
        for cb in self._on_layers:
            cb(rows)

    def add_step(self, step: StepRecord) -> None:
        if self.writer is not None:
            self.writer.put(step)
        for cb in self._on_steps:
            cb(step)

    def on_layers(self, cb: Callable[[list[LayerCost]], None]) -> None:
        self._on_layers.append(cb)

    def on_steps(self, cb: Callable[[StepRecord], None]) -> None:
        self._on_steps.append(cb)

    def attributed_energy_between(self, t0_ns: int, t1_ns: int) -> float | None:
        """Target energy in [t0, t1] from the live series; None until the sampler has passed t1."""
        buf = self.rings.get("target/energy_j")
        if buf is None:
            return None
        last = buf.last()
        if (last is not None and last[0] < t1_ns <= time.monotonic_ns() and self.sampler is not None
                and self.sampler.running):
            self.sampler.tick()  # a window that ended after the last tick: read now, do not guess
        e0, e1 = buf.value_at(t0_ns), buf.value_at(t1_ns)
        if e0 is None or e1 is None:
            first = buf.snapshot()[0]
            if len(first) and t0_ns < first[0] <= t1_ns and e1 is not None:
                return e1  # the window began before the first sample: energy since the baseline
            return None
        return e1 - e0

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self.start_ns) / 1e9

    def end_condition(self) -> tuple[str, str] | None:
        """(status, reason) when the session should end by itself, else None."""
        if self.target is not None and not self.target.is_alive():
            code = self.target.exit_code()
            self.exit_code = code
            how = f" with exit code {code}" if code is not None else ""
            return "target-exited", f"the target process {self.target.pid} exited{how}"
        if self.duration_s is not None and self.elapsed_s() >= self.duration_s:
            return "completed", f"duration of {self.duration_s:g} s reached"
        return None

    def run(self, poll_s: float = 0.1, on_tick: Callable[[ProfilingSession], None] | None = None) -> dict:
        """Block until the session ends (duration, target exit, Ctrl-C); returns the summary."""
        return run_until_end(self, poll_s, on_tick)

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user") -> dict:
        if self.status in END_STATUSES:
            return self.summary or {}
        if self.stack_sampler is not None:
            try:
                self.stack_sampler.stop()
            except Exception:  # noqa: BLE001
                log.exception("stack sampler did not stop cleanly")
            else:  # how many stack reads were lost and how that was handled, for show/report
                message = self.stack_sampler.loss_message()
                self.notes.append(message)
                self.event("stack-reads", message, **self.stack_sampler.loss.summary())
                backward = self.stack_sampler.backward_message()
                if backward is not None:
                    self.notes.append(backward)
                    self.event("backward-ops", backward, ops=dict(self.stack_sampler.backward_ops))
        if self.sampler is not None:
            self.sampler.stop()
        ended_at = time.time()
        duration_s = (time.monotonic_ns() - self.start_ns) / 1e9
        self.status, self.end_reason = status, reason
        write_error: StoreError | None = None
        try:
            if self.writer is not None:
                self.writer.stop()
        except StoreError as exc:
            write_error = exc
        session = {"id": self.session_id, "name": self.name, "status": status, "duration_s": duration_s,
                   "target_pid": self.target.pid if self.target else None,
                   "sources": [{"id": s.id, "kind": s.kind, "method": s.method, "label": s.label}
                               for s in self.discovery.usable]}
        live = self.rings.snapshot()
        self.summary = summarize(session, live, reasons=self.sampler.reasons if self.sampler else None,
                                 grid_g_per_kwh=self.grid_g_per_kwh)
        try:
            steps = self.store.steps(self.session_id)
            layers = self.store.layer_costs(self.session_id)
            if steps or layers:
                self.summary = summarize(session, live, steps, layers,
                                         reasons=self.sampler.reasons if self.sampler else None,
                                         grid_g_per_kwh=self.grid_g_per_kwh)
            self.summary["notes"] = list(self.notes)
            self.store.finish_session(self.session_id, status=status, end_reason=reason, ended_at=ended_at,
                                      duration_s=duration_s, summary=self.summary)
        except StoreError as exc:
            write_error = write_error or exc
        for src in self.discovery.usable:
            src.close()
        if write_error is not None:
            raise write_error
        return self.summary


def run_until_end(run, poll_s: float = 0.1, on_tick=None) -> dict:
    """The blocking loop of the CLI for anything with ``end_condition()`` and ``stop()``
    (a ProfilingSession or a RunSession): stop on its own condition, or on Ctrl-C."""
    try:
        while True:
            cond = run.end_condition()
            if cond:
                return run.stop(*cond)
            if on_tick:
                on_tick(run)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return run.stop("stopped", "stopped by the user (Ctrl-C)")
