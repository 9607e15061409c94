"""The target: a PID and its children, followed over time, and its share of CPU time.

psutil is the only thing that reads /proc here. Children are rescanned at most once a second
(``children(recursive=True)`` walks every PID on the host, too costly at 10 Hz).
"""

from __future__ import annotations

import os
import time

import psutil

from wattlens.profiler.errors import TargetAccessError, TargetNotFoundError


class Target:
    """A process tree rooted at ``pid``. ``cpu_time_s()`` is the tree's user+system CPU time,
    counting exited children through the last value seen for them."""

    def __init__(self, pid: int, *, rescan_s: float = 1.0):
        if pid <= 0:
            raise TargetNotFoundError(f"PID {pid} is not a valid process id — pass a positive PID (see `ps aux`)")
        try:
            self.proc = psutil.Process(pid)
            self.cmdline = self.proc.cmdline()
            self.name = self.proc.name()
            self._create_time = self.proc.create_time()
        except psutil.NoSuchProcess:
            raise TargetNotFoundError(
                f"no process with PID {pid} — check the PID with `ps aux` or `wattlens gui`'s picker"
            ) from None
        except psutil.AccessDenied:
            raise TargetAccessError(
                f"not allowed to inspect PID {pid}",
                hint="run wattlens as the same user as the target, or with sudo",
            ) from None
        self.pid = pid
        self._rescan_ns = int(rescan_s * 1e9)
        self._last_scan_ns = 0
        self._members: dict[int, psutil.Process] = {pid: self.proc}
        self._cpu_seen: dict[int, float] = {}
        self._cpu_dead_s = 0.0

    def is_alive(self) -> bool:
        try:
            return self.proc.is_running() and self.proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def exit_code(self) -> int | None:
        """The exit status when the target is our own child, else None."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
        return None

    def pids(self) -> set[int]:
        self._refresh_members()
        return set(self._members)

    def _refresh_members(self) -> None:
        now = time.monotonic_ns()
        if now - self._last_scan_ns < self._rescan_ns:
            return
        self._last_scan_ns = now
        try:
            for child in self.proc.children(recursive=True):
                self._members.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass

    def cpu_time_s(self) -> float:
        """User+system CPU seconds of the tree so far (children that exited keep their share)."""
        self._refresh_members()
        total = 0.0
        for pid, p in list(self._members.items()):
            try:
                t = p.cpu_times()
                cpu_s = t.user + t.system
                self._cpu_seen[pid] = cpu_s
                total += cpu_s
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._cpu_dead_s += self._cpu_seen.pop(pid, 0.0)
                self._members.pop(pid, None)
        return total + self._cpu_dead_s

    def describe(self) -> dict:
        return {"pid": self.pid, "name": self.name, "cmdline": self.cmdline,
                "create_time": self._create_time}


def system_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine over all logical CPUs since boot.

    Busy time is the denominator of CPU shares and the load of the CPU power model. Guest time
    is already inside user time on Linux, so it is not counted twice.
    """
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - idle, total
