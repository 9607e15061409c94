"""A faithful NVML model for tests: ``pynvml`` autospecced (signatures checked against the
installed nvidia-ml-py), with a simulated GPU driven by a clock and a workload, so the TRUE
energy of every process is known.

The only thing faked is the hardware boundary: ``wattlens.profiler.sources.nvml._load_pynvml``
(and the /proc root of :mod:`wattlens.profiler.pidns`). What it follows, from nvml.h (API 12)
and nvidia-ml-py 12.535 / 13.615, and how nvitop and Zeus use the same calls:

- ``nvmlDeviceGetTotalEnergyConsumption`` (Volta+): mJ since driver load. The driver refreshes it
  at its own period (``counter_period_s``; 20-200 ms seen in the field), so between refreshes
  reads return the same value (0-W intervals) and the next refresh catches up.
- ``nvmlDeviceGetPowerUsage`` (``power.draw``): on Ampere and newer, except GA100, a 1-s average;
  instantaneous on older parts. ``nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)`` is
  instantaneous where the driver has it, else the field's ``nvmlReturn`` is NOT_SUPPORTED.
- ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)``: the driver takes one sample
  per process that ran kernels every ``sample_period_s`` (1/6 s to 1 s), timestamped in µs of
  the CPU wall clock, kept for ``buffer_s``; the call returns the samples newer than
  ``lastSeenTimeStamp`` (0: all buffered) and NOT_FOUND when there are none. NOT_SUPPORTED under
  MIG.
- PIDs are the host's (initial PID namespace), whatever namespace the caller is in: ``pid_offset``
  is added to every PID the model reports; :func:`fake_proc` builds the matching /proc.
- ``nvmlDeviceGet{Compute,Graphics,MPSCompute}RunningProcesses[_v2|_v3]``: ``process_api``
  "v3" (24-byte entries, as nvidia-ml-py reads), "v3-wide" (the driver writes 32-byte
  ``nvmlProcessInfo_v3_t`` with usedGpuCcProtectedMemory: the binding's 24-byte view is garbled,
  reproduced here with ctypes; such drivers export nvmlDeviceGetConfComputeMemSizeInfo but not
  nvmlDeviceGetRunningProcessDetailList, nvitop's detection rule) or "v2" (no ``_v3`` symbol:
  13.x's unversioned call raises ``NVMLLibraryMismatchError``, which is NOT an ``NVMLError``
  subclass; 12.x raises ``NVMLError_FunctionNotFound``). ``_nvmlGetFunctionPointer`` answers
  from the same symbol table.
- MIG: ``nvmlDeviceGetMigMode`` → (1, 1), per-process utilisation NOT_SUPPORTED. MPS: the
  compute list holds the MPS server, the clients are in the MPS list, and client samples can
  sum past 100 %.
- GPU lost: every device call raises NVML_ERROR_GPU_IS_LOST.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pynvml

HOST_NS = "pid:[4026531836]"
CONTAINER_NS = "pid:[4026532777]"
AVERAGING_ARCHS = {"ampere", "ada", "hopper", "blackwell"}


class SimClock:
    """Simulated time: ``monotonic_ns`` for the sampler, ``wall_us`` for NVML's timestamps."""

    def __init__(self, t0_s: float = 1000.0, wall_epoch_s: float = 1.7e9):
        self.t_s = t0_s
        self.wall_epoch_s = wall_epoch_s

    def now(self) -> float:
        return self.t_s

    def monotonic_ns(self) -> int:
        return int(round(self.t_s * 1e9))

    def wall_us(self, t_s: float | None = None) -> int:
        return int((self.wall_epoch_s + (self.t_s if t_s is None else t_s)) * 1e6)

    def advance(self, dt_s: float) -> None:
        self.t_s += dt_s


class RealClock(SimClock):
    """The machine's clocks (for tests that run a real sampler thread)."""

    def __init__(self):
        super().__init__(0.0, time.time() - time.monotonic())

    def now(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_us(self, t_s: float | None = None) -> int:
        return int((self.wall_epoch_s + (self.now() if t_s is None else t_s)) * 1e6)


class _Segment:
    __slots__ = ("t0", "e0", "power_w", "util", "dyn", "procs")

    def __init__(self, t0, e0, power_w, util, dyn, procs):
        self.t0, self.e0, self.power_w, self.util, self.dyn, self.procs = t0, e0, power_w, util, dyn, procs


class FakeGpu:
    """A GPU whose workload is piecewise constant between changes: base power (idle, or a
    constant load a test sets with ``power_w``) plus each process's dynamic power; SM % per
    process derived from it (or set with ``sm_util``). PIDs given to the model are *ours*."""

    def __init__(self, name="NVIDIA H100 80GB HBM3", power_w=None, *, idle_w=70.0, arch="hopper",
                 clock: SimClock | None = None, counter_period_s: float = 0.0, counter_phase_s: float = 0.0,
                 sample_period_s: float = 1 / 6, sample_phase_s: float = 0.0, buffer_s: float = 10.0,
                 energy_supported=True, process_util_supported=True, instant_field=True,
                 mig=False, mps=False, pid_offset=0, process_api="v3", w_per_sm_pct: float = 6.3):
        self.name = name
        self.clock = clock or RealClock()
        self.idle_w = idle_w
        self.arch = arch
        self.counter_period_s = counter_period_s
        self.counter_phase_s = counter_phase_s
        self.sample_period_s = sample_period_s
        self.sample_phase_s = sample_phase_s
        self.buffer_s = buffer_s
        self.energy_supported = energy_supported
        self.process_util_supported = process_util_supported and not mig
        self.instant_field = instant_field
        self.mig = mig
        self.mps = mps
        self.mps_server_pid = 7  # host PID of nvidia-cuda-mps-server
        self.pid_offset = pid_offset
        self.process_api = process_api
        self.w_per_sm_pct = w_per_sm_pct
        self.lost = False
        self.energy_offset_mj = 5_000_000.0  # the counter counts since driver load
        self._base_w = idle_w if power_w is None else power_w
        self._dyn: dict[int, float] = {}
        self._util: dict[int, float] | None = None  # explicit SM % (else derived from _dyn)
        self._procs: dict[int, int] = {}
        self._segs: list[_Segment] = [_Segment(self.clock.now(), 0.0, self._base_w, {}, {}, {})]

    # ---- the workload ----------------------------------------------------------------------
    def _cur(self) -> _Segment:
        return self._segs[-1]

    def _change(self) -> None:
        t = self.clock.now()
        last = self._cur()
        e = last.e0 + last.power_w * (t - last.t0)
        util = dict(self._util) if self._util is not None else {
            p: min(100.0, w / self.w_per_sm_pct) for p, w in self._dyn.items()}
        seg = _Segment(t, e, self._base_w + sum(self._dyn.values()), util, dict(self._dyn), dict(self._procs))
        if t <= last.t0:
            self._segs[-1] = seg
        else:
            self._segs.append(seg)

    def set_load(self, dyn_w: dict[int, float], *, mem_bytes: int = 2**30) -> None:
        """From now: each PID draws ``dyn_w[pid]`` W above the base and holds a context."""
        self._dyn = {p: float(w) for p, w in dyn_w.items()}
        for p in dyn_w:
            self._procs.setdefault(p, mem_bytes)
        self._change()

    @property
    def power_w(self) -> float:
        return self._cur().power_w

    @power_w.setter
    def power_w(self, value: float) -> None:
        self._base_w = float(value)
        self._change()

    @property
    def sm_util(self) -> dict[int, float]:
        return dict(self._cur().util)

    @sm_util.setter
    def sm_util(self, value: dict[int, float]) -> None:
        self._util = dict(value)
        self._change()

    @property
    def processes(self) -> dict[int, int]:
        return dict(self._procs)

    @processes.setter
    def processes(self, value: dict[int, int]) -> None:
        self._procs = dict(value)
        self._change()

    # ---- the truth ---------------------------------------------------------------------------
    def _seg_at(self, t: float) -> _Segment:
        i = bisect.bisect_right([s.t0 for s in self._segs], t) - 1
        return self._segs[max(i, 0)]

    def energy_j(self, t: float | None = None) -> float:
        t = self.clock.now() if t is None else t
        s = self._seg_at(t)
        return s.e0 + s.power_w * (t - s.t0)

    def true_dynamic_j(self, pid: int, t0: float, t1: float) -> float:
        """The energy ``pid`` drew above the base power between t0 and t1 (our PID)."""
        total = 0.0
        for i, s in enumerate(self._segs):
            end = self._segs[i + 1].t0 if i + 1 < len(self._segs) else math.inf
            lo, hi = max(s.t0, t0), min(end, t1)
            if hi > lo:
                total += s.dyn.get(pid, 0.0) * (hi - lo)
        return total

    def _util_avg(self, t0: float, t1: float) -> dict[int, float]:
        acc: dict[int, float] = {}
        for i, s in enumerate(self._segs):
            end = self._segs[i + 1].t0 if i + 1 < len(self._segs) else math.inf
            lo, hi = max(s.t0, t0), min(end, t1)
            if hi > lo:
                for p, u in s.util.items():
                    acc[p] = acc.get(p, 0.0) + u * (hi - lo)
        return {p: v / (t1 - t0) for p, v in acc.items()}

    # ---- what NVML reports -----------------------------------------------------------------
    def host(self, pid: int) -> int:
        return pid + self.pid_offset

    def counter_mj(self) -> int:
        t = self.clock.now()
        if self.counter_period_s > 0:
            k = math.floor((t - self.counter_phase_s) / self.counter_period_s)
            t = k * self.counter_period_s + self.counter_phase_s
        return int(self.energy_offset_mj + self.energy_j(t) * 1000.0)

    def averaged(self) -> bool:
        return self.arch in AVERAGING_ARCHS and "A100" not in self.name

    def usage_mw(self) -> int:
        if not self.averaged():
            return int(self.power_w * 1000)
        t = self.clock.now()
        return int((self.energy_j(t) - self.energy_j(t - 1.0)) * 1000)

    def samples(self, last_seen_us: int) -> list[SimpleNamespace]:
        now = self.clock.now()
        period = self.sample_period_s
        k_hi = math.floor((now - self.sample_phase_s) / period)
        k_lo = math.ceil((now - self.buffer_s - self.sample_phase_s) / period)
        out = []
        for k in range(k_lo, k_hi + 1):
            b = k * period + self.sample_phase_s
            ts = self.clock.wall_us(b)
            if ts <= last_seen_us or b - period < self._segs[0].t0:
                continue
            for pid, u in self._util_avg(b - period, b).items():
                if u > 0:
                    out.append(SimpleNamespace(pid=self.host(pid), smUtil=int(round(u)), memUtil=0,
                                               encUtil=0, decUtil=0, timeStamp=ts))
        return out

    def proc_list(self, kind: str) -> list[tuple[int, int]]:
        procs = [(self.host(p), m) for p, m in self._procs.items()]
        if kind == "Graphics":
            return []
        if self.mps:
            return [(self.mps_server_pid, 2**28)] if kind == "Compute" and procs else procs if kind == "MPSCompute" else []
        return procs if kind == "Compute" else []

    def symbols(self) -> set[str]:
        syms = {"nvmlDeviceGetProcessUtilization", "nvmlDeviceGetTotalEnergyConsumption"}
        for kind in ("Compute", "Graphics", "MPSCompute"):
            base = f"nvmlDeviceGet{kind}RunningProcesses"
            syms |= {base, base + "_v2"}
            if self.process_api != "v2":
                syms.add(base + "_v3")
        if self.process_api == "v3-wide":
            syms.add("nvmlDeviceGetConfComputeMemSizeInfo")
        elif self.process_api == "v3":
            syms |= {"nvmlDeviceGetConfComputeMemSizeInfo", "nvmlDeviceGetRunningProcessDetailList"}
        return syms


class _Info24(ctypes.Structure):  # nvidia-ml-py's c_nvmlProcessInfo_v2_t / _v3_t
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class _Info32(ctypes.Structure):  # nvml.h's nvmlProcessInfo_v3_t on R535-R545 era drivers
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint),
                ("usedGpuCcProtectedMemory", ctypes.c_ulonglong)]


def _garbled(entries: list[tuple[int, int]]) -> list[SimpleNamespace]:
    """32-byte entries written by the driver, read back as nvidia-ml-py's 24-byte ones."""
    raw = (_Info32 * len(entries))(*[_Info32(p, m, 0xFFFFFFFF, 0xFFFFFFFF, 0) for p, m in entries])
    view = (_Info24 * len(entries)).from_buffer_copy(bytes(raw)[:ctypes.sizeof(_Info24) * len(entries)])
    return [SimpleNamespace(pid=e.pid, usedGpuMemory=e.usedGpuMemory) for e in view]


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def make_fake_pynvml(gpus: list[FakeGpu], *, init_error: int | None = None, missing: tuple[str, ...] = (),
                     binding: str = "13"):
    nv = mock.create_autospec(pynvml, instance=False)
    for name in dir(pynvml):
        if name.startswith("NVML_") and isinstance(getattr(pynvml, name), int):
            setattr(nv, name, getattr(pynvml, name))
    nv.NVMLError = pynvml.NVMLError
    if binding == "13":
        nv.NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    else:
        del nv.NVMLLibraryMismatchError
    if init_error is not None:
        nv.nvmlInit.side_effect = nvml_error(init_error)
    nv.nvmlDeviceGetCount.return_value = len(gpus)
    nv.nvmlDeviceGetHandleByIndex.side_effect = lambda i: gpus[i]
    nv.nvmlDeviceGetName.side_effect = lambda h: h.name
    nv.nvmlDeviceGetUUID.side_effect = lambda h: f"GPU-fake-{gpus.index(h)}"

    def dev(fn):  # every device call fails once the GPU fell off the bus
        def call(h, *a):
            if h.lost:
                raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
            return fn(h, *a)
        return call

    def energy(h):
        if not h.energy_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return h.counter_mj()

    def field_values(h, ids):
        ok = h.instant_field and ids == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        return [SimpleNamespace(nvmlReturn=0 if ok else pynvml.NVML_ERROR_NOT_SUPPORTED,
                                value=SimpleNamespace(uiVal=int(h.power_w * 1000) if ok else 0))]

    def proc_util(h, since):
        if not h.process_util_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        samples = h.samples(since)
        if not samples:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    def proc_call(kind: str, version: str):
        def call(h):
            symbol = f"nvmlDeviceGet{kind}RunningProcesses{version}"
            if version == "_v3" and symbol not in h.symbols():
                raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            entries = h.proc_list(kind)
            if version == "_v3" and h.process_api == "v3-wide":
                return _garbled(entries)
            return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in entries]
        return call

    def unversioned(kind: str):
        v3 = dev(proc_call(kind, "_v3"))

        def call(h):
            try:
                return v3(h)
            except pynvml.NVMLError_FunctionNotFound:
                if binding == "13":  # throwOnVersionMismatch
                    raise pynvml.NVMLLibraryMismatchError(
                        "Unversioned function called and the pyNVML version does not match the NVML lib "
                        f"version. Either use matching pyNVML and NVML lib versions or use a versioned "
                        f"function such as nvmlDeviceGet{kind}RunningProcesses_v2") from None
                raise
        return call

    def function_pointer(name):
        if gpus and name not in gpus[0].symbols():
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return object()

    nv._nvmlGetFunctionPointer.side_effect = function_pointer
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = dev(energy)
    nv.nvmlDeviceGetFieldValues.side_effect = dev(field_values)
    nv.nvmlDeviceGetPowerUsage.side_effect = dev(lambda h: h.usage_mw())
    nv.nvmlDeviceGetEnforcedPowerLimit.side_effect = dev(lambda h: 700_000)
    nv.nvmlDeviceGetUtilizationRates.side_effect = dev(
        lambda h: SimpleNamespace(gpu=int(min(100, sum(h.sm_util.values()))), memory=10))
    nv.nvmlDeviceGetMemoryInfo.side_effect = dev(
        lambda h: SimpleNamespace(total=80 * 2**30, used=sum(h.processes.values()), free=0))
    nv.nvmlDeviceGetClockInfo.side_effect = dev(lambda h, c: 1980)
    nv.nvmlDeviceGetProcessUtilization.side_effect = dev(proc_util)

    def mig_mode(h):
        if not h.mig and h.arch not in ("ampere", "hopper", "blackwell"):
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [int(h.mig), int(h.mig)]

    nv.nvmlDeviceGetMigMode.side_effect = dev(mig_mode)
    for kind in ("Compute", "Graphics", "MPSCompute"):
        base = f"nvmlDeviceGet{kind}RunningProcesses"
        getattr(nv, base).side_effect = unversioned(kind)
        getattr(nv, base + "_v3").side_effect = dev(proc_call(kind, "_v3"))
        getattr(nv, base + "_v2").side_effect = dev(proc_call(kind, "_v2"))
    for name in missing:  # a binding that lacks these functions
        delattr(nv, name)
    return nv


def fake_proc(root: Path, *, in_container: bool, pids=(), host_view: Path | None = None, pid_offset: int = 0) -> Path:
    """A /proc with ``self/ns/pid`` (host or container namespace) and ``PID/status`` NSpid lines;
    with ``host_view``, the host's /proc too (``NSpid: host ours`` for ``pids``)."""
    ns = CONTAINER_NS if in_container else HOST_NS
    (root / "self" / "ns").mkdir(parents=True, exist_ok=True)
    link = root / "self" / "ns" / "pid"
    if not link.is_symlink():
        os.symlink(ns, link)
    for p in pids:
        d = root / str(p)
        d.mkdir(exist_ok=True)
        (d / "status").write_text(f"Name:\tpython\nPid:\t{p}\nNSpid:\t{p}\n")
    if host_view is not None:
        for p in pids:
            d = host_view / str(p + pid_offset)
            (d / "ns").mkdir(parents=True, exist_ok=True)
            if not (d / "ns" / "pid").is_symlink():
                os.symlink(ns, d / "ns" / "pid")
            (d / "status").write_text(f"Name:\tpython\nPid:\t{p + pid_offset}\nNSpid:\t{p + pid_offset}\t{p}\n")
    return root


class _RemovedAtTeardown(dict):
    """Temp folders keyed by path, each removed when its key is deleted: ``install`` puts one here
    with ``monkeypatch.setitem``, whose undo (the test's teardown, or ``MonkeyPatch.undo()``)
    deletes the key, so the folder lives exactly as long as the fake it belongs to."""

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        shutil.rmtree(key, ignore_errors=True)


_TEMP_FOLDERS = _RemovedAtTeardown()


def install(monkeypatch, gpus: list[FakeGpu], *, proc_root: Path | None = None, **kw):
    """Put the model behind the NVML wrapper, and a /proc matching its PID namespace (without
    ``proc_root``, a temp folder removed when ``monkeypatch`` is undone)."""
    from wattlens.profiler import pidns
    from wattlens.profiler.sources import nvml

    fake = make_fake_pynvml(gpus, **kw)
    nvml.shutdown()
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: fake)
    if proc_root is None:
        offset = gpus[0].pid_offset if gpus else 0
        proc_root = Path(tempfile.mkdtemp(prefix="wattlens-proc-"))
        monkeypatch.setitem(_TEMP_FOLDERS, str(proc_root), True)  # undone (removed) after PROC_ROOT
        fake_proc(proc_root, in_container=offset != 0)
    monkeypatch.setattr(pidns, "PROC_ROOT", str(proc_root))
    return fake


def run_ticks(sampler, clock: SimClock, duration_s: float, tick_s: float, *, jitter_s: float = 0.0,
              seed: int = 0, on_tick=None) -> None:
    """Drive a Sampler on the simulated clock: advance, tick, for ``duration_s``."""
    rng = random.Random(seed)
    end = clock.now() + duration_s
    while clock.now() < end - 1e-9:
        clock.advance(tick_s + (rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0))
        if on_tick is not None:
            on_tick(clock.now())
        sampler.tick()
