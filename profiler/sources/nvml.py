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
        if code in (getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13),) and fn_name not in _logged_missing:
            _logged_missing.add(fn_name)
            log.warning("%s: %s — %s", fn_name, reason, fix)
        return None, f"{fn_name}: {reason}"


def device_count() -> int:
    count, _ = query("nvmlDeviceGetCount")
    return int(count or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlDevice:
    """Getters for one GPU; each returns (value, reason)."""

    def __init__(self, index: int):
        self.index = index
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

    def power_w(self) -> tuple[float | None, str | None]:
        """Instant power where the driver has the field (NVML_FI_DEV_POWER_INSTANT), else
        ``nvmlDeviceGetPowerUsage`` (``nvidia-smi --query-gpu=power.draw``), in W."""
        nv = init()
        field_id = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is not None:
            values, _ = query("nvmlDeviceGetFieldValues", self.handle, [field_id])
            if values is not None and len(values) and values[0].nvmlReturn == 0:
                return values[0].value.uiVal / 1000.0, None
        mw, reason = query("nvmlDeviceGetPowerUsage", self.handle)
        return (mw / 1000.0, None) if mw is not None else (None, reason)

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

    def process_sm_util(self, since_us: int) -> tuple[dict[int, float] | None, str | None]:
        """Per-PID SM utilisation (percent) from samples newer than ``since_us``.

        NVML answers NOT_FOUND when no process ran a kernel since then: that is an empty dict,
        not an error.
        """
        nv = init()
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(self.handle, since_us)
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == getattr(nv, "NVML_ERROR_NOT_FOUND", 6):
                return {}, None
            reason, _ = _error_hint(nv, getattr(exc, "value", None))
            return None, f"nvmlDeviceGetProcessUtilization: {reason}"
        except AttributeError:
            return None, "nvmlDeviceGetProcessUtilization is missing from this nvidia-ml-py"
        out: dict[int, float] = {}
        for s in samples:
            if s.timeStamp > since_us:
                out[int(s.pid)] = out.get(int(s.pid), 0.0) + float(s.smUtil)
        return out, None

    def running_processes(self) -> tuple[dict[int, int | None] | None, str | None]:
        """PID → used GPU memory in bytes (None where the driver hides it)."""
        procs, reason = query("nvmlDeviceGetComputeRunningProcesses", self.handle)
        if procs is None:
            return None, reason
        out: dict[int, int | None] = {}
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out[int(p.pid)] = int(used) if isinstance(used, int) else None
        return out, None


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
        self._idle_power_w: float | None = None

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
    return sources, problems
