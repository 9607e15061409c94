"""StoreWriter: the one thread that writes a live session to the Store.

The sampler, the stack sampler and the agent link put records on its queue from their own
threads; the writer batches them and commits at least once a second, so a profiler killed with
SIGKILL loses at most the last second. A failed write (disk full, database locked) keeps the batch
in memory and retries until the session ends. Nothing is dropped silently: what still cannot be
written when it stops (or the oldest records beyond ``max_pending`` held in memory) is counted in
``loss`` (records, samples and their time span), which makes the session ``partial``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from wattlens.profiler.errors import StoreError
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord

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
                 commit_interval_s: float = 0.5, max_batch: int = 20_000, max_pending: int = 2_000_000):
        self.store = store
        self.session_id = session_id
        self.series_ids = dict(series_ids)
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
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
        """Drain the queue and write everything. What the last try cannot write is given up and
        counted: returns ``loss`` (None when everything was stored)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self.outlived_stop = self._thread.is_alive()  # still in a write: it may yet commit
            self._thread = None
        self._drain()
        self._flush()
        if self.pending:
            self._give_up(len(self._samples))
        return self.loss

    def _give_up(self, n_samples: int) -> None:
        """Drop the oldest ``n_samples`` samples (and, when all of them go, the other records)."""
        loss = self.loss or WriteLoss()
        dropped, self._samples = self._samples[:n_samples], self._samples[n_samples:]
        loss.add_samples(dropped)
        loss.records += len(dropped)
        if not self._samples:
            loss.records += len(self._layers) + len(self._steps) + len(self._events)
            self._layers, self._steps, self._events = [], [], []
        loss.reason = self.last_error.message if self.last_error is not None else "the database could not be written"
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
            self.series_ids.update(self.store.add_series(self.session_id, [item]))

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
        except StoreError as exc:
            if self.last_error is None or str(exc) != str(self.last_error):
                log.error("%s", exc)
            self.last_error = exc
            if len(self._samples) > self.max_pending:  # memory is bounded too: the oldest go first
                self._give_up(len(self._samples) - self.max_pending)
            return
        self.rows_written += self.pending
        self._samples, self._layers, self._steps, self._events = [], [], [], []
        self.last_error = None
