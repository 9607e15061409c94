"""Each sampled worker's share of its process tree's CPU time between two moments.

The power sampler attributes energy to the attached tree as a whole (its CPU-time share of the
machine, and its GPU share). When several ranks of that tree are sampled, a rank's layer rows get
``tree energy over the window × the rank's share of the tree's CPU time over the window``: the
rank's own attributed energy. Shares are computed from one set of readings of every member, so the
ranks' shares (plus the launcher's, which no worker owns) add up to 1 and summing the ranks' rows
counts the job's energy once.

A member's CPU seconds (user + system, :func:`~wattlens.profiler.process.process_cpu_s`) are read every ``read_s`` by the follower and
whenever a share is asked for past the last reading, and interpolated linearly to a window's ends.
A member counts from its first reading (before it, its CPU time belongs to intervals already
recorded, as in :mod:`wattlens.profiler.process`); one that exited keeps its last reading.
A worker's share covers its own subtree (a rank's DataLoader workers are the rank's).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable

import psutil

from wattlens.profiler.process import process_cpu_s

_KEEP = 2048  # readings kept per member (≥ 10 min at the follower's 0.25 s cadence)


def read_cpu_s(proc: psutil.Process) -> float | None:
    """User + system CPU seconds of one process; None once it has exited or is unreadable."""
    try:
        return process_cpu_s(proc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


class CpuSplit:
    """CPU readings of a tree's members and the share of each worker's subtree over a span."""

    def __init__(self, *, read: Callable[[psutil.Process], float | None] = read_cpu_s,
                 clock: Callable[[], int] = time.monotonic_ns):
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._procs: dict[int, psutil.Process] = {}
        self._owner: dict[int, int | None] = {}
        self._times: dict[int, list[int]] = {}
        self._values: dict[int, list[float]] = {}
        self._last_read_ns = 0

    def set_owners(self, owner: dict[int, int | None], procs: dict[int, psutil.Process]) -> None:
        """Members found by the latest rescan → their worker; members not in it keep their
        readings (an exited member's CPU time still counts up to its last reading)."""
        with self._lock:
            for pid, who in owner.items():
                self._owner[pid] = who
                if pid not in self._procs and pid in procs:
                    self._procs[pid] = procs[pid]
                    self._times.setdefault(pid, [])
                    self._values.setdefault(pid, [])

    def read(self) -> None:
        """One reading of every live member, at one moment."""
        with self._lock:
            self._read_locked()

    def _read_locked(self) -> None:
        t_ns = self._clock()
        for pid, proc in list(self._procs.items()):
            value = self._read(proc)
            if value is None:  # exited: its readings stay, it is read no more
                del self._procs[pid]
                continue
            times, values = self._times[pid], self._values[pid]
            times.append(t_ns)
            values.append(value)
            if len(times) > _KEEP:
                del times[: len(times) - _KEEP]
                del values[: len(values) - _KEEP]
        self._last_read_ns = t_ns

    def _at(self, pid: int, t_ns: int) -> float:
        times, values = self._times[pid], self._values[pid]
        if not times:
            return 0.0
        i = bisect.bisect_left(times, t_ns)
        if i == 0:
            return values[0]
        if i == len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]
        v0, v1 = values[i - 1], values[i]
        return v0 + (v1 - v0) * (t_ns - t0) / (t1 - t0) if t1 > t0 else v1

    def share(self, worker: int, t0_ns: int, t1_ns: int) -> float | None:
        """``worker``'s subtree's CPU seconds ÷ the tree's over [t0, t1]; 1.0 when the worker owns
        every member; None when the tree spent no CPU time there (nothing to split by)."""
        with self._lock:
            if all(who == worker for who in self._owner.values()):
                return 1.0
            if self._last_read_ns < t1_ns:
                self._read_locked()
            total = mine = 0.0
            for pid, who in self._owner.items():
                if pid not in self._times:
                    continue
                spent = max(0.0, self._at(pid, t1_ns) - self._at(pid, t0_ns))
                total += spent
                if who == worker:
                    mine += spent
        return mine / total if total > 0 else None
