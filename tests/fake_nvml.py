"""A fake NVML module: ``pynvml`` autospecced (signatures checked), with a simulated GPU behind it.

The only thing faked is the hardware boundary: ``wattlens.profiler.sources.nvml._load_pynvml``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from unittest import mock

import pynvml


class FakeGpu:
    """A GPU drawing ``power_w`` (settable), with an energy counter that integrates it exactly."""

    def __init__(self, name="NVIDIA Fake H100", power_w=300.0, energy_supported=True,
                 process_util_supported=True):
        self.name = name
        self.power_w = power_w
        self.energy_supported = energy_supported
        self.process_util_supported = process_util_supported
        self.energy_mj = 5_000_000.0  # counter since driver load
        self.t = time.monotonic()
        self.sm_util: dict[int, int] = {}  # pid -> SM %
        self.processes: dict[int, int] = {}  # pid -> used memory bytes

    def advance(self) -> None:
        now = time.monotonic()
        self.energy_mj += self.power_w * 1000.0 * (now - self.t)
        self.t = now


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def make_fake_pynvml(gpus: list[FakeGpu], *, init_error: int | None = None, missing: tuple[str, ...] = ()):
    nv = mock.create_autospec(pynvml, instance=False)
    for name in dir(pynvml):
        if name.startswith("NVML_") and isinstance(getattr(pynvml, name), int):
            setattr(nv, name, getattr(pynvml, name))
    nv.NVMLError = pynvml.NVMLError
    if init_error is not None:
        nv.nvmlInit.side_effect = nvml_error(init_error)
    nv.nvmlDeviceGetCount.return_value = len(gpus)
    nv.nvmlDeviceGetHandleByIndex.side_effect = lambda i: gpus[i]
    nv.nvmlDeviceGetName.side_effect = lambda h: h.name
    nv.nvmlDeviceGetUUID.side_effect = lambda h: f"GPU-fake-{gpus.index(h)}"

    def energy(h):
        if not h.energy_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        h.advance()
        return int(h.energy_mj)

    def field_values(h, ids):
        v = SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=int(h.power_w * 1000)))
        return [v]

    def proc_util(h, since):
        if not h.process_util_supported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not h.sm_util:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        now_us = int(time.time() * 1e6)
        return [SimpleNamespace(pid=p, smUtil=u, memUtil=0, timeStamp=now_us) for p, u in h.sm_util.items()]

    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = energy
    nv.nvmlDeviceGetFieldValues.side_effect = field_values
    nv.nvmlDeviceGetPowerUsage.side_effect = lambda h: int(h.power_w * 1000)
    nv.nvmlDeviceGetEnforcedPowerLimit.side_effect = lambda h: 700_000
    nv.nvmlDeviceGetUtilizationRates.side_effect = lambda h: SimpleNamespace(gpu=min(100, sum(h.sm_util.values())), memory=10)
    nv.nvmlDeviceGetMemoryInfo.side_effect = lambda h: SimpleNamespace(total=80 * 2**30, used=sum(h.processes.values()), free=0)
    nv.nvmlDeviceGetClockInfo.side_effect = lambda h, c: 1980
    nv.nvmlDeviceGetProcessUtilization.side_effect = proc_util
    nv.nvmlDeviceGetComputeRunningProcesses.side_effect = lambda h: [
        SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.processes.items()]
    for name in missing:  # a driver/binding that lacks these functions
        delattr(nv, name)
    return nv


def install(monkeypatch, gpus: list[FakeGpu], **kw):
    from wattlens.profiler.sources import nvml

    fake = make_fake_pynvml(gpus, **kw)
    nvml.shutdown()
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: fake)
    return fake
