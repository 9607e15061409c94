"""PIDs as NVML reports them (the host's) versus PIDs as wattlens sees them (its own namespace).

NVML always reports processes by their PID in the *initial* (host) PID namespace. A wattlens
running in a container with its own PID namespace (no ``--pid=host``) sees other numbers, so
matching NVML's PIDs against the target's would find nothing and read 0 J / 0 B. This module
detects that case and maps our PIDs to host PIDs where the host's view is visible:

- our PID namespace is the host's when ``/proc/self/ns/pid`` links to ``pid:[4026531836]``
  (the kernel's PROC_PID_INIT_INO, the same on every Linux) — then the mapping is the identity;
- otherwise, a host ``/proc`` mounted into the container (``WATTLENS_HOST_PROC``, e.g.
  ``-v /proc:/host/proc:ro``) lists every process with its ``NSpid:`` line (its PID in each
  nested namespace, outermost first); the entry whose last NSpid is ours and whose namespace is
  ours gives the host PID;
- else the mapping is impossible: None with the reason and the fix (``--pid=host``).

Every /proc read goes through ``proc_root`` / ``host_proc_root`` so tests can fake the OS.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC_ROOT = "/proc"  # the hardware/OS boundary: tests point it at a fake /proc
HOST_PID_NS_INODE = 4026531836  # PROC_PID_INIT_INO (0xEFFFFFFC): the initial PID namespace
NO_MAPPING_REASON = ("wattlens runs in a container's own PID namespace and NVML reports host PIDs, "
                     "so the target's GPU processes cannot be recognised — run the container with "
                     "--pid=host (or mount the host's /proc and set WATTLENS_HOST_PROC)")


def _ns_inode(link: str) -> int | None:
    """``pid:[4026531836]`` → 4026531836."""
    try:
        return int(link.rsplit("[", 1)[1].rstrip("]"))
    except (IndexError, ValueError):
        return None


def nspid(status_text: str) -> list[int] | None:
    """The ``NSpid:`` line of /proc/PID/status: PIDs from the outermost namespace inward."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            try:
                return [int(x) for x in line.split()[1:]]
            except ValueError:
                return None
    return None


class PidNamespace:
    """Maps the PIDs wattlens sees to the host PIDs NVML reports."""

    def __init__(self, proc_root: str | os.PathLike | None = None,
                 host_proc_root: str | os.PathLike | None = None):
        self.proc_root = Path(proc_root if proc_root is not None else PROC_ROOT)
        host = host_proc_root if host_proc_root is not None else os.environ.get("WATTLENS_HOST_PROC")
        self.host_proc_root = Path(host) if host else None
        self.own_ns_link = self._readlink(self.proc_root / "self" / "ns" / "pid")
        inode = _ns_inode(self.own_ns_link) if self.own_ns_link else None
        # unreadable namespace link (very old kernel, restricted /proc): assume the host's
        self.in_host_namespace = inode is None or inode == HOST_PID_NS_INODE
        self._cache: dict[int, int | None] = {}

    @staticmethod
    def _readlink(path: Path) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def to_host(self, pids: set[int]) -> tuple[dict[int, int] | None, str | None]:
        """Our PID → host PID for ``pids``; (None, reason) when the host PIDs cannot be known."""
        if self.in_host_namespace:
            return {p: p for p in pids}, None
        missing = [p for p in pids if p not in self._cache]
        if missing:
            self._scan_host(set(missing))
        out = {p: h for p in pids if (h := self._cache.get(p)) is not None}
        if not out and pids:
            return None, NO_MAPPING_REASON
        return out, None

    def to_ours(self, host_pids: set[int]) -> tuple[dict[int, int] | None, str | None]:
        """Host PID → our PID for the processes we can see (for the app's process list)."""
        if self.in_host_namespace:
            return {p: p for p in host_pids}, None
        if self.host_proc_root is None:
            return None, NO_MAPPING_REASON
        out = {}
        for host_pid in host_pids:
            ours = self._ours_of(host_pid)
            if ours is not None:
                out[host_pid] = ours
        return out, None

    def _ours_of(self, host_pid: int) -> int | None:
        assert self.host_proc_root is not None
        base = self.host_proc_root / str(host_pid)
        if self._readlink(base / "ns" / "pid") != self.own_ns_link:
            return None
        try:
            chain = nspid((base / "status").read_text())
        except OSError:
            return None
        return chain[-1] if chain and len(chain) > 1 else None

    def _scan_host(self, wanted: set[int]) -> None:
        for p in wanted:
            self._cache[p] = None
        if self.host_proc_root is None:
            return
        try:
            entries = [e for e in os.listdir(self.host_proc_root) if e.isdigit()]
        except OSError:
            return
        for entry in entries:
            ours = self._ours_of(int(entry))
            if ours in wanted:
                self._cache[ours] = int(entry)
