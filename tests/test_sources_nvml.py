import os
import time
import types

import pynvml
import pytest

from tests import fake_nvml
from wattlens.profiler.process import Target
from wattlens.profiler.ring import RingBuffers
from wattlens.profiler.sampler import Sampler
from wattlens.profiler.sources import discover
from wattlens.profiler.sources import nvml as wnvml


def test_counter_source_reports_energy_in_joules_and_mean_power(monkeypatch):
    # the fake GPU's counter runs on a clock of the test's own: exact at any machine load
    clock = [1000.0]
    monkeypatch.setattr(fake_nvml, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    gpu = fake_nvml.FakeGpu(power_w=250.0)
    fake_nvml.install(monkeypatch, [gpu])
    found = discover()
    src = next(s for s in found.usable if s.id == "nvml:0")
    assert src.method == "counter" and src.kind == "gpu"
    assert "Fake H100" in src.label
    t0_ns = time.monotonic_ns()
    r0 = src.read(t0_ns)
    assert r0.energy_j == 0.0
    clock[0] += 0.2
    r1 = src.read(t0_ns + 200_000_000)
    assert r1.energy_j == pytest.approx(250.0 * 0.2, rel=1e-3)  # mJ -> J (the counter is whole mJ)
    assert r1.power_w == pytest.approx(250.0, rel=1e-3)
    assert src.describe()["power_limit_w"] == 700.0


def test_without_counter_power_is_polled_and_integrated(monkeypatch):
    gpu = fake_nvml.FakeGpu(power_w=100.0, energy_supported=False)
    fake_nvml.install(monkeypatch, [gpu])
    src = next(s for s in discover().usable if s.id == "nvml:0")
    assert src.method == "polled"
    t0 = time.monotonic_ns()
    src.read(t0)
    gpu.power_w = 200.0
    r = src.read(t0 + 2_000_000_000)
    assert r.power_w == 200.0
    assert r.energy_j == pytest.approx((100.0 + 200.0) / 2 * 2.0)  # trapezoid


def test_no_driver_is_unavailable_with_a_fix(monkeypatch):
    fake_nvml.install(monkeypatch, [], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    found = discover()
    assert not any(s.kind == "gpu" for s in found.usable)
    (u,) = [u for u in found.unavailable if u.source_id == "nvml"]
    assert "not found" in u.reason and "driver" in u.fix
    assert any(s.id == "cpu-model" for s in found.usable)  # CPU still measured


def test_no_permission_names_the_fix(monkeypatch):
    fake_nvml.install(monkeypatch, [], init_error=pynvml.NVML_ERROR_NO_PERMISSION)
    (u,) = [u for u in discover().unavailable if u.source_id == "nvml"]
    assert "permission" in u.reason and "root" in u.fix


def test_missing_function_is_none_with_reason_and_logged_once(monkeypatch, caplog):
    gpu = fake_nvml.FakeGpu()
    fake_nvml.install(monkeypatch, [gpu], missing=("nvmlDeviceGetEnforcedPowerLimit",))
    dev = wnvml.NvmlDevice(0)
    with caplog.at_level("WARNING"):
        v1, reason = dev.power_limit_w()
        v2, _ = dev.power_limit_w()
    assert v1 is None and v2 is None and "missing" in reason
    assert len([r for r in caplog.records if "nvmlDeviceGetEnforcedPowerLimit" in r.getMessage()]) == 1


def test_process_utilisation_not_found_means_no_kernels(monkeypatch):
    gpu = fake_nvml.FakeGpu()
    fake_nvml.install(monkeypatch, [gpu])
    util, reason = wnvml.NvmlDevice(0).process_sm_util(0)
    assert util == {} and reason is None


def _gpu_sampler(monkeypatch, gpu, pid):
    fake_nvml.install(monkeypatch, [gpu])
    src = next(s for s in discover().usable if s.id == "nvml:0")
    rings = RingBuffers()
    return Sampler([src], interval_s=0.05, target=Target(pid), sinks=[rings]), rings


def test_gpu_attribution_is_sm_share_of_dynamic_power(monkeypatch):
    me = os.getpid()
    gpu = fake_nvml.FakeGpu(power_w=100.0)  # first reading sets the idle power at 100 W
    gpu.sm_util = {me: 60, 999999: 20}
    gpu.processes = {me: 2**30, 999999: 2**30}
    sampler, rings = _gpu_sampler(monkeypatch, gpu, me)
    sampler.tick()
    gpu.power_w = 300.0
    for _ in range(6):
        time.sleep(0.05)
        sampler.tick()
    gpu_j = rings.get("nvml:0/energy_j").last()[1]
    target_j = rings.get("target/nvml:0/energy_j").last()[1]
    duration_s = (rings.get("nvml:0/energy_j").last()[0] - rings.get("nvml:0/energy_j").snapshot()[0][0]) / 1e9
    dynamic_j = gpu_j - 100.0 * duration_s
    assert target_j == pytest.approx(0.75 * dynamic_j, rel=0.05)
    assert target_j <= gpu_j
    assert rings.get("nvml:0/idle_power_w").last()[1] == 100.0
    assert rings.get("target/nvml:0/mem_used_bytes").last()[1] == 2**30  # only our process's memory


def test_sole_process_gets_the_dynamic_power_when_util_is_unsupported(monkeypatch):
    me = os.getpid()
    gpu = fake_nvml.FakeGpu(power_w=50.0, process_util_supported=False)
    gpu.processes = {me: 2**30}
    sampler, rings = _gpu_sampler(monkeypatch, gpu, me)
    sampler.tick()
    gpu.power_w = 150.0
    time.sleep(0.1)
    sampler.tick()
    assert rings.get("target/nvml:0/energy_j").last()[1] > 0


def test_unattributable_gpu_energy_is_missing_with_reason_not_zero(monkeypatch):
    me = os.getpid()
    gpu = fake_nvml.FakeGpu(process_util_supported=False)
    gpu.processes = {me: 1, 4242: 1}  # shared device, no per-process utilisation
    sampler, rings = _gpu_sampler(monkeypatch, gpu, me)
    sampler.tick()
    time.sleep(0.05)
    sampler.tick()
    assert rings.get("target/nvml:0/energy_j") is None
    assert "not supported" in sampler.reasons["target/nvml:0/energy_j"]
