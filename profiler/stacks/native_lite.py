"""Name the autograd op a thread is running from its native stack, stopping it for microseconds.

py-spy's ``--native`` reads (:mod:`.native`) name the autograd node of each backward read, but
py-spy names native addresses while the target is stopped, and its first read of a run loads
libtorch_cpu's whole symbol table (530k symbols) that way: 0.3-0.65 s with the target stopped on
a quiet machine, seconds on a busy one. It also cannot unwind through hand-written BLAS kernels
(half of the backward reads come out as :data:`~.native.BLAS_UNWOUND`).

This reader does the stop part itself and nothing else:

1. **Stop one thread, copy its stack, let it go** (:meth:`LiteReader.read`): ``PTRACE_SEIZE`` +
   ``PTRACE_INTERRUPT`` the thread, ``waitpid`` for the stop, ``PTRACE_GETREGS`` (its stack
   pointer), ``process_vm_readv`` of the stack from there up (at most :data:`STACK_CAP_BYTES`),
   ``PTRACE_DETACH``. Only that thread stops, for the time of one register read and one memory
   copy; each read's stop (seize to detach) is *measured* and returned with it.
2. **Symbols in our own process, before the first read** (:meth:`LiteReader.load`): the
   function symbols of the torch libraries the target has mapped, read from their ELF
   ``.symtab`` (else ``.dynsym``) with numpy, keeping only the few thousand that matter here:
   ``torch::autograd::generated::<Op>::apply`` (the op), ``AccumulateGrad::apply``,
   ``PyNode::apply`` (a Python ``autograd.Function``), ``InputBuffer::add`` (gradient
   accumulation) and any ``torch::autograd::Engine`` / ``PythonEngine`` member (the engine runs).
   Nothing of this happens while the target is stopped.
3. **Scan the copy** (outside the stop): every 8-byte word of the stack that falls into one of
   those functions and follows a call instruction is a return address into it. Innermost first,
   the first node names the op; an engine frame anywhere says the thread is in the backward.
   A backward read with no node is gradient accumulation if ``InputBuffer::add`` is on it, else
   :data:`~.native.ENGINE_OTHER`. The labels are :func:`.native.autograd_node`'s, so the op
   split downstream (:func:`.native.op_shares`, :mod:`.backward_map`) does not know which reader
   read. The scan needs no unwinding, so a read inside a BLAS kernel still names its node.

A stack copy holds stale words too (slots not yet overwritten): a return address left by an
earlier call can make a read look like it is in an op it has left. The call-instruction check
rejects data that merely falls into the text; it cannot reject a stale return address. The
benchmark (benchmarks/bench_native_lite.py) compares the op shares with py-spy's unwound ones.

**Which thread**: the target's main thread (its tid is its pid). On a CPU the autograd engine
runs the backward on the thread that called ``backward()``, which in a training script is the
main thread. On a GPU it runs the device's work on its own threads (``pt_autograd_<device>``):
a target that has such threads is not read here (:class:`LiteUnavailable`; py-spy's native
reads, which see every thread, do it as before). Nor is a backward run from another Python thread.

**x86-64 Linux only** (``user_regs_struct`` and the call-instruction check are x86-64's; aarch64
would need ``PTRACE_GETREGSET``): elsewhere :meth:`LiteReader.load` raises LiteUnavailable.

Errors: :class:`ThreadBusy` when the thread is traced by someone else at that moment (py-spy's
own blocking reads seize it too): count it and read again later. :class:`LiteUnavailable` (with a
one-line reason) when reads cannot work: ptrace denied, the process or thread gone, no torch
library or no symbols in it. A thread is never left stopped: the detach is in a ``finally`` (which
first waits for the stop when an exception came before it: a detach needs one), and if our process
dies the kernel detaches its tracees. The stop holds the GIL from the interrupt to the detach (see
:func:`_libc`), so no other thread of ours lengthens it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wattlens.profiler.stacks.native import ENGINE_OTHER, GRAD_ACCUMULATION, PYTHON_FUNCTION

#: The most of a stack copied per read, from the stack pointer up. Python 3.11 calls Python
#: functions without C recursion, so a training loop's native stack in ``backward()`` is a few
#: tens of KiB (engine, node, kernels, BLAS); 512 KiB leaves room for deep C++ stacks and copies
#: in ~0.1 ms.
STACK_CAP_BYTES = 512 * 1024

_PTRACE_GETREGS = 12
_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_EVENT_STOP = 128
# EPERM with no tracer in /proc: denied, or a tracer (py-spy) let go between the seize and the
# look; seen beside py-spy --native. Tried this many times, 5 ms apart, before calling it denied.
_DENIED_TRIES = 4
_WALL = 0x40000000  # __WALL: wait for a thread of another process (not os.* in Python)
# how long the stop is waited for with the GIL held (WNOHANG polls _POLL_US apart, sleeping, so
# the CPU is the target's) before a blocking wait that lets our other threads run: a thread
# stops within a fraction of a millisecond (median 0.17 ms, measured, 2 busy cores)
_SPIN_NS = 2_000_000
_POLL_US = 20

_ENGINE = 1  # flags of a labelled function
_ENGINE_FRAMES = 2  # distinct engine functions on a stack that is in the backward (see label)
_ACCUMULATE = 2

# a function of torch::autograd that matters here, matched at the start of its mangled name
_AUTOGRAD_RE = re.compile(
    rb"\x00_ZN5torch8autograd(?:9generatedL?(\d+)|(6Engine|6python12PythonEngine)"
    rb"|(14AccumulateGrad5applyE)|(6PyNode5applyE)|(11InputBuffer3addE))")
_OP_RE = re.compile(rb"[A-Za-z0-9_]+Backward\d*")
# torch >= 2.5: <Op>::apply tail-calls the file-static generated::<Op>_apply_functional, so while
# the op computes, only that function's frame is on the stack
_FUNCTIONAL = b"_apply_functional"
_TORCH_LIB_RE = re.compile(r"/libtorch[^/]*\.so[^/]*$")


#: ``WATTLENS_NATIVE_LITE=0`` switches lite reads off: the backward is then split by the native
#: py-spy runs alone, the first at once, as before lite reads existed (a way out if ptrace reads of
#: one thread misbehave on some system; the tests of that path use it too).
LITE_ENV = "WATTLENS_NATIVE_LITE"


def lite_enabled() -> bool:
    """Whether lite reads are on (:data:`LITE_ENV` is not 0/false/no/off)."""
    return os.environ.get(LITE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class LiteUnavailable(Exception):
    """Lite reads cannot work on this target (the message says why in one line): fall back to
    py-spy's native reads."""


class ThreadBusy(Exception):
    """The thread is traced by another process at this moment (py-spy's blocking reads): read
    again later."""


@dataclass(frozen=True)
class LiteRead:
    """One read: the autograd op (as :func:`.native.autograd_node` labels it) when the thread was
    in the backward, else None; when it began and how long the thread was stopped (measured,
    seize to detach), monotonic ns."""

    op: str | None
    t_ns: int
    stop_ns: int


class _Regs(ctypes.Structure):  # struct user_regs_struct, x86-64
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
        "fs_base gs_base ds es fs gs").split()]


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL:
    """libc's ptrace, process_vm_readv and waitpid, called *without releasing the GIL*
    (``ctypes.PyDLL``): each is a system call of microseconds, and a GIL handed over between them
    while the thread is stopped is taken back only after another busy Python thread of ours has
    run its switch interval (5 ms): stops of 9 ms median instead of 0.3 ms, measured with one
    busy thread. Never a call that blocks (waitpid only with WNOHANG here)."""
    libc = ctypes.PyDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
                                      ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong]
    libc.waitpid.restype = ctypes.c_int
    libc.waitpid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    libc.usleep.restype = ctypes.c_int
    libc.usleep.argtypes = [ctypes.c_uint]
    return libc


def supported() -> str | None:
    """None where lite reads can work (x86-64 Linux), else why not."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return f"lite native reads are x86-64 Linux only (this is {sys.platform} {platform.machine()})"
    return None


class _SymbolTable:
    """The labelled functions of one ELF library: sorted starts and ends (link-time addresses),
    per function its op label (index into ``ops``, -1 none) and flags; the exec segment's
    placement, to go from a file offset to a link-time address; the file, for the call check."""

    def __init__(self, path: str):
        import numpy as np

        with open(path, "rb") as fh:
            self.data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        m = self.data
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise LiteUnavailable(f"{path} is not a 64-bit little-endian ELF file")
        phoff, shoff = struct.unpack_from("<QQ", m, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", m, 0x36)
        self.segments = []  # (p_offset, p_vaddr, p_filesz) of each executable PT_LOAD
        for i in range(phnum):
            p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", m, phoff + i * phentsize)
            if p_type == 1 and p_flags & 1:
                self.segments.append((p_offset, p_vaddr, p_filesz))
        sections = [struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize) for i in range(shnum)]
        names_at = sections[shstrndx][4]

        def name(sec) -> bytes:
            return m[names_at + sec[0]:m.find(b"\0", names_at + sec[0])]

        by_name = {name(s): s for s in sections}
        symtab = by_name.get(b".symtab") or by_name.get(b".dynsym")
        if symtab is None:
            raise LiteUnavailable(f"{path} has no symbol table")
        strtab = sections[symtab[6]]
        str_at, str_size = strtab[4], strtab[5]
        # the labelled names: offset in the string table -> (op label or None, flags)
        found: dict[int, tuple[bytes | None, int]] = {}
        for hit in _AUTOGRAD_RE.finditer(m, str_at - 1 if str_at else 0, str_at + str_size):
            at = hit.start() + 1 - str_at
            if hit.group(1) is not None:  # generated::<Op>::apply, or <Op>_apply_functional?
                n = int(hit.group(1))
                op = m[hit.end():hit.end() + n]
                if m[hit.end() + n:hit.end() + n + 7] == b"5applyE" and _OP_RE.fullmatch(op):
                    found[at] = (op, 0)
                elif op.endswith(_FUNCTIONAL) and _OP_RE.fullmatch(op[:-len(_FUNCTIONAL)]):
                    found[at] = (op[:-len(_FUNCTIONAL)], 0)
            elif hit.group(2) is not None:
                found[at] = (None, _ENGINE)
            elif hit.group(3) is not None:
                found[at] = (b"AccumulateGrad", 0)
            elif hit.group(4) is not None:
                found[at] = (PYTHON_FUNCTION.encode(), 0)
            else:
                found[at] = (None, _ACCUMULATE)
        dt = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                       ("value", "<u8"), ("size", "<u8")])
        syms = np.frombuffer(m, dtype=dt, count=symtab[5] // dt.itemsize, offset=symtab[4])
        keys = np.fromiter(found, dtype=np.uint32, count=len(found))
        keep = ((syms["info"] & 0xF) == 2) & (syms["value"] > 0) & (syms["size"] > 0) \
            & np.isin(syms["name"], keys)
        syms = syms[keep]
        syms = syms[np.argsort(syms["value"], kind="stable")]
        self.starts = syms["value"].astype(np.uint64)
        self.ends = self.starts + syms["size"].astype(np.uint64)
        self.ops: list[str] = []
        op_index: dict[bytes, int] = {}
        self.op = np.full(len(syms), -1, dtype=np.int32)
        self.flags = np.zeros(len(syms), dtype=np.uint8)
        for i, name_at in enumerate(syms["name"].tolist()):
            op, flags = found[name_at]
            self.flags[i] = flags
            if op is not None:
                if op not in op_index:
                    op_index[op] = len(self.ops)
                    self.ops.append(op.decode())
                self.op[i] = op_index[op]

    def __len__(self) -> int:
        return len(self.starts)

    def file_offset(self, vaddr: int) -> int | None:
        for p_offset, p_vaddr, p_filesz in self.segments:
            if p_vaddr <= vaddr < p_vaddr + p_filesz:
                return vaddr - p_vaddr + p_offset
        return None

    def after_call(self, vaddr: int) -> bool:
        """Do the bytes before ``vaddr`` end in an x86-64 call (``e8 rel32``, or ``ff /2`` with a
        register, memory or displacement operand)? A return address does; most data does not."""
        at = self.file_offset(vaddr)
        if at is None or at < 7:
            return False
        b = self.data[at - 7:at]
        if b[2] == 0xE8:
            return True
        # ff /2: modrm at the byte after ff, its reg field 2; operand of 0, 1, 4 or 5 more bytes
        return any(b[7 - k] == 0xFF and (b[8 - k] >> 3) & 7 == 2 for k in (2, 3, 4, 6, 7))


@dataclass
class _Mapping:
    lo: int
    hi: int
    bias: int  # runtime address - link-time address
    table: _SymbolTable


def _maps(pid: int) -> list[tuple[int, int, str, int, str]]:
    """(lo, hi, perms, file offset, path) of each mapping of process ``pid``."""
    out = []
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) < 5:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], int(parts[2], 16), parts[5].strip() if len(parts) > 5 else ""))
    return out


def engine_threads(pid: int) -> list[int]:
    """The threads of ``pid`` that torch's autograd engine runs a device's backward on
    (named ``pt_autograd_<n>``: CUDA and other accelerators)."""
    out = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("pt_autograd_"):
                    out.append(int(tid))
    return out


def tracer_of(tid: int) -> int | None:
    """The pid tracing thread ``tid`` (0: none), None if it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return None


class LiteReader:
    """Reads of one thread of process ``pid`` (default its main thread): :meth:`load` once (not
    with the target stopped; seconds at most), then :meth:`read` as often as wanted."""

    def __init__(self, pid: int, tid: int | None = None, *, stack_cap_bytes: int = STACK_CAP_BYTES):
        self.pid = int(pid)
        self.tid = int(tid) if tid is not None else self.pid
        self.stack_cap_bytes = int(stack_cap_bytes)
        self.symbols = 0  # labelled functions loaded
        self.load_s: float | None = None  # how long the symbols took to load (our process)
        self._mappings: list[_Mapping] = []
        self._stacks: list[tuple[int, int]] = []  # writable anonymous/stack mappings (lo, hi)
        self._libc: ctypes.CDLL | None = None
        self._seized = False  # a seize has worked: ptrace is allowed, a later EPERM is a tracer
        self._buf = ctypes.create_string_buffer(self.stack_cap_bytes)

    def _gone(self) -> LiteUnavailable:
        if not os.path.exists(f"/proc/{self.pid}"):
            return LiteUnavailable(f"process {self.pid} has exited")
        return LiteUnavailable(f"thread {self.tid} of process {self.pid} has exited")

    def load(self) -> None:
        """Find the target's torch libraries and load their autograd symbols. Raises
        :class:`LiteUnavailable` when lite reads cannot work here."""
        why = supported()
        if why is not None:
            raise LiteUnavailable(why)
        t0 = time.monotonic()
        try:
            maps = _maps(self.pid)
        except FileNotFoundError:
            raise self._gone() from None
        except PermissionError:
            raise LiteUnavailable(f"the memory map of process {self.pid} cannot be read "
                                  "(permission denied)") from None
        if engine_threads(self.pid):
            raise LiteUnavailable(
                "its backward runs on torch's device engine threads (pt_autograd_*), which lite "
                "reads do not follow")
        tables: dict[str, _SymbolTable | None] = {}
        for lo, hi, perms, offset, path in maps:
            if "x" not in perms or not _TORCH_LIB_RE.search(path):
                continue
            if path not in tables:
                local = f"/proc/{self.pid}/root{path}"  # the target's own file, even in a container
                try:
                    table = _SymbolTable(local if os.path.exists(local) else path)
                except (OSError, ValueError, struct.error):
                    table = None
                tables[path] = table if table is not None and len(table) else None
            table = tables[path]
            if table is None:
                continue
            # the runtime address lo maps file offset ``offset``: its link-time address follows
            # a mapping starts at a page: an lld-linked segment's p_offset need not (the same page)
            seg = next(((o, v) for o, v, n in table.segments if o - o % mmap.PAGESIZE <= offset < o + n),
                       None)
            if seg is not None:
                self._mappings.append(_Mapping(lo, hi, lo - (offset - seg[0] + seg[1]), table))
        if not tables:
            raise LiteUnavailable(f"process {self.pid} has no torch library loaded (libtorch*.so)")
        if not self._mappings:
            raise LiteUnavailable(
                f"no autograd symbols found in {', '.join(sorted(Path(p).name for p in tables))} "
                "(stripped libraries)")
        self._stacks = [(lo, hi) for lo, hi, perms, _, path in maps
                        if "rw" in perms and (path == "" or path.startswith("[stack"))]
        self.symbols = sum(len(t) for t in {id(m.table): m.table for m in self._mappings}.values())
        self._libc = _libc()
        self.load_s = time.monotonic() - t0

    # ------------------------------------------------------------------ the stop

    def _copy_stack(self) -> tuple[int, bytes]:
        """Stop the thread, copy its stack, detach: (its instruction pointer, the copy). Raises
        ThreadBusy / LiteUnavailable."""
        libc = self._libc
        assert libc is not None, "LiteReader.load() first"
        for attempt in range(_DENIED_TRIES):
            if libc.ptrace(_PTRACE_SEIZE, self.tid, None, None) == 0:
                break
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                raise self._gone()
            tracer = tracer_of(self.tid) if err == errno.EPERM else 0
            if tracer is None:
                raise self._gone()
            if tracer or (err == errno.EPERM and self._seized):
                # another tracer holds it, or held it a moment ago (the permission that let us
                # seize it before has not changed while it runs)
                raise ThreadBusy(f"thread {self.tid} is traced by "
                                 + (f"process {tracer}" if tracer else "another process"))
            if err != errno.EPERM:
                raise LiteUnavailable(f"ptrace seize of thread {self.tid} failed: {os.strerror(err)}")
            if attempt + 1 < _DENIED_TRIES:  # a tracer that let go between the seize and the look
                time.sleep(0.005)
                continue
            raise LiteUnavailable(
                f"ptrace of process {self.pid} is not permitted: run wattlens with sudo, or allow "
                "it with `echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope`, or in a container "
                "start it with --cap-add SYS_PTRACE")
        # from here on the thread is ours until detached: every way out of this block detaches it
        sig = 0
        stopped = False  # a stop of it seen (the detach needs one)
        got = 0
        try:
            self._seized = True
            if libc.ptrace(_PTRACE_INTERRUPT, self.tid, None, None) != 0:
                raise self._gone()
            status = self._wait_stop()
            if status is None or not os.WIFSTOPPED(status):  # it exited while we waited
                raise self._gone()
            stopped = True
            if status >> 16 != _PTRACE_EVENT_STOP and os.WSTOPSIG(status) != 0:
                sig = os.WSTOPSIG(status)  # a signal arrived first: it is delivered at the detach
            regs = _Regs()
            if libc.ptrace(_PTRACE_GETREGS, self.tid, None, ctypes.byref(regs)) != 0:
                raise self._gone()
            got = self._read_from(regs.rsp)
        finally:
            if stopped:
                libc.ptrace(_PTRACE_DETACH, self.tid, None, ctypes.c_void_p(sig))
            else:  # it ended, or an exception came before its stop: never leave it traced
                self._detach_late()
        return regs.rip, ctypes.string_at(self._buf, got)  # the copy's bytes, after the detach

    def _wait_stop(self) -> int | None:
        """The wait status of the thread's next stop (or its end); None if it is no longer ours
        to wait for. Polled with the GIL held for up to _SPIN_NS, then a blocking wait."""
        libc = self._libc
        assert libc is not None
        status = ctypes.c_int(0)
        deadline = time.monotonic_ns() + _SPIN_NS
        while True:
            pid = libc.waitpid(self.tid, ctypes.byref(status), os.WNOHANG | _WALL)
            if pid == self.tid:
                return status.value
            if pid < 0 and ctypes.get_errno() != errno.EINTR:
                return None
            if time.monotonic_ns() > deadline:
                break
            libc.usleep(_POLL_US)  # the CPU to the thread (2 cores: it may be waiting for one)
        try:
            return os.waitpid(self.tid, _WALL)[1]
        except ChildProcessError:
            return None

    def _detach_late(self) -> None:
        """Detach a thread seized (maybe interrupted) whose stop was not waited for: interrupt it
        (again), wait for the stop, detach with the signal it reports, if any. Returns once it is
        detached or gone."""
        libc = self._libc
        assert libc is not None
        status = ctypes.c_int(0)
        pause_s = 0.0005
        while True:
            libc.ptrace(_PTRACE_INTERRUPT, self.tid, None, None)  # fails once it is not ours
            sig = 0
            pid = libc.waitpid(self.tid, ctypes.byref(status), os.WNOHANG | _WALL)
            if pid == self.tid:
                if not os.WIFSTOPPED(status.value):
                    return  # ended
                if status.value >> 16 != _PTRACE_EVENT_STOP:
                    sig = os.WSTOPSIG(status.value)
            elif pid < 0 and ctypes.get_errno() == errno.ECHILD:
                return  # not traced by us (gone)
            if libc.ptrace(_PTRACE_DETACH, self.tid, None, ctypes.c_void_p(sig)) == 0:
                return  # in a stop (also one whose status another wait took): let go
            time.sleep(pause_s)  # not stopped yet (a system call that ends first)
            pause_s = min(pause_s * 2, 0.05)

    def _read_from(self, rsp: int) -> int:
        """Copy the stack from ``rsp`` up into the buffer; the bytes copied."""
        libc = self._libc
        assert libc is not None
        end = next((hi for lo, hi in self._stacks if lo <= rsp < hi), rsp + self.stack_cap_bytes)
        want = min(self.stack_cap_bytes, end - rsp)
        got = 0
        base = ctypes.addressof(self._buf)
        while got < want:  # a read stops at the end of the mapping: one call, or a few
            local = _IOVec(ctypes.c_void_p(base + got), want - got)
            remote = _IOVec(ctypes.c_void_p(rsp + got), want - got)
            n = libc.process_vm_readv(self.tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if n <= 0:
                break
            got += n
        return got

    # ------------------------------------------------------------------ the scan

    def read(self) -> LiteRead:
        """Stop the thread once, copy its stack, and name what it was doing."""
        t0 = time.monotonic_ns()
        rip, stack = self._copy_stack()
        stop_ns = time.monotonic_ns() - t0
        return LiteRead(self.label(stack, rip), t0, stop_ns)

    def label(self, stack: bytes, rip: int = 0) -> str | None:
        """The op a copied stack (from the stack pointer up) was in, None outside the backward;
        ``rip``, where the thread was, is the innermost frame (a node running its own code has
        no return address into itself on the stack yet)."""
        import numpy as np

        words = np.frombuffer(stack, dtype="<u8", count=len(stack) // 8)
        hits: list[tuple[int, int, _SymbolTable]] = []  # (position, symbol, table)
        for m in self._mappings:
            if m.lo <= rip < m.hi:
                va = rip - m.bias
                i = int(np.searchsorted(m.table.starts, np.uint64(va), side="right")) - 1
                if i >= 0 and va < int(m.table.ends[i]):
                    hits.append((-1, i, m.table))
            at = np.flatnonzero((words >= m.lo) & (words < m.hi))
            if not len(at):
                continue
            vaddr = words[at] - np.uint64(m.bias)
            i = np.searchsorted(m.table.starts, vaddr, side="right") - 1
            ok = (i >= 0) & (vaddr < m.table.ends[np.maximum(i, 0)])
            for pos, sym, va in zip(at[ok].tolist(), i[ok].tolist(), vaddr[ok].tolist(), strict=True):
                if m.table.after_call(va):
                    hits.append((pos, sym, m.table))
        hits.sort(key=lambda h: h[0])  # innermost (nearest the stack pointer) first
        # in the backward the engine's frames are a chain (PythonEngine::execute, Engine::execute,
        # execute_with_graph_task, thread_main, evaluate_function): at least two of its functions
        # on the stack. One alone is a stale word (a forward-only loop read 1 in ~240 so)
        if len({(id(t), s) for _, s, t in hits if t.flags[s] & _ENGINE}) < _ENGINE_FRAMES:
            return None
        node = next((t.ops[t.op[s]] for _, s, t in hits if t.op[s] >= 0), None)
        if node is not None:
            return node
        if any(t.flags[s] & _ACCUMULATE for _, s, t in hits):
            return GRAD_ACCUMULATION
        return ENGINE_OTHER
