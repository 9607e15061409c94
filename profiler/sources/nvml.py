"""The one NVML wrapper: init/shutdown, units (mW→W, mJ→J), and error mapping live here only.

Uses the ``pynvml`` module shipped by *nvidia-ml-py* (never the deprecated ``pynvml`` wrapper
package). Every getter returns ``(value, reason)``: a value, or ``None`` and one line saying why.
A function the driver lacks is logged once and its field stays ``None``.
Field names follow ``nvidia-smi --query-gpu=...`` where one exists.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from wattlens.profiler.errors import NvmlError
from wattlens.profiler.sources.base import CounterDelta, Reading, TrapezoidIntegrator

log = logging.getLogger(__name__)

_lock = threading.Lock()
_nvml: Any = None  # the pynvml module once initialised
_init_error: NvmlError | None = None
_logged_missing: set[str] = set()


def _load_pynvml() -> Any:
    """Import point of the hardware boundary: tests replace this function's result."""
    import pynvml  # nvidia-ml-py

    return pynvml


def _error_hint(nv: Any, code: int | None) -> tuple[str, str]:
    """Map an NVML return code to (reason, fix). The single place that knows the codes."""
    table = {
        getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", 12): (
            "the NVIDIA driver library (libnvidia-ml.so) was not found",
            "install the NVIDIA driver, or run where a GPU is visible (containers: --gpus all)",
        ),
        getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", 9): (
            "the NVIDIA driver is not loaded",
            "load the driver (nvidia-smi should work first)",
        ),
        getattr(nv, "NVML_ERROR_NO_PERMISSION", 4): (
            "no permission to query NVML",
            "run as a user allowed to read /dev/nvidia* (or as root)",
        ),
        getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3): (
            "not supported by this GPU or driver",
            "nothing to do: wattlens falls back to another method",
        ),
        getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13): (
            "this driver lacks the NVML function",
            "check that nvidia-ml-py matches your driver (upgrade the driver or pin nvidia-ml-py)",
        ),
        getattr(nv, "NVML_ERROR_GPU_IS_LOST", 15): (
            "the GPU fell off the bus",
            "check dmesg / nvidia-smi; the GPU needs a reset",
        ),
    }
    return table.get(code, (f"NVML error {code}", "check nvidia-smi"))


def init() -> Any:
    """Initialise NVML once (thread-safe); raise NvmlError with the fix when it cannot be."""
    global _nvml, _init_error
    with _lock:
        if _nvml is not None:
            return _nvml
        if _init_error is not None:
            raise _init_error
        try:
            nv = _load_pynvml()
        except ImportError:
            _init_error = NvmlError(
                "nvidia-ml-py is not installed", hint="pip install nvidia-ml-py"
            )
            raise _init_error from None
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            reason, fix = _error_hint(nv, getattr(exc, "value", None))
            _init_error = NvmlError(f"NVML unavailable: {reason}", hint=fix)
            raise _init_error from None
        except OSError as exc:  # some builds raise OSError when the .so is missing
            _init_error = NvmlError(f"NVML unavailable: {exc}", hint="install the NVIDIA driver")
            raise _init_error from None
        _nvml = nv
        atexit.register(shutdown)
        return nv


def shutdown() -> None:
    global _nvml, _init_error
    with _lock:
        if _nvml is not None:
            try:
                _nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down, nothing useful to do
                pass
        _nvml = None
        _init_error = None
        _logged_missing.clear()
        _proc_calls.clear()


def query(fn_name: str, *args: Any) -> tuple[Any, str | None]:
    """Call ``pynvml.<fn_name>(*args)`` → (value, None) or (None, reason). Never raises NVML errors."""
    nv = init()
    fn = getattr(nv, fn_name, None)
    if fn is None:
        reason = f"{fn_name} is missing from this nvidia-ml-py"
        if fn_name not in _logged_missing:
            _logged_missing.add(fn_name)
            log.warning("%s; check that nvidia-ml-py matches your driver", reason)
        return None, reason
    try:
        return fn(*args), None
    except nv.NVMLError as exc:
        code = getattr(exc, "value", None)
        reason, fix = _error_hint(nv, code)
        if code == getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13):
            _log_once(fn_name, f"{fn_name}: {reason} — {fix}")
        return None, f"{fn_name}: {reason}"
    except _mismatch_error(nv) as exc:  # 13.x: an unversioned call whose _v3 symbol the driver lacks
        reason = f"{fn_name}: the driver lacks the symbol this nvidia-ml-py calls ({exc})"
        _log_once(fn_name, f"{reason} — {MISMATCH_FIX}")
        return None, f"{fn_name}: this nvidia-ml-py is newer than the driver ({MISMATCH_FIX})"


MISMATCH_FIX = "upgrade the NVIDIA driver, or pin an nvidia-ml-py that matches it"


class _NoSuchError(Exception):
    """Stands in for an exception class the installed binding does not define."""


def _mismatch_error(nv: Any) -> type[BaseException]:
    """``pynvml.NVMLLibraryMismatchError`` (13.x; *not* an ``NVMLError`` subclass), or a class
    nothing raises when the binding predates it."""
    cls = getattr(nv, "NVMLLibraryMismatchError", None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else _NoSuchError


def _log_once(key: str, message: str) -> None:
    if key not in _logged_missing:
        _logged_missing.add(key)
        log.warning("%s", message)


def _is_missing(nv: Any, reason: str | None) -> bool:
    """Whether a (None, reason) from :func:`query` means "this binding call cannot work with this
    driver" (missing function, missing symbol, library mismatch): the cue to try an older call."""
    if reason is None:
        return False
    return "missing from this nvidia-ml-py" in reason or "lacks the NVML function" in reason or \
        "newer than the driver" in reason


def has_symbol(name: str) -> bool | None:
    """Whether the driver's libnvidia-ml exports ``name`` (True/False), None when the binding
    cannot tell (no ``_nvmlGetFunctionPointer``)."""
    nv = init()
    lookup = getattr(nv, "_nvmlGetFunctionPointer", None)
    if lookup is None:
        return None
    try:
        lookup(name)
        return True
    except nv.NVMLError:
        return False
    except Exception:  # noqa: BLE001 - anything else: cannot tell
        return None


_PROC_KINDS = ("Compute", "Graphics", "MPSCompute")
_proc_calls: dict[str, str | None] = {}  # kind -> the binding call that works with this driver


def _process_calls(kind: str) -> list[str]:
    """The binding calls that list ``kind`` processes, newest first, leaving out ``_v3`` where the
    driver writes the 32-byte ``nvmlProcessInfo_v3_t`` (usedGpuCcProtectedMemory) while
    nvidia-ml-py reads 24-byte entries: every PID after the first would be garbled. Such drivers
    (R535-R545 era) export nvmlDeviceGetConfComputeMemSizeInfo but not
    nvmlDeviceGetRunningProcessDetailList (the rule nvitop uses); their ``_v2`` symbol still
    writes 24 bytes."""
    base = f"nvmlDeviceGet{kind}RunningProcesses"
    v3 = has_symbol(f"{base}_v3")
    wide = v3 and has_symbol("nvmlDeviceGetConfComputeMemSizeInfo") and \
        has_symbol("nvmlDeviceGetRunningProcessDetailList") is False
    calls = [] if (wide or v3 is False) else [f"{base}_v3"]
    return calls + [f"{base}_v2", base]


def process_struct_layout() -> str:
    """What the probe reports: which running-processes call and struct this driver gets."""
    base = "nvmlDeviceGetComputeRunningProcesses"
    v3 = has_symbol(f"{base}_v3")
    if v3 is None:
        return "unknown (binding has no symbol lookup)"
    if not v3:
        return "no _v3 symbol (driver older than the binding): _v2 / v1 calls"
    if has_symbol("nvmlDeviceGetConfComputeMemSizeInfo") and has_symbol("nvmlDeviceGetRunningProcessDetailList") is False:
        return "_v3 writes 32-byte entries (binding reads 24): _v2 call used"
    return "_v3 with 24-byte entries"


def device_count() -> int:
    count, _ = query("nvmlDeviceGetCount")
    return int(count or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


POWER_INSTANT = "instant (NVML_FI_DEV_POWER_INSTANT)"
POWER_USAGE = ("power.draw (nvmlDeviceGetPowerUsage): a 1-s average on Ampere and newer except "
               "GA100, instantaneous on older GPUs")


class NvmlDevice:
    """Getters for one GPU; each returns (value, reason)."""

    def __init__(self, index: int):
        self.index = index
        self.power_reading: str | None = None
        handle, reason = query("nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            raise NvmlError(f"GPU {index}: {reason}", hint="check nvidia-smi")
        self.handle = handle
        name, _ = query("nvmlDeviceGetName", handle)
        self.name = _text(name) if name is not None else f"GPU {index}"
        uuid, _ = query("nvmlDeviceGetUUID", handle)
        self.uuid = _text(uuid) if uuid is not None else None

    def total_energy_j(self) -> tuple[float | None, str | None]:
        """Energy counter since driver load (``nvmlDeviceGetTotalEnergyConsumption``, Volta+), J."""
        mj, reason = query("nvmlDeviceGetTotalEnergyConsumption", self.handle)
        return (mj / 1000.0, None) if mj is not None else (None, reason)

    @property
    def covers_cpu(self) -> bool:
        """GH200 / GB200 superchips: the module's power and energy counter include the Grace CPU
        (and its memory), so adding a CPU source on top counts the CPU twice."""
        name = self.name.upper()
        return "GH200" in name or "GB200" in name or "GRACE" in name

    def power_w(self) -> tuple[float | None, str | None]:
        """Instant power where the driver has the field (NVML_FI_DEV_POWER_INSTANT), else
        ``nvmlDeviceGetPowerUsage`` (``nvidia-smi --query-gpu=power.draw``), in W.
        ``self.power_reading`` says which one the last value was: on Ampere and newer (except
        GA100) power.draw is a 1-s average, elsewhere instantaneous."""
        value, reason = self.instant_power_w()
        if value is not None:
            self.power_reading = POWER_INSTANT
            return value, None
        mw, reason = query("nvmlDeviceGetPowerUsage", self.handle)
        self.power_reading = POWER_USAGE
        return (mw / 1000.0, None) if mw is not None else (None, reason)

    def instant_power_w(self) -> tuple[float | None, str | None]:
        """NVML_FI_DEV_POWER_INSTANT, W; None where the driver or GPU lacks the field."""
        nv = init()
        field_id = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None:
            return None, "this nvidia-ml-py has no NVML_FI_DEV_POWER_INSTANT"
        values, reason = query("nvmlDeviceGetFieldValues", self.handle, [field_id])
        if values is None:
            return None, reason
        if not len(values) or values[0].nvmlReturn != 0:
            code = values[0].nvmlReturn if len(values) else None
            return None, f"NVML_FI_DEV_POWER_INSTANT: {_error_hint(nv, code)[0]}"
        return values[0].value.uiVal / 1000.0, None

    def usage_power_w(self) -> tuple[float | None, str | None]:
        """``nvmlDeviceGetPowerUsage`` (power.draw), W: a 1-s average on Ampere+ except GA100."""
        mw, reason = query("nvmlDeviceGetPowerUsage", self.handle)
        return (mw / 1000.0, None) if mw is not None else (None, reason)

    def mig_enabled(self) -> tuple[bool | None, str | None]:
        """Whether MIG mode is on now (``nvmlDeviceGetMigMode`` current mode)."""
        nv = init()
        modes, reason = query("nvmlDeviceGetMigMode", self.handle)
        if modes is None:
            # GPUs without MIG answer NOT_SUPPORTED: MIG is off there
            return (False, None) if reason and "not supported" in reason else (None, reason)
        return modes[0] == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1), None

    def power_limit_w(self) -> tuple[float | None, str | None]:
        mw, reason = query("nvmlDeviceGetEnforcedPowerLimit", self.handle)
        return (mw / 1000.0, None) if mw is not None else (None, reason)

    def utilization_pct(self) -> tuple[float | None, str | None]:
        """``utilization.gpu``: percent of time a kernel ran over the last sample period."""
        util, reason = query("nvmlDeviceGetUtilizationRates", self.handle)
        return (float(util.gpu), None) if util is not None else (None, reason)

    def memory_used_bytes(self) -> tuple[float | None, str | None]:
        mem, reason = query("nvmlDeviceGetMemoryInfo", self.handle)
        return (float(mem.used), None) if mem is not None else (None, reason)

    def memory_total_bytes(self) -> tuple[float | None, str | None]:
        mem, reason = query("nvmlDeviceGetMemoryInfo", self.handle)
        return (float(mem.total), None) if mem is not None else (None, reason)

    def sm_clock_mhz(self) -> tuple[float | None, str | None]:
        nv = init()
        mhz, reason = query("nvmlDeviceGetClockInfo", self.handle, getattr(nv, "NVML_CLOCK_SM", 1))
        return (float(mhz), None) if mhz is not None else (None, reason)

    def process_samples(self, last_seen_us: int) -> tuple[list[tuple[int, float, int]] | None, str | None]:
        """Per-process utilisation samples newer than ``last_seen_us`` (NVML's own µs clock):
        a list of (host PID, SM %, timestamp µs). ``[]`` when NVML answers NOT_FOUND: no sample
        newer than the timestamp yet (the driver samples every 1/6 s to 1 s) — that is "nothing
        new", not "no kernel ran". None with the reason when unsupported (MIG, old GPUs)."""
        nv = init()
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(self.handle, last_seen_us)
        except nv.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code in (getattr(nv, "NVML_ERROR_NOT_FOUND", 6), 0):  # 0: a binding that raises on SUCCESS
                return [], None
            reason, _ = _error_hint(nv, code)
            return None, f"nvmlDeviceGetProcessUtilization: {reason}"
        except AttributeError:
            return None, "nvmlDeviceGetProcessUtilization is missing from this nvidia-ml-py"
        return [(int(s.pid), float(s.smUtil), int(s.timeStamp)) for s in samples
                if int(s.timeStamp) > last_seen_us], None

    def running_processes(self) -> tuple[dict[int, int | None] | None, str | None]:
        """Host PID → used GPU memory in bytes (None where the driver hides it), over compute,
        graphics and MPS processes (a PID in several lists is counted once, largest figure).
        Each list uses the newest binding call that works with this driver (see
        :func:`_process_calls`); a list no call can get is left out, with its reason."""
        out: dict[int, int | None] = {}
        reasons = []
        got_any = False
        for kind in _PROC_KINDS:
            procs, reason = self._process_list(kind)
            if procs is None:
                reasons.append(reason)
                continue
            got_any = True
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                used = int(used) if isinstance(used, int) else None
                pid = int(p.pid)
                prev = out.get(pid)
                out[pid] = used if prev is None else max(prev, used or 0)
        if not got_any:
            return None, "; ".join(r for r in reasons if r) or "no process list"
        return out, None

    def _process_list(self, kind: str) -> tuple[list | None, str | None]:
        nv = init()
        chosen = _proc_calls.get(kind, "")
        calls = [chosen] if chosen else _process_calls(kind)
        reason = None
        for name in calls:
            procs, reason = query(name, self.handle)
            if procs is not None:
                if chosen != name:
                    _proc_calls[kind] = name
                    if not name.endswith("_v3"):
                        _log_once(f"process-call:{kind}", f"{kind} processes are listed with {name}: this "
                                  "driver lacks the _v3 call, or writes 32-byte entries the binding reads "
                                  f"as 24 — {MISMATCH_FIX} for the newest call")
                return procs, None
            if not _is_missing(nv, reason):
                return None, reason
        return None, reason


class NvmlSource:
    """GPU power source: the energy counter when supported (method ``counter``), else polled power
    integrated by trapezoid (method ``polled``)."""

    kind = "gpu"

    def __init__(self, device: NvmlDevice):
        self.device = device
        self.id = f"nvml:{device.index}"
        self.label = f"{device.name} (GPU {device.index})"
        energy, _ = device.total_energy_j()
        self.method = "counter" if energy is not None else "polled"
        self._counter = CounterDelta(range_j=None)  # 64-bit mJ counter: no wrap in practice
        self._integrator = TrapezoidIntegrator()

    def read(self, t_ns: int) -> Reading:
        power_w, power_reason = self.device.power_w()
        util, _ = self.device.utilization_pct()
        mem, _ = self.device.memory_used_bytes()
        extra: dict[str, float | None] = {"util_pct": util, "mem_used_bytes": mem}
        if self.method == "counter":
            counter_j, reason = self.device.total_energy_j()
            if counter_j is None:
                return Reading(t_ns, None, power_w, extra, reason)
            energy_j = self._counter.add(t_ns, counter_j)
            interval_power_w = self._counter.power_w
            return Reading(t_ns, energy_j, interval_power_w if interval_power_w is not None else power_w, extra)
        if power_w is None:
            return Reading(t_ns, None, None, extra, power_reason)
        return Reading(t_ns, self._integrator.add(t_ns, power_w), power_w, extra)

    def describe(self) -> dict:
        limit_w, _ = self.device.power_limit_w()
        total_mem, _ = self.device.memory_total_bytes()
        return {
            "name": self.device.name,
            "uuid": self.device.uuid,
            "power_limit_w": limit_w,
            "memory_total_bytes": total_mem,
            "power_reading": self.device.power_reading,
            "covers_cpu": self.device.covers_cpu,
        }

    def close(self) -> None:
        pass


def discover_nvml() -> tuple[list[NvmlSource], list[tuple[str, str, str]]]:
    """Usable GPU sources, and (source_id, reason, fix) for what cannot be used."""
    try:
        init()
    except NvmlError as exc:
        return [], [("nvml", exc.message, exc.hint or "")]
    sources, problems = [], []
    n = device_count()
    if n == 0:
        return [], [("nvml", "NVML found no GPU", "check nvidia-smi and CUDA_VISIBLE_DEVICES")]
    for i in range(n):
        try:
            dev = NvmlDevice(i)
        except NvmlError as exc:
            problems.append((f"nvml:{i}", exc.message, exc.hint or ""))
            continue
        src = NvmlSource(dev)
        power_w, reason = dev.power_w()
        if src.method == "polled" and power_w is None:
            problems.append((src.id, f"{dev.name}: no energy counter and no power reading ({reason})",
                             "this GPU does not report power; nothing to do"))
            continue
        sources.append(src)
    if sources:
        from wattlens.profiler.pidns import NO_MAPPING_REASON, PidNamespace

        ns = PidNamespace()
        if not ns.in_host_namespace and ns.host_proc_root is None:
            # the GPUs are measured; only the per-process split needs the host's PIDs
            problems.append(("nvml:per-process", NO_MAPPING_REASON.split(" — ")[0],
                             "run the container with --pid=host (or mount the host's /proc and set "
                             "WATTLENS_HOST_PROC)"))
    return sources, problems
