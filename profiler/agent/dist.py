"""Where this process stands in a torch.distributed job: rank, local rank, world size.

torchrun (``torch.distributed.run``) and most launchers export ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` (ranks on this host) to every worker before it starts, so the agent can say its rank in its hello. A
process that is not part of a job reports none (the fields are left out). Stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_FIELDS = (("rank", "RANK"), ("local_rank", "LOCAL_RANK"), ("world_size", "WORLD_SIZE"),
              ("local_world_size", "LOCAL_WORLD_SIZE"))


def rank_info(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The job fields the launcher set for this process; empty outside a job (or when malformed)."""
    env = os.environ if environ is None else environ
    out: dict[str, int] = {}
    for field, var in ENV_FIELDS:
        try:
            value = int(env.get(var, ""))
        except ValueError:
            continue
        if value >= 0:
            out[field] = value
    if "rank" not in out or out.get("world_size", 0) < 1:
        return {}  # a stray LOCAL_RANK alone does not make a job
    return out


# ---- collectives ---------------------------------------------------------------------------------
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "barrier", "all_to_all", "reduce", "gather",
               "scatter")
FLUSH_NS = 500_000_000  # send the gathered calls at most twice a second


class CollectiveTimer:
    """Wraps torch.distributed's collective functions to time each call (stdlib + torch).

    Only calls made through the Python API are seen: DDP's gradient all-reduce runs inside its
    C++ reducer and is not (that time stays inside the backward pass). A call with
    ``async_op=True`` is timed up to its return, not its completion. Calls are gathered and sent
    as one ``collectives`` message at most every 0.5 s, and at exit.
    """

    def __init__(self, torch, send, fail, clock_ns=None) -> None:
        import threading
        import time

        self._dist = getattr(torch, "distributed", None)
        self._send, self._fail = send, fail
        self._clock = clock_ns or time.monotonic_ns
        self._lock = threading.Lock()
        self._calls: list[list] = []
        self._last_flush_ns = self._clock()
        self._originals: dict[str, object] = {}

    def install(self) -> bool:
        d = self._dist
        if d is None or not getattr(d, "is_available", lambda: False)():
            return False
        for name in COLLECTIVES:
            fn = getattr(d, name, None)
            if callable(fn) and not getattr(fn, "_wattlens_wrapped", False):
                self._originals[name] = fn
                setattr(d, name, self._wrap(name, fn))
        return bool(self._originals)

    def uninstall(self) -> None:
        for name, fn in self._originals.items():
            setattr(self._dist, name, fn)
        self._originals.clear()
        self.flush()

    def _wrap(self, name, fn):
        import functools

        clock = self._clock

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._record(name, t0, clock())

        timed._wattlens_wrapped = True
        return timed

    def _record(self, op: str, t0: int, t1: int) -> None:
        try:
            with self._lock:
                self._calls.append([op, t0, t1])
                due = t1 - self._last_flush_ns >= FLUSH_NS
            if due:
                self.flush()
        except Exception as exc:  # never break the user's collective
            self._fail(exc)

    def flush(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._last_flush_ns = self._clock()
        if calls:
            self._send({"type": "collectives", "calls": calls})
