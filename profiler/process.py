"""The target: a PID and its children, followed over time, and its share of CPU time.

psutil is the only thing that reads /proc here; a process's CPU time is read from its CPU-time
clock where the kernel offers one (:func:`process_cpu_s`). Children are rescanned at most once a second
(``children(recursive=True)`` walks every PID on the host, too costly at 10 Hz).

A child found by a rescan may have run for up to a second before it was found. Its CPU time from
before the previous reading was spent in intervals already recorded (as other processes' time),
so it is not added to the tree's total in one go — that made one tick read up to 750 % CPU and
the whole machine's power. It is counted from its first reading on and the CPU seconds it spent
unseen are kept in ``unobserved_cpu_s`` (the session reports them). A child created after the
previous reading is counted whole: all its time falls in the current interval.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

import psutil

from wattlens.profiler.errors import BadInputError, TargetAccessError, TargetNotFoundError


def exit_text(code: int | None) -> str:
    """How a process ended, in words, from its exit status as Popen and
    ``os.waitstatus_to_exitcode`` give it (−N when signal N ended it): "exited with exit code 3",
    "ended by signal 2 (SIGINT)", "exited" when the status is unknown. The one wording of a
    command's or target's end (the end reason, `wattlens run`'s last line)."""
    if code is None:
        return "exited"
    if code >= 0:
        return f"exited with exit code {code}"
    try:
        return f"ended by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:  # a number this platform has no name for
        return f"ended by signal {-code}"


def _process_cpu_clock(pid: int) -> int:
    """The clock id of process ``pid``'s CPU time (Linux: ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``,
    what glibc's ``clock_getcpuclockid`` returns)."""
    return ((~pid) << 3) | 2


_HAS_CPU_CLOCK = sys.platform.startswith("linux") and hasattr(time, "clock_gettime_ns")


def pid_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (:func:`process_cpu_s`), or None when
    it cannot be read (gone, or not ours to read)."""
    try:
        return process_cpu_s(psutil.Process(pid))
    except (psutil.Error, OSError):
        return None


def process_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process, threads that exited included.

    On Linux it is read from the process's CPU-time clock, to the nanosecond: /proc (and psutil)
    give it in 10-ms clock ticks, so a short span of a light process read 0 — a DDP rank that
    computed for 8 ms of a 96-ms tick was charged 0 J for its step. The clock is also ~100x
    cheaper to read. Elsewhere, or where the clock cannot be read (the process is gone: psutil then
    raises ``NoSuchProcess``), psutil's figure. Anything that is not a real ``psutil.Process``
    (the fakes in tests) is read through its ``cpu_times()``.
    """
    if _HAS_CPU_CLOCK and type(proc) is psutil.Process:
        try:
            return time.clock_gettime_ns(_process_cpu_clock(proc.pid)) / 1e9
        except OSError:
            pass
    t = proc.cpu_times()
    return t.user + t.system


def tree_children(root: psutil.Process) -> list[psutil.Process]:
    """``root``'s descendants (``children(recursive=True)``), without wattlens itself and its own
    children (py-spy): attached to an ancestor of wattlens (the shell it was started from), they
    are not the target's work, and must never be measured or stack-sampled as it. Every walk of a
    target's tree goes through here. Raises what ``children`` raises (the root has gone)."""
    children = root.children(recursive=True)
    if any(c.pid == os.getpid() for c in children):
        ours = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
        children = [c for c in children if c.pid not in ours]
    return children


def refuse_self(pid: int) -> None:
    """What `attach` (the CLI, the app) checks first: a user's PID that is wattlens itself is
    refused in one line (`exec wattlens attach $$` measured itself without a word). Target itself
    takes our own PID: `optimize` measures its A/B rounds in this process."""
    if pid == os.getpid():
        raise BadInputError(f"PID {pid} is wattlens itself",
                            hint="pass the PID of your training or inference process (see `ps aux`)")


class Target:
    """A process tree rooted at ``pid``. ``cpu_time_s()`` is the tree's user+system CPU time,
    counting exited children through the last value seen for them."""

    def __init__(self, pid: int, *, rescan_s: float = 1.0, process: psutil.Process | None = None,
                 wall_clock: Callable[[], float] = time.time, exited_ok: bool = False):
        """``process`` (a ``psutil.Process`` or anything with its ``children``, ``cpu_times``,
        ``create_time``, ``cmdline``, ``name``, ``is_running`` and ``status``) replaces the OS
        lookup of ``pid``; ``wall_clock`` is the clock ``create_time()`` is on. Tests fake both.
        ``exited_ok``: a process that has already exited but is not reaped yet (a zombie: our own
        launched child, `wattlens run -- true`) is a target whose session ends at once; else it is
        refused, as to attach to it would measure nothing."""
        if pid <= 0:
            raise TargetNotFoundError(f"PID {pid} is not a valid process id — pass a positive PID (see `ps aux`)")
        try:
            self.proc = process if process is not None else psutil.Process(pid)
            try:
                self.cmdline = self.proc.cmdline()
            except psutil.ZombieProcess:  # exited, not reaped: its command line is gone
                if not exited_ok:
                    raise TargetNotFoundError(
                        f"process {pid} has already exited (a zombie its parent has not reaped)",
                        hint="attach to a running process: see `ps aux` or `wattlens gui`'s picker") from None
                self.cmdline = []
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
        self._wall_clock = wall_clock
        self._members: dict[int, psutil.Process] = {pid: self.proc}
        self._parent: dict[int, int | None] = {pid: None}  # member → its parent PID (per-rank grouping)
        self._new: set[int] = set()  # members found but not yet read
        self._gone: set[int] = set()  # members that exited: never re-added
        self._cpu_seen: dict[int, float] = {}  # last CPU seconds read per member
        self._cpu_base: dict[int, float] = {}  # CPU seconds a member had spent before it was seen
        self._cpu_dead_s = 0.0
        self._last_read_wall: float | None = None  # wall time of the previous cpu_time_s()
        self.unobserved_cpu_s = 0.0  # CPU seconds children spent before a rescan found them

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
            for child in tree_children(self.proc):
                if child.pid not in self._members and child.pid not in self._gone:
                    self._members[child.pid] = child
                    self._new.add(child.pid)
                    try:
                        self._parent[child.pid] = child.ppid()
                    except (psutil.Error, AttributeError):
                        self._parent[child.pid] = None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass

    def cpu_time_s(self) -> float:
        """User+system CPU seconds of the tree since it was first read, counting each member from
        when it was seen (see the module docstring); members that exited keep their share."""
        self._refresh_members()
        read_wall = self._wall_clock()
        total = 0.0
        for pid, p in list(self._members.items()):
            try:
                cpu_s = process_cpu_s(p)
                if pid in self._new:
                    self._new.discard(pid)
                    self._cpu_base[pid] = self._unseen_part(p, cpu_s)
                self._cpu_seen[pid] = cpu_s
                total += cpu_s - self._cpu_base.get(pid, 0.0)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._forget(pid)
        self._last_read_wall = read_wall
        return total + self._cpu_dead_s

    def member_cpu_s(self) -> dict[int, float]:
        """Each live member's CPU seconds as counted in the last ``cpu_time_s()`` (from when it was
        seen, as in the tree's total): what the per-rank split shares CPU energy by."""
        return {pid: s - self._cpu_base.get(pid, 0.0) for pid, s in self._cpu_seen.items()
                if pid in self._members}

    def parents(self) -> dict[int, int | None]:
        """Member PID → its parent's PID (None for the root or when unreadable)."""
        return dict(self._parent)

    def _unseen_part(self, p, cpu_s: float) -> float:
        """The CPU seconds of a newly found member that belong to earlier, recorded intervals."""
        if self._last_read_wall is None:
            return 0.0  # found before the first reading: the sampler's baseline absorbs it
        try:
            created = p.create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            created = None
        # psutil's create_time adds the start tick to /proc/stat's whole-second boot time, so it
        # can read up to 1 s early: a child is only ever judged older than it is (counted less,
        # never twice)
        if created is not None and created >= self._last_read_wall:
            return 0.0  # born in this interval: all its time is this interval's
        self.unobserved_cpu_s += cpu_s
        return cpu_s

    def _forget(self, pid: int) -> None:
        """A member that exited (or became unreadable) keeps the share it had; it is never re-added
        (a zombie still listed by ``children()`` would count its time twice)."""
        if pid in self._cpu_seen:
            self._cpu_dead_s += self._cpu_seen.pop(pid) - self._cpu_base.pop(pid, 0.0)
        self._members.pop(pid, None)
        self._new.discard(pid)
        self._gone.add(pid)

    def describe(self) -> dict:
        return {"pid": self.pid, "name": self.name, "cmdline": self.cmdline,
                "create_time": self._create_time}


def logical_cpus() -> int:
    """Logical CPUs of the machine (the CPU-percentage limit is 100 × this)."""
    return psutil.cpu_count(logical=True) or 1


def system_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine over all logical CPUs since boot.

    Busy time is the denominator of CPU shares and the load of the CPU power model. Guest time
    is already inside user time on Linux, so it is not counted twice.
    """
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - idle, total
