"""A profiling session: sources → Sampler → (StoreWriter, RingBuffers), plus the optional stack
sampler (attach mode) and agent link (run mode), with one place that decides how it ends.

Threads: the sampler thread reads sources; the writer thread owns all SQL writes; the stack
sampler runs py-spy in its own thread; the agent link listens on its own thread. The caller's
thread (CLI loop or GUI timer) only polls ``end_condition()`` and reads ring buffers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
import signal
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence

import psutil

from wattlens.profiler.errors import StoreError
from wattlens.profiler.process import Target, exit_text
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources import Discovery, discover, source_dict
from wattlens.profiler.store import Store
from wattlens.profiler.store.writer import StoreWriter, WriteLoss
from wattlens.profiler.summary import summarize

log = logging.getLogger(__name__)

END_STATUSES = ("completed", "stopped", "target-exited", "interrupted", "failed", "partial")


def loss_dict(loss: WriteLoss, start_ns: int) -> dict:
    """What a partial session lost, in session seconds (stored in its summary as ``loss``)."""
    return {"records": loss.records, "samples": loss.samples, "reason": loss.reason,
            "from_s": (loss.t_first_ns - start_ns) / 1e9 if loss.t_first_ns is not None else None,
            "to_s": (loss.t_last_ns - start_ns) / 1e9 if loss.t_last_ns is not None else None}


def loss_text(loss: WriteLoss, start_ns: int) -> str:
    d = loss_dict(loss, start_ns)
    span = f" from {d['from_s']:.1f} s to {d['to_s']:.1f} s" if d["from_s"] is not None else ""
    other = loss.records - loss.samples
    return (f"{loss.samples} samples{span}" + (f" and {other} other records" if other else "")
            + f" could not be written ({loss.reason}) and are lost; the figures cover what was stored")


def command_name(command: Sequence[str]) -> str:
    """A launched command's default session name: its words, control characters (a newline in a
    ``python -c`` script, say) as spaces, at most 120 characters."""
    text = " ".join(command)
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)[:120]


def unfinished_hint(exc: StoreError) -> str:
    """What to do when a session's row could not be finished, fitting the error (``exc.kind``,
    see ``store.store_error``), and what the store says of the session meanwhile."""
    from wattlens.profiler.store.store import error_kind

    stays = ("the session stays 'running' in the store until wattlens next opens it on this host, "
             "which marks it 'interrupted' with the data stored until then")
    kind = error_kind(exc)
    if kind == "connection":
        return f"the database could not be reached; {stays} — start the server or fix the network, then run `wattlens sessions`"
    if kind == "disk-full":
        return f"free some space; {stays}"
    if kind in ("permission", "read-only"):
        return f"the database may not be written; {stays} — grant this user write access or use another --db"
    return f"{stays} — see `wattlens doctor`"


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
        # a process may call itself anything (its comm): the default name is made printable
        self.name = name or (command_name([f"{target.name} (PID {target.pid})"]) if target else "system")
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
        self.stored_layers: list[LayerCost] | None = None  # the layer rows as stored, once ended
        self._on_layers: list[Callable[[list[LayerCost]], None]] = []
        self._on_steps: list[Callable[[StepRecord], None]] = []
        self.exit_code: int | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> int:
        if not self.discovery.usable:
            raise StoreError("no power source is usable here", hint="run `wattlens doctor` for the fixes")
        self.store.check_session_fields(self.name)  # refused in one line before anything runs
        self.store.check_can_write()
        self.sampler = Sampler(self.discovery.usable, interval_s=self.interval_s, target=self.target,
                               known_idle_w=self._stored_gpu_idle(), on_event=self._record_event)
        self.started_at = time.time()
        self.start_ns = time.monotonic_ns()
        sources = [source_dict(s, details=s.describe()) for s in self.discovery.usable]
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
        elif self.kind == "attach" and self.target is not None:  # said, as every other reason is
            self.note("no layer figures: stack sampling was switched off for this session (--no-stacks, "
                      "or the app's setting); attach with it on for per-layer figures")
        return self.session_id

    def _start_stacks(self) -> None:
        try:
            from wattlens.profiler.stacks.follow import RankFollower
        except ImportError as exc:  # the module is optional at this layer
            self.note(f"no layer figures: stack sampling is not available ({exc})")
            return
        kwargs = {}
        if self.stack_rate_hz:
            kwargs["rate_hz"] = self.stack_rate_hz
        # one py-spy sampler per rank process of the target's tree (the target itself when it is
        # not a launcher), each rank's rows with its own share of the target's energy
        self.stack_sampler = RankFollower(
            self.target.pid, on_window=self.add_layer_costs, energy_between=self.attributed_energy_between,
            gpu=any(s.kind == "gpu" for s in self.discovery.usable), **kwargs)
        self.stack_sampler.start()
        if not self.stack_sampler.available:
            self.note(f"no layer figures: {self.stack_sampler.reason}")
            self.stack_sampler = None
            return
        for message in self.stack_sampler.start_notes():  # e.g. one rank py-spy may not read
            self.note(message)

    def _gpu_keys(self) -> dict[str, str]:
        """GPU source id → the key its idle power is remembered under (NVML UUID, else name+id)."""
        out = {}
        for s in self.discovery.usable:
            if s.kind == "gpu":
                dev = getattr(s, "device", None)
                out[s.id] = getattr(dev, "uuid", None) or f"{s.label}#{s.id}"
        return out

    def _stored_gpu_idle(self) -> dict[str, float]:
        out = {}
        for sid, key in self._gpu_keys().items():
            try:
                row = self.store.gpu_idle(key)
            except StoreError:
                row = None
            if row is not None:
                out[sid] = row["idle_power_w"]
        return out

    def _remember_gpu_idle(self) -> None:
        if self.sampler is None:
            return
        keys = self._gpu_keys()
        for sid, (power_w, stretch_s) in self.sampler.measured_idle().items():
            try:
                self.store.record_gpu_idle(keys[sid], power_w, stretch_s)
            except StoreError as exc:
                log.warning("could not remember %s's idle power: %s", sid, exc.message)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.event("note", message)

    def event(self, kind: str, message: str, **data) -> None:
        self._record_event(EventRecord(time.monotonic_ns(), kind, message, data))

    def _record_event(self, record: EventRecord) -> None:
        if self.writer is not None:
            self.writer.put(record)

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

    def attributed_energy_between(self, t0_ns: int, t1_ns: int, key: str = "target/energy_j") -> float | None:
        """Target energy (or another cumulative series': ``key``, e.g. a rank's) in [t0, t1] from
        the live series; None until the sampler has passed t1."""
        buf = self.rings.get(key)
        if buf is None:
            return None
        last = buf.last()
        if (last is not None and last[0] < t1_ns <= time.monotonic_ns() and self.sampler is not None
                and self.sampler.running):
            self.sampler.tick()  # a window that ended after the last tick: read now, do not guess
        return buf.energy_between(t0_ns, t1_ns, since_baseline=True)

    def _store_final_tree(self, writer_done: bool) -> bool:
        """Fold away the class rows of paths that the whole session's exact reads show torn (a
        window let them through while its exact reads were few); say so in a note. True when
        rows were replaced. Skipped, as the final split is, when not every row was written."""
        if not writer_done:
            return False
        try:
            old, new, notes = self.stack_sampler.final_tree()
            if old:
                self.store.replace_rows(self.session_id, old, new)
        except StoreError as exc:
            old, notes = [], [f"class paths found torn at the end are stored as the windows had them "
                              f"(they could not be written: {exc.message})"]
        except Exception as exc:  # noqa: BLE001 - the windows' rows stay; the session still ends
            log.exception("the final check of the stored class paths failed")
            old, notes = [], [f"the final check of the stored class paths failed: {exc}"]
        for message in notes:
            self.notes.append(message)  # the writer has stopped: the event goes straight to the store
            with contextlib.suppress(StoreError):
                self.store.add_event(self.session_id, EventRecord(time.monotonic_ns(), "note", message, {}))
        return bool(old)

    def _store_final_split(self, writer_done: bool) -> bool:
        """Each window's backward and optimizer parts as the whole session's native reads split
        them (what the session's note says), in place of the split the window got when it closed.
        True when stored; not when some rows could not be written (or may still be), nor when a
        sampler still runs: then each window keeps its own split, and the session says so."""
        why = None
        try:
            parents, rows = self.stack_sampler.final_split() if writer_done else ([], [])
            if parents:
                self.store.replace_split_rows(self.session_id, parents, rows)
                return True
            if not writer_done:
                why = "not all rows were written"
        except StoreError as exc:
            why = f"it could not be written: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - the windows' own split stays; the session still ends
            log.exception("the final backward split failed; each window's own split is kept")
            why = f"it failed: {exc}"
        if why is not None and self.stack_sampler.backward_pooled():
            message = (f"the backward's split is stored as each window had it when it closed, not by "
                       f"the whole session's native reads ({why})")
            self.notes.append(message)  # the writer has stopped: the event goes straight to the store
            with contextlib.suppress(StoreError):
                self.store.add_event(self.session_id, EventRecord(time.monotonic_ns(), "note", message, {}))
        return False

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self.start_ns) / 1e9

    def end_condition(self) -> tuple[str, str] | None:
        """(status, reason) when the session should end by itself, else None."""
        if self.sampler is not None and self.sampler.failure:
            return "failed", f"{self.sampler.failure}; the samples taken before are kept"
        if self.target is not None and not self.target.is_alive():
            code = self.target.exit_code()
            self.exit_code = code
            return "target-exited", f"the target process {self.target.pid} {exit_text(code)}"
        if self.duration_s is not None and self.elapsed_s() >= self.duration_s:
            return "completed", f"duration of {self.duration_s:g} s reached"
        return None

    def run(self, poll_s: float = 0.1, on_tick: Callable[[ProfilingSession], None] | None = None,
            signals: StopSignals | None = None) -> dict:
        """Block until the session ends (duration, target exit, Ctrl-C, SIGTERM); returns the summary."""
        return run_until_end(self, poll_s, on_tick, signals)

    def hurry(self) -> None:
        """Asked again to stop while stopping (a second Ctrl-C): do not wait for a lost database."""
        if self.writer is not None:
            self.writer.hurry()

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user") -> dict:
        if self.status in END_STATUSES:
            return self.summary or {}
        if self.stack_sampler is not None:
            try:
                self.stack_sampler.stop()
            except Exception:  # noqa: BLE001
                log.exception("stack sampler did not stop cleanly")
            # why a sampler stopped early, lost reads and backward split, per sampled process
            for kind, message, data in self.stack_sampler.stop_notes():
                self.notes.append(message)
                self.event(kind, message, **data)
        if self.sampler is not None:
            self.sampler.stop()
            self._remember_gpu_idle()
        unseen_s = self.target.unobserved_cpu_s if self.target is not None else 0.0
        if unseen_s > 0.0:
            self.note(f"{unseen_s:.2f} CPU-s that child processes spent before wattlens found them "
                      "(children are rescanned once a second) are not in the target's share")
        ended_at = time.time()
        duration_s = (time.monotonic_ns() - self.start_ns) / 1e9
        failure = self.sampler.failure if self.sampler is not None else None
        if failure and status != "failed":  # it stopped measuring early: never "completed"
            status, reason = "failed", f"{reason}; but {failure}, the samples taken before are kept"
        self.status, self.end_reason = status, reason
        write_error: StoreError | None = None
        loss = self.writer.stop() if self.writer is not None else None
        held = self.writer.held if self.writer is not None else None  # in the local spool, not lost
        if loss is not None:  # some records could not be written: say so in the status and the reason
            lost = loss_text(loss, self.start_ns)
            status, reason = "partial", (f"{reason}; {lost}" if reason else lost)
            self.status, self.end_reason = status, reason
        final_rows = False  # the layer rows were re-written at the end (torn paths, the split)
        if self.stack_sampler is not None:
            writer_done = (loss is None and held is None and self.writer is not None
                           and not self.writer.outlived_stop)
            final_tree = self._store_final_tree(writer_done)  # first: torn paths leave the split's pool
            final_rows = self._store_final_split(writer_done) or final_tree
        session = {"id": self.session_id, "name": self.name, "status": status, "duration_s": duration_s,
                   "target_pid": self.target.pid if self.target else None,
                   "sources": [source_dict(s, covers_cpu=bool(getattr(getattr(s, "device", None), "covers_cpu", False)))
                               for s in self.discovery.usable]}
        live = self.rings.snapshot()
        self.summary = summarize(session, live, reasons=self.sampler.reasons if self.sampler else None,
                                 grid_g_per_kwh=self.grid_g_per_kwh)
        if held is not None:
            self._finish_held(held, status, reason, ended_at, duration_s, loss)
        else:
            write_error = self._finish_stored(session, live, status, reason, ended_at, duration_s, loss,
                                              final_rows)
        for src in self.discovery.usable:
            src.close()
        if write_error is not None:
            raise write_error
        return self.summary

    def _finish_stored(self, session: dict, live: dict, status: str, reason: str | None, ended_at: float,
                       duration_s: float, loss: WriteLoss | None, final_rows: bool) -> StoreError | None:
        """Write the session's finish (figures from what was stored when something was lost);
        returns the error to raise when it could not be written."""
        write_error = None
        lost = loss_text(loss, self.start_ns) if loss is not None else ""
        try:
            # a partial session's figures come from what was stored, as `show` and reports compute them
            series = self.store.series_data(self.session_id) if loss is not None else live
            steps = self.store.steps(self.session_id)
            layers = self.store.layer_costs(self.session_id)
            if final_rows:  # what the app's live view shows once the session ended
                self.stored_layers = layers
            if steps or layers or loss is not None:
                self.summary = summarize(session, series, steps, layers,
                                         reasons=self.sampler.reasons if self.sampler else None,
                                         grid_g_per_kwh=self.grid_g_per_kwh)
            self.summary["notes"] = list(self.notes)
            if loss is not None:
                self.summary["loss"] = loss_dict(loss, self.start_ns)
                self.summary["notes"].append(lost)
            self.store.finish_session(self.session_id, status=status, end_reason=reason, ended_at=ended_at,
                                      duration_s=duration_s, summary=self.summary)
        except StoreError as exc:
            write_error = exc
            if loss is not None:
                write_error = StoreError(
                    f"session {self.session_id}: {lost}, and the session could not "
                    f"be finished ({exc.message})", hint=unfinished_hint(exc))
        return write_error

    def _finish_held(self, held, status: str, reason: str | None, ended_at: float, duration_s: float,
                     loss: WriteLoss | None) -> None:
        """The writer left records in the local spool (the database could not take them at the
        end): the session's finish goes into the same file, after them, and one try writes it all
        now (``Store.replay_spool_file``, as the next open of the store would). If the database is
        still unreachable the session says where its records are: a note, not a loss. Its figures
        are the live ones until the replay recomputes them from every stored row."""
        from wattlens.profiler.store import spool

        self.summary["notes"] = list(self.notes)
        if loss is not None:  # refused for good (data, permission): still counted as lost
            self.summary["loss"] = loss_dict(loss, self.start_ns)
            self.summary["notes"].append(loss_text(loss, self.start_ns))
        finish = {"status": status, "end_reason": reason, "ended_at": ended_at, "duration_s": duration_s,
                  "summary": self.summary, "grid_g_per_kwh": self.grid_g_per_kwh,
                  "reasons": dict(self.sampler.reasons) if self.sampler is not None else None}
        try:
            spool.add_finish(held.path, finish)
        except spool.SpoolError as exc:  # the records are held: the session reopens 'interrupted' with them
            log.warning("%s; the session will reopen as 'interrupted' with all its records", exc)
        if self.store.replay_spool_file(held.path, quiet=True) is not None:
            with contextlib.suppress(StoreError):  # the figures the replay recomputed from every row
                self.summary = self.store.session(self.session_id)["summary"] or self.summary
            return
        note = spool.held_text(held)
        self.notes.append(note)
        self.summary["notes"].append(note)


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class StopSignals:
    """While active (main thread only), SIGTERM and SIGHUP (and SIGINT when listed) ask for the
    same clean stop as Ctrl-C instead of killing the process: the handler only records the
    signal, and the loop that polls :attr:`received` stops the session, so a signal can never cut
    a stop short (issue 9). Entered before a session starts, a signal that arrives during the
    start is not lost either. Signals after the first change nothing: a second Ctrl-C (a
    terminal sends each to the command too) no longer breaks off the wait for the command's end,
    so the session, the end reason and the exit status are those of one Ctrl-C (it made `wattlens
    run` exit 0 with the command's end unknown)."""

    def __init__(self, signums: tuple[int, ...] = STOP_SIGNALS):
        self.signums = signums
        self.received: int | None = None
        #: called on each signal after the first (from the handler: must only set a flag)
        self.on_repeat: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}
        self._depth = 0

    def _handler(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum
        elif self.on_repeat is not None:  # only cuts a wait that cannot lose anything (see run_until_end)
            self.on_repeat()

    def __enter__(self) -> StopSignals:  # re-entrant: the handlers go in at the outermost level
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()


def run_until_end(run, poll_s: float = 0.1, on_tick=None, signals: StopSignals | None = None) -> dict:
    """The blocking loop of the CLI for anything with ``end_condition()`` and ``stop()``
    (a ProfilingSession or a RunSession): stop on its own condition, on Ctrl-C, or on SIGTERM /
    SIGHUP (a clean stop, as Ctrl-C; ``run.forward_signal(signum)`` is called first when ``run``
    has it, and returns a sentence for the end reason). ``signals``: the caller's active
    StopSignals (entered before the session started), else one is entered here. A
    KeyboardInterrupt (SIGINT where no StopSignals could take it) ends the same way as a Ctrl-C
    that StopSignals took."""
    with (signals if signals is not None else StopSignals()) as signals:
        try:
            while signals.received is None:
                cond = run.end_condition()
                if cond:
                    return run.stop(*cond)
                if on_tick:
                    on_tick(run)
                time.sleep(poll_s)
            signum = signals.received
        except KeyboardInterrupt:
            signum = signal.SIGINT
        # a signal while stopping: stop waiting for a lost database (its records go to the local
        # spool); the rest of the stop (the command's end, the summary) is not cut short
        signals.on_repeat = getattr(run, "hurry", None)
        forward = getattr(run, "forward_signal", None)
        said = forward(signum) if forward is not None else None
        return run.stop("stopped", f"stopped by {stopped_by(signum)}" + (f"; {said}" if said else ""))


def stopped_by(signum: int) -> str:
    """Who or what stopped a session, as its end reason says it: "the user (Ctrl-C)", "SIGTERM"."""
    return "the user (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
