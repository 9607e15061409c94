"""The process picker's model: running processes, Python ones first, with what we know about
each (torch loaded? on a GPU, with how much memory? CPU % since the previous scan) and a
name/PID filter plus a "Python only" switch (on by default: kernel threads and shells hidden).

Scanning /proc/PID/maps for libtorch is slow for big processes, so it is a separate function the
view runs in a worker, one PID at a time; the row says "checking…" until then. GPU membership
comes from NVML when it is available; when it is not, the model carries the one-line reason and
the view shows it instead of pretending no process uses a GPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import psutil

from wattlens.app.gui.models.signal import Signal

_TORCH_MARKERS = ("libtorch", "/torch/_C", "torch/lib/")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    cmdline: str
    user: str | None
    is_python: bool
    rss_bytes: int | None
    create_time: float
    torch: bool | None = None  # None: not known (not checked yet, or not readable)
    torch_note: str = ""  # why torch is None: "checking…", "cannot read /proc/…/maps"
    gpu_mem_bytes: int | None = None  # GPU memory used, when NVML says the PID is on a GPU
    on_gpu: bool = False
    cpu_time_s: float | None = None  # user + system CPU seconds so far (None: not readable)
    scanned_at_s: float = 0.0  # time.monotonic() of the scan that read cpu_time_s
    cpu_percent: float | None = None  # between two scans (100 % = one core); None until the second

    @property
    def torch_text(self) -> str:
        if self.torch is True:
            return "torch"
        if self.torch is False:
            return "—" if self.is_python else ""
        return self.torch_note or ""


@dataclass(frozen=True)
class GpuState:
    """PID → GPU memory (bytes, None when the driver hides it), or why that is not known."""

    processes: dict[int, int | None] | None
    reason: str | None = None


def is_python(name: str, cmdline: list[str], exe: str | None = None) -> bool:
    names = [name, os.path.basename(exe or ""), os.path.basename(cmdline[0]) if cmdline else ""]
    return any(n.lower().startswith(("python", "pypy", "ipython", "jupyter")) for n in names if n)


def scan_processes(exclude: set[int] | None = None) -> list[ProcessInfo]:
    """Every process we can see, minus ``exclude`` (e.g. our own PID). Cheap fields only."""
    exclude = exclude or set()
    out = []
    now_s = time.monotonic()
    for p in psutil.process_iter(["pid", "name", "cmdline", "username", "memory_info", "exe",
                                  "create_time", "cpu_times"]):
        info = p.info
        pid = info["pid"]
        if pid in exclude or pid == 0:
            continue
        cmd = info.get("cmdline") or []
        name = info.get("name") or "?"
        mem = info.get("memory_info")
        cpu = info.get("cpu_times")
        out.append(ProcessInfo(
            pid=pid, name=name, cmdline=" ".join(" ⏎ ".join(c.splitlines()) for c in cmd) if cmd else f"[{name}]",
            user=info.get("username"), is_python=is_python(name, cmd, info.get("exe")),
            rss_bytes=mem.rss if mem else None, create_time=info.get("create_time") or 0.0,
            cpu_time_s=(cpu.user + cpu.system) if cpu else None, scanned_at_s=now_s))
    return out


def torch_loaded(pid: int, proc_root: str = "/proc") -> tuple[bool | None, str]:
    """(True/False, "") when /proc/PID/maps could be read, else (None, why)."""
    path = os.path.join(proc_root, str(pid), "maps")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if any(m in line for m in _TORCH_MARKERS):
                    return True, ""
        return False, ""
    except FileNotFoundError:
        return None, "exited"
    except PermissionError:
        return None, "not readable (another user's process)"
    except OSError as exc:
        return None, f"not readable ({exc.strerror or exc})"


def gpu_processes() -> GpuState:
    """Which PIDs run on an NVIDIA GPU (all devices), through the one NVML wrapper."""
    from wattlens.profiler.errors import NvmlError
    from wattlens.profiler.pidns import PidNamespace
    from wattlens.profiler.sources import nvml

    try:
        nvml.init()
        n = nvml.device_count()
    except NvmlError as exc:
        return GpuState(None, f"GPU use unknown — {exc.message}")
    if n == 0:
        return GpuState(None, "GPU use unknown — NVML found no GPU")
    merged: dict[int, int | None] = {}
    reasons = []
    for i in range(n):
        try:
            procs, reason = nvml.NvmlDevice(i).running_processes()
        except NvmlError as exc:
            procs, reason = None, exc.message
        if procs is None:
            reasons.append(f"GPU {i}: {reason}")
            continue
        for pid, mem in procs.items():
            prev = merged.get(pid)
            merged[pid] = mem if prev is None else prev + (mem or 0)
    if reasons and not merged:
        return GpuState(None, "GPU use unknown — " + "; ".join(reasons))
    ours, ns_reason = PidNamespace().to_ours(set(merged))  # NVML reports host PIDs
    if ours is None:
        return GpuState(None, f"GPU use unknown — {ns_reason}")
    merged = {ours[h]: mem for h, mem in merged.items() if h in ours}
    return GpuState(merged, "; ".join(reasons) or None)


def cpu_percent_between(old: ProcessInfo, new: ProcessInfo) -> float | None:
    """CPU use of one process between two scans, in % of one core; None when not measurable."""
    if old.cpu_time_s is None or new.cpu_time_s is None or old.create_time != new.create_time:
        return None
    dt_s = new.scanned_at_s - old.scanned_at_s
    if dt_s <= 0:
        return None
    return max(0.0, (new.cpu_time_s - old.cpu_time_s) / dt_s * 100.0)


def check_torch(pids: list[int]) -> dict[int, tuple[bool | None, str]]:
    """``torch_loaded`` for many PIDs (one worker call)."""
    return {pid: torch_loaded(pid) for pid in pids}


def sort_key(p: ProcessInfo):
    """Python first; among them torch first, then GPU users, then by name and PID."""
    return (not p.is_python, p.torch is not True, not p.on_gpu, p.name.lower(), p.pid)


class ProcessListModel:
    def __init__(self) -> None:
        self._rows: dict[int, ProcessInfo] = {}
        self.filter_text = ""
        self.python_only = True  # kernel threads, shells and other non-Python processes hidden
        self.gpu = GpuState(None, "GPU use not checked yet")
        self.changed = Signal()  # () whenever the visible rows may differ

    # ---- updates ----------------------------------------------------------------------------
    def set_processes(self, rows: list[ProcessInfo], gpu: GpuState | None = None) -> None:
        """Replace the list; keep what we already learnt about a PID that is still the same
        process (same create time)."""
        if gpu is not None:
            self.gpu = gpu
        new: dict[int, ProcessInfo] = {}
        for p in rows:
            old = self._rows.get(p.pid)
            if old is not None:
                p = replace(p, cpu_percent=cpu_percent_between(old, p))
            if old is not None and old.create_time == p.create_time and old.torch is not None:
                p = replace(p, torch=old.torch, torch_note=old.torch_note)
            elif p.is_python and p.torch is None and not p.torch_note:
                p = replace(p, torch_note="checking…")
            if self.gpu.processes is not None and p.pid in self.gpu.processes:
                p = replace(p, on_gpu=True, gpu_mem_bytes=self.gpu.processes[p.pid])
            new[p.pid] = p
        self._rows = new
        self.changed.emit()

    def set_torch(self, pid: int, loaded: bool | None, note: str = "") -> None:
        p = self._rows.get(pid)
        if p is None:
            return
        self._rows[pid] = replace(p, torch=loaded, torch_note=note)
        self.changed.emit()

    def set_torch_many(self, results: dict[int, tuple[bool | None, str]]) -> None:
        for pid, (loaded, note) in results.items():
            p = self._rows.get(pid)
            if p is not None:
                self._rows[pid] = replace(p, torch=loaded, torch_note=note)
        self.changed.emit()

    def set_python_only(self, on: bool) -> None:
        self.python_only = bool(on)
        self.changed.emit()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.changed.emit()

    # ---- queries ----------------------------------------------------------------------------
    def get(self, pid: int) -> ProcessInfo | None:
        return self._rows.get(pid)

    def all(self) -> list[ProcessInfo]:
        return sorted(self._rows.values(), key=sort_key)

    def visible(self) -> list[ProcessInfo]:
        text = self.filter_text.lower()
        rows = [p for p in self.all() if p.is_python] if self.python_only else self.all()
        if not text:
            return rows
        if text.isdigit():
            return [p for p in rows if str(p.pid).startswith(text) or text in p.cmdline.lower()]
        return [p for p in rows if text in p.name.lower() or text in p.cmdline.lower()]

    def pending_torch_checks(self) -> list[int]:
        """Python PIDs whose torch status is still to be read (the view runs these in a worker)."""
        return [p.pid for p in self.all() if p.is_python and p.torch is None and p.torch_note == "checking…"]

    @property
    def gpu_note(self) -> str:
        if self.gpu.processes is None:
            return self.gpu.reason or "GPU use unknown"
        n = sum(1 for p in self._rows.values() if p.on_gpu)
        extra = f" ({self.gpu.reason})" if self.gpu.reason else ""
        return f"GPU: {n} process(es) on a GPU{extra}"
