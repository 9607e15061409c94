"""StoreWriter: the one thread that writes a live session to the Store.

The sampler, the stack sampler and the agent link put records on its queue from their own
threads; the writer batches them and commits at least once a second, so a profiler killed with
SIGKILL loses at most the last second. A failed write (disk full, database locked) keeps the batch
in memory and retries; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from wattlens.profiler.errors import StoreError
from wattlens.profiler.records import EventRecord, LayerCost, SamplePoint, SeriesSpec, StepRecord

log = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self, store, session_id: int, series_ids: dict[str, int], *,
                 commit_interval_s: float = 0.5, max_batch: int = 20_000):
        self.store = store
        self.session_id = session_id
        self.series_ids = dict(series_ids)
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[int, int, float]] = []
        self._layers: list[LayerCost] = []
        self._steps: list[StepRecord] = []
        self._events: list[EventRecord] = []
        self.last_error: StoreError | None = None
        self.rows_written = 0

    # ---- producers (any thread) ----------------------------------------------------------------
    def __call__(self, points: list[SamplePoint]) -> None:
        self._q.put(points)

    def put(self, item: LayerCost | StepRecord | EventRecord | list) -> None:
        self._q.put(item)

    # ---- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wattlens-store-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain the queue and write everything; raises StoreError if the last write fails."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._drain()
        self._flush()
        if self.pending:
            raise self.last_error or StoreError("some samples could not be written")

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
                sid = self._register(item.key)
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
            return
        self.rows_written += self.pending
        self._samples, self._layers, self._steps, self._events = [], [], [], []
        self.last_error = None
