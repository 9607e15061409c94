"""StoreWriter: the one thread that writes a live session to the Store.

The sampler, the stack sampler and the agent link put records on its queue from their own
threads; the writer batches them and commits at least once a second, so a profiler killed with
SIGKILL loses at most the last second. A failed write (disk full, database locked) keeps the batch
in memory and retries until the session ends. Nothing is dropped silently: what still cannot be
written when it stops (or the oldest records beyond ``max_pending`` held in memory) is counted in
``loss`` (records, samples and their time span), which makes the session ``partial``.

Any error on the write path is met here, never by the thread's end: one the database may get over
(connection lost, disk full, locked: ``StoreError.transient``) keeps the batch for the next try;
one it will not (a value out of range, an id sequence at its end, permission denied) is tried
again kind by kind (samples, layer rows, steps, events), so the kinds it does not concern are
stored, and the refused kind's records are counted as lost. At ``stop`` a lost connection is
waited for (``reconnect_wait_s``, said once); what is still pending then, refused for a reason a
retry may cure, is written to the local spool (``spool.hold``: ``held``), and the next open of the
store writes it, so it is not lost; only what the spool cannot take (its own disk full, read-only,
or an SQLite database whose full disk the spool shares: ``spool.why_not_spool``) is counted in
``loss``, with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from wattlens.profiler.errors import StoreError
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord
from wattlens.profiler.store import spool
from wattlens.profiler.store.store import error_kind

log = logging.getLogger(__name__)


@dataclass
class WriteLoss:
    """Records the writer had to give up: counts and the span of the lost samples (monotonic ns)."""

    records: int = 0
    samples: int = 0
    t_first_ns: int | None = None
    t_last_ns: int | None = None
    reason: str = ""

    def add_samples(self, rows: list[tuple[int, int, float]]) -> None:
        if not rows:
            return
        ts = [r[1] for r in rows]
        lo, hi = min(ts), max(ts)
        self.samples += len(rows)
        self.t_first_ns = lo if self.t_first_ns is None else min(self.t_first_ns, lo)
        self.t_last_ns = hi if self.t_last_ns is None else max(self.t_last_ns, hi)


class StoreWriter:
    def __init__(self, store, session_id: int, series_ids: dict[str, int], *,
                 commit_interval_s: float = 0.5, max_batch: int = 20_000, max_pending: int = 2_000_000,
                 reconnect_wait_s: float = 30.0):
        self.store = store
        self.session_id = session_id
        self.series_ids = dict(series_ids)
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.reconnect_wait_s = reconnect_wait_s  # at stop: how long a lost connection is waited for
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.outlived_stop = False  # its thread was still writing when stop() gave up waiting
        self._samples: list[tuple[int, int, float]] = []
        self._layers: list[LayerCost] = []
        self._steps: list[StepRecord] = []
        self._events: list[EventRecord] = []
        self.last_error: StoreError | None = None
        self.rows_written = 0
        self.loss: WriteLoss | None = None  # set once something could not be written
        self.held: spool.Held | None = None  # set when stop() left records in the local spool
        # set (a second Ctrl-C, :meth:`hurry`): stop() no longer waits for a lost database. A
        # plain flag, not an Event: it is set from a signal handler, which must take no lock
        self._hurried = False

    # ---- producers (any thread) ----------------------------------------------------------------
    def __call__(self, points: list[SamplePoint]) -> None:
        self._q.put(points)

    def put(self, item: LayerCost | StepRecord | EventRecord | list) -> None:
        self._q.put(item)

    # ---- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wattlens-store-writer", daemon=True)
        self._thread.start()

    def stop(self) -> WriteLoss | None:
        """Drain the queue and write everything. What the last try cannot write goes to the local
        spool (``held``), or when it cannot, is given up and counted: returns ``loss`` (None when
        nothing was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self.outlived_stop = self._thread.is_alive()  # still in a write: it may yet commit
            self._thread = None
        self._drain()
        self._flush()
        if self.pending and self.last_error is not None and error_kind(self.last_error) == "connection":
            self._wait_for_database()
        if self.pending:
            self._hold_or_give_up()
        return self.loss

    def _hold_or_give_up(self) -> None:
        """At stop, what is still pending: to the local spool when the database refused it for a
        reason a retry may cure (and the spool is worth it, see ``spool.why_not_spool``), said in
        one line; else, or when the spool cannot take it either, counted as lost."""
        exc = self.last_error
        if exc is None or not getattr(exc, "transient", False):
            self._give_up(len(self._samples))
            return
        if spool.why_not_spool(self.store.url, error_kind(exc)) is not None:
            self._give_up(len(self._samples))
            return
        try:
            self.held = spool.hold(self.store.url, self.session_id, self._samples, self._layers, self._steps,
                                   self._events, reason=exc.message)
        except spool.SpoolError as err:
            self._give_up(len(self._samples), why=str(err))
            return
        self._samples, self._layers, self._steps, self._events = [], [], [], []
        log.warning("%s", spool.held_text(self.held, self.session_id))

    def hurry(self) -> None:
        """Stop waiting for a lost database at stop (any thread, or a signal handler: a second
        Ctrl-C): what is not written yet goes to the local spool (or, where it cannot, is counted
        lost) at once."""
        self._hurried = True

    def _wait_for_database(self) -> None:
        """The server cannot be reached as the session ends: try again every second for up to
        ``reconnect_wait_s`` (said once on stderr) before the records are given up, or until
        :meth:`hurry`."""
        log.warning("waiting up to %g s for the database to come back (%d records are not written yet; "
                    "Ctrl-C again stops waiting)", self.reconnect_wait_s, self.pending)
        deadline = time.monotonic() + self.reconnect_wait_s
        next_try = time.monotonic()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.1)
            if self._hurried:
                log.warning("no longer waiting for the database")
                break
            if time.monotonic() < min(next_try + 1.0, deadline):
                continue
            next_try = time.monotonic()
            self._flush()
            if self.last_error is None or error_kind(self.last_error) != "connection":
                break
        if not self.pending:
            log.warning("the database is back: every record was written")

    def _lose(self, records: int, exc: StoreError, samples: list | None = None) -> None:
        """Count ``records`` that the database refused for good (``samples``: those of them that
        are samples, for the lost span)."""
        loss = self.loss or WriteLoss()
        said = loss.reason == exc.message  # said once: the count is in the session's end
        if samples:
            loss.add_samples(samples)
        loss.records += records
        loss.reason = exc.message
        self.loss = loss
        if not said:
            log.error("records the database refuses are lost from now on (%s)", exc.message)

    def _give_up(self, n_samples: int, why: str | None = None) -> None:
        """Drop the oldest ``n_samples`` samples (and, when all of them go, the other records);
        ``why``: said after the error (the spool could not take them either)."""
        loss = self.loss or WriteLoss()
        dropped, self._samples = self._samples[:n_samples], self._samples[n_samples:]
        loss.add_samples(dropped)
        loss.records += len(dropped)
        if not self._samples:
            loss.records += len(self._layers) + len(self._steps) + len(self._events)
            self._layers, self._steps, self._events = [], [], []
        loss.reason = self.last_error.message if self.last_error is not None else "the database could not be written"
        if why:
            loss.reason = f"{loss.reason}; {why}"
        self.loss = loss
        log.error("%d records could not be written and are lost (%s)", loss.records, loss.reason)

    @property
    def pending(self) -> int:
        return len(self._samples) + len(self._layers) + len(self._steps) + len(self._events)

    def _run(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.1)
                self._accept(item)
                self._drain()
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001 - the thread never dies: what it holds is written or counted
                log.exception("the store writer could not take a record")
            now = time.monotonic()
            if self.pending and (now - last_flush >= self.commit_interval_s or len(self._samples) >= self.max_batch):
                self._flush()
                last_flush = now

    def _drain(self) -> None:
        while True:
            try:
                self._accept(self._q.get_nowait())
            except queue.Empty:
                return

    def _accept(self, item) -> None:
        if isinstance(item, list):
            for x in item:
                self._accept(x)
        elif isinstance(item, SamplePoint):
            sid = self.series_ids.get(item.key)
            if sid is None:
                try:
                    sid = self._register(item.key)
                except StoreError as exc:  # a new series cannot even be registered: count the sample
                    self.last_error = exc
                    self.loss = self.loss or WriteLoss(reason=exc.message)
                    self.loss.add_samples([(0, item.t_ns, item.value)])
                    self.loss.records += 1
                    return
            self._samples.append((sid, item.t_ns, item.value))
        elif isinstance(item, LayerCost):
            self._layers.append(item)
        elif isinstance(item, StepRecord):
            self._steps.append(item)
        elif isinstance(item, EventRecord):
            self._events.append(item)
        elif isinstance(item, SeriesSpec):
            try:
                self.series_ids.update(self.store.add_series(self.session_id, [item]))
            except StoreError as exc:  # its points are registered (or counted) when they come
                self.last_error = exc
                log.error("%s", exc)

    def _register(self, key: str) -> int:
        """A point of a series nobody declared: units come only from the producer's SeriesSpec
        (``Sampler.series_specs()``, or a SeriesSpec put here first), never from the key's
        spelling. Its points are kept, under an empty unit and the method "undeclared"."""
        log.error("series %s was not declared with its unit before its first point; stored as undeclared", key)
        self.series_ids.update(self.store.add_series(self.session_id, [SeriesSpec(key, "", "undeclared")]))
        return self.series_ids[key]

    def _flush(self) -> None:
        if not self.pending:
            return
        try:
            self.store.write_batch(self.session_id, self._samples, self._layers, self._steps, self._events)
        except Exception as exc:  # noqa: BLE001 - any error: kept or counted, never the thread's end
            exc = _as_store_error(exc)
            self._said(exc)
            if not getattr(exc, "transient", True):
                self._flush_by_kind()
            if len(self._samples) > self.max_pending:  # memory is bounded too: the oldest go first
                self._give_up(len(self._samples) - self.max_pending)
            return
        if self.last_error is not None and error_kind(self.last_error) == "connection" and not self._stop.is_set():
            # said as the loss of it was: the records held meanwhile are in
            log.warning("the database is reachable again: the %d records held meanwhile are written", self.pending)
        self.rows_written += self.pending
        self._samples, self._layers, self._steps, self._events = [], [], [], []
        self.last_error = None

    def _said(self, exc: StoreError) -> None:
        if self.last_error is None or str(exc) != str(self.last_error):
            log.error("%s", exc)
        self.last_error = exc

    def _flush_by_kind(self) -> None:
        """After an error a retry will not cure: each kind of record in its own transaction, so
        one refused kind (say, layer rows whose id sequence is at its end) does not hold back the
        others; the refused kind's records are counted as lost, a transient error's are kept."""
        failed: StoreError | None = None
        for attr, arg in (("_samples", "samples"), ("_layers", "layer_costs"), ("_steps", "steps"),
                          ("_events", "events")):
            rows = getattr(self, attr)
            if not rows:
                continue
            try:
                self.store.write_batch(self.session_id, rows if arg == "samples" else (),
                                       **({} if arg == "samples" else {arg: rows}))
            except Exception as exc:  # noqa: BLE001
                exc = _as_store_error(exc)
                failed = exc
                if getattr(exc, "transient", True):
                    continue  # kept for the next try
                self._lose(len(rows), exc, rows if arg == "samples" else None)
                setattr(self, attr, [])
                continue
            self.rows_written += len(rows)
            setattr(self, attr, [])
        if failed is not None:
            self.last_error = failed
        elif not self.pending:
            self.last_error = None


def _as_store_error(exc: BaseException) -> StoreError:
    """A StoreError (the Store maps every SQL error to one); anything else is wrapped, as an error
    that a retry does not cure, so the writer counts it instead of dying."""
    if isinstance(exc, StoreError):
        return exc
    log.debug("unexpected error in the store writer", exc_info=exc)
    wrapped = StoreError(f"the records could not be written: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}")
    wrapped.kind, wrapped.transient = "other", False
    return wrapped
