"""Which processes of an attached process tree run the model: the ranks of a torch.distributed job.

``wattlens attach PID`` measures PID's whole tree for energy, but py-spy reads one process's
stacks. When PID is a launcher (``torchrun``, ``python -m torch.distributed.run``, a shell script)
the model runs in its children, the ranks, and the launcher's own Python thread idles in its
monitor loop. :func:`find_workers` says which processes to sample, in this order:

1. processes whose environment (``/proc/PID/environ`` through ``psutil.Process.environ()``,
   readable for our own user's processes) holds ``RANK``: the ranks, as torchrun and
   torch.distributed.run start them. Of a chain of processes with the same RANK only the topmost
   counts (a rank's forked DataLoader workers inherit its environment; their time is the rank's);
2. when PID is a known launcher, or not a Python process at all, its topmost Python descendants
   (multiprocessing's resource tracker and forkserver helpers left out); their rank is unknown;
3. else PID itself (a single-process job; it may carry RANK when it is one rank of a job).

The environment is what the process was started with: a rank that sets ``os.environ["RANK"]``
after it started (``mp.spawn`` children often do) shows no RANK there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from wattlens.profiler.process import tree_children

LAUNCHER_MARKS = ("torchrun", "torch.distributed.run", "torch.distributed.launch",
                  "torch/distributed/run.py", "torch/distributed/launch.py")
HELPER_MARKS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver",
                "multiprocessing.semaphore_tracker")
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True, slots=True)
class Worker:
    """A process to sample. ``found_by``: "environment" (RANK), "python-child" (a launcher's
    Python descendant, rank unknown) or "root" (the attached process itself)."""

    pid: int
    rank: int | None
    local_rank: int | None
    world_size: int | None
    found_by: str

    def label(self) -> str:
        """"rank 1 (PID 4242)" or "PID 4242", for messages."""
        return f"rank {self.rank} (PID {self.pid})" if self.rank is not None else f"PID {self.pid}"


def _int(env: dict[str, str], key: str) -> int | None:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        return None


def rank_fields(proc: psutil.Process) -> tuple[int | None, int | None, int | None]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) from the process's start environment; None where absent or
    unreadable (another user's process)."""
    try:
        env = proc.environ()
    except _GONE:
        return None, None, None
    return _int(env, "RANK"), _int(env, "LOCAL_RANK"), _int(env, "WORLD_SIZE")


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except _GONE:
        return []


def is_launcher(cmdline: list[str]) -> bool:
    """A command line that starts ranks and runs no model itself (torchrun and its module forms)."""
    return any(os.path.basename(a) == "torchrun" or any(m in a for m in LAUNCHER_MARKS[1:])
               for a in cmdline[:3])


def is_python(proc: psutil.Process, cmdline: list[str] | None = None) -> bool:
    """The process runs a Python interpreter (by its name or its command's first word)."""
    try:
        name = proc.name()
    except _GONE:
        return False
    cmdline = _cmdline(proc) if cmdline is None else cmdline
    first = os.path.basename(cmdline[0]) if cmdline else ""
    return name.startswith("python") or first.startswith("python")


def find_workers(root: psutil.Process) -> list[Worker]:
    """The processes of ``root``'s tree to sample (see the module docstring); empty while a
    launcher has not started its workers yet, or when ``root`` has exited."""
    try:
        children = tree_children(root)
    except _GONE:
        return []
    procs = {root.pid: root, **{c.pid: c for c in children}}
    parent: dict[int, int | None] = {}
    fields: dict[int, tuple[int | None, int | None, int | None]] = {}
    for pid, proc in procs.items():
        try:
            parent[pid] = proc.ppid() if pid != root.pid else None
        except _GONE:
            continue
        fields[pid] = rank_fields(proc)

    ranked = [Worker(pid, *fields[pid], "environment") for pid in sorted(fields)
              if fields[pid][0] is not None
              and not (parent.get(pid) in fields and fields[parent[pid]][0] == fields[pid][0])]
    if ranked:
        return sorted(ranked, key=lambda w: (w.rank, w.pid))

    root_cmd = _cmdline(root)
    if is_launcher(root_cmd) or not is_python(root, root_cmd):
        pythons = {pid for pid in fields if pid != root.pid and _is_worker_python(procs[pid])}
        top = [pid for pid in sorted(pythons) if not _has_ancestor_in(pid, pythons, parent)]
        if top or is_launcher(root_cmd):
            return [Worker(pid, None, None, None, "python-child") for pid in top]
    return [Worker(root.pid, *fields.get(root.pid, (None, None, None)), "root")]


def _is_worker_python(proc: psutil.Process) -> bool:
    cmdline = _cmdline(proc)
    return is_python(proc, cmdline) and not any(m in a for a in cmdline for m in HELPER_MARKS)


def _has_ancestor_in(pid: int, pids: Iterable[int], parent: dict[int, int | None]) -> bool:
    pids = set(pids)
    seen: set[int] = set()
    p = parent.get(pid)
    while p is not None and p not in seen:
        if p in pids:
            return True
        seen.add(p)
        p = parent.get(p)
    return False


def owners(root: psutil.Process, workers: Iterable[int]) -> dict[int, int | None]:
    """Every live member of ``root``'s tree → the worker whose subtree holds it (itself, or its
    nearest worker ancestor), or None (the launcher and its helpers: time no worker spent)."""
    workers = set(workers)
    try:
        members = [root, *tree_children(root)]
    except _GONE:
        return {}
    parent: dict[int, int | None] = {}
    for proc in members:
        try:
            parent[proc.pid] = proc.ppid() if proc.pid != root.pid else None
        except _GONE:
            continue
    out: dict[int, int | None] = {}
    for pid in parent:
        p: int | None = pid
        seen: set[int] = set()
        while p is not None and p not in workers and p not in seen:
            seen.add(p)
            p = parent.get(p)
        out[pid] = p if p in workers else None
    return out
