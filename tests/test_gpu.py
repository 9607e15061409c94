"""Checks that need a real NVIDIA GPU (`pytest -m gpu`; skipped elsewhere). Run by
scripts/gpu_check.sh on a GPU machine; CI never depends on them."""

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.gpu

def _probe_load() -> str:
    """The probe's known GPU load (scripts/gpu_probe.py), one workload for both."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_probe.py"
    spec = importlib.util.spec_from_file_location("_wattlens_gpu_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LOAD


LOAD = _probe_load()


def _nvml_sources():
    from wattlens.profiler.sources import discover

    gpus = [s for s in discover().usable if s.kind == "gpu"]
    if not gpus:
        pytest.skip("no NVIDIA GPU visible (NVML unavailable)")
    return gpus


@pytest.fixture
def gpu_load():
    procs = []

    def start(seconds):
        p = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_counter_and_integrated_power_agree_within_5_percent(gpu_load):
    src = next(s for s in _nvml_sources() if s.method == "counter")
    from wattlens.profiler.sources.base import TrapezoidIntegrator

    integ = TrapezoidIntegrator()
    gpu_load(25)
    time.sleep(2)
    t_end = time.monotonic() + 20
    first = None
    while time.monotonic() < t_end:
        t = time.monotonic_ns()
        r = src.read(t)
        p, _ = src.device.power_w()
        integ.add(t, p)
        first = first if first is not None else r.energy_j
        time.sleep(0.05)
    counter_j = r.energy_j - first
    assert counter_j > 0
    assert abs(integ.energy_j - counter_j) / counter_j < 0.05, (integ.energy_j, counter_j)


def test_one_busy_process_gets_at_least_90_percent_of_dynamic_energy(gpu_load):
    _nvml_sources()
    from wattlens.profiler.process import Target
    from wattlens.profiler.ring import RingBuffers
    from wattlens.profiler.sampler import Sampler
    from wattlens.profiler.sources import discover

    p = gpu_load(20)
    gpu = next(s for s in discover().usable if s.kind == "gpu")
    rings = RingBuffers()
    sampler = Sampler([gpu], interval_s=0.1, target=Target(p.pid), sinks=[rings])
    sampler.start()
    time.sleep(12)
    sampler.stop()
    t, e = rings.get(f"{gpu.id}/energy_j").snapshot()
    idle = rings.get(f"{gpu.id}/idle_power_w")  # measured or remembered; absent: attributed by total
    idle_w = idle.last()[1] if idle is not None else 0.0
    basis_j = e[-1] - idle_w * (t[-1] - t[0]) / 1e9
    target_j = rings.get(f"target/{gpu.id}/energy_j").last()[1]
    assert target_j >= 0.9 * basis_j * 0.95, (target_j, basis_j, idle_w)  # 5 % slack for the idle figure
    assert target_j <= e[-1]


def test_attach_cli_on_a_gpu_workload(gpu_load, tmp_path):
    import json

    _nvml_sources()
    p = gpu_load(20)
    r = subprocess.run([sys.executable, "-m", "wattlens.app", "attach", str(p.pid), "--duration", "8",
                        "--db", str(tmp_path / "g.db"), "--json"], capture_output=True, text=True,
                       env={**os.environ}, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    gpu = [s for s in doc["sources"] if s["kind"] == "gpu"]
    assert gpu and gpu[0]["method"] in ("counter", "polled") and gpu[0]["energy_j"] > 0
    assert gpu[0]["attributed_energy_j"] > 0
