"""Probe how this GPU's NVML really behaves (issue 16); results as JSON to $OUT/gpu_probe.json.

Measures: how often the energy counter changes; instant vs averaged power; the per-process
sample cadence and first-seen delay; NVML's PIDs vs ours; whether the ``_v3`` process symbol
exists and the binding version; counter energy vs integrated instant power over a known load
(goal ≤ 2 %); idle measured vs the idle stored in the wattlens database; CUDA-event layer times
vs torch.profiler kernel times.

``WATTLENS_FAKE_NVML=1`` runs it end to end against the NVML model in tests/fake_nvml.py on a
simulated clock (how pytest checks this script); ``--scale`` shortens every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOAD = """
import sys, time, torch
x = torch.randn(8192, 8192, device="cuda")
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(20):
        y = x @ x
    torch.cuda.synchronize()
"""


class RealBackend:
    fake = False

    def __init__(self):
        self.proc = None

    def now_s(self) -> float:
        return time.monotonic()

    def sleep(self, s: float) -> None:
        time.sleep(s)

    def start_load(self, seconds: float) -> int:
        self.proc = subprocess.Popen([sys.executable, "-c", LOAD, str(seconds)], stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()
        return self.proc.pid

    def stop_load(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class FakeBackend:
    """The NVML model on a simulated clock: sleeping advances the clock."""

    fake = True

    def __init__(self):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests import fake_nvml
        from wattlens.profiler.sources import nvml

        self.clock = fake_nvml.SimClock()
        self.gpu = fake_nvml.FakeGpu(clock=self.clock, counter_period_s=0.1, sample_period_s=0.5,
                                     sample_phase_s=0.13)
        fake = fake_nvml.make_fake_pynvml([self.gpu])
        nvml.shutdown()
        nvml._load_pynvml = lambda: fake
        self.load_pid = os.getpid()

    def now_s(self) -> float:
        return self.clock.now()

    def sleep(self, s: float) -> None:
        self.clock.advance(s)

    def start_load(self, seconds: float) -> int:
        self.gpu.set_load({self.load_pid: 230.0})
        return self.load_pid

    def stop_load(self) -> None:
        self.gpu.set_load({})
        self.gpu.processes = {}


def counter_cadence(dev, be, seconds: float) -> dict:
    changes, last, t_last = [], None, None
    end = be.now_s() + seconds
    while be.now_s() < end:
        e, _ = dev.total_energy_j()
        t = be.now_s()
        if e is not None and last is not None and e != last:
            if t_last is not None:
                changes.append(t - t_last)
            t_last = t
        last = e
        be.sleep(0.005)
    return {"counter_update_period_s": statistics.median(changes) if changes else None,
            "counter_changes": len(changes)}


def power_readings(dev, be, seconds: float) -> dict:
    rows = []
    end = be.now_s() + seconds
    while be.now_s() < end:
        inst, _ = dev.instant_power_w()
        usage, _ = dev.usage_power_w()
        rows.append((be.now_s(), inst, usage))
        be.sleep(0.05)
    return {"instant_power_w": [r[1] for r in rows][-5:], "usage_power_w": [r[2] for r in rows][-5:],
            "instant_available": any(r[1] is not None for r in rows)}


def process_samples(dev, be, load_start_s: float, seconds: float) -> dict:
    seen_ts, last_seen, first_seen_s = [], 0, None
    end = be.now_s() + seconds
    while be.now_s() < end:
        samples, reason = dev.process_samples(last_seen)
        if samples is None:
            return {"process_samples": None, "reason": reason}
        for _, _, ts in samples:
            if ts not in seen_ts:
                seen_ts.append(ts)
            if first_seen_s is None:
                first_seen_s = be.now_s() - load_start_s
        if samples:
            last_seen = max(ts for _, _, ts in samples)
        be.sleep(0.02)
    gaps = [(b - a) / 1e6 for a, b in zip(seen_ts, seen_ts[1:], strict=False)]
    return {"sample_period_s": statistics.median(gaps) if gaps else None, "first_seen_delay_s": first_seen_s,
            "samples_seen": len(seen_ts)}


def counter_vs_integrated(dev, be, seconds: float) -> dict:
    from wattlens.profiler.sources.base import TrapezoidIntegrator

    integ = TrapezoidIntegrator()
    e0, _ = dev.total_energy_j()
    end = be.now_s() + seconds
    while be.now_s() < end:
        p, _ = dev.instant_power_w()
        if p is None:
            p, _ = dev.usage_power_w()
        integ.add(int(be.now_s() * 1e9), p)
        be.sleep(0.02)
    e1, _ = dev.total_energy_j()
    counter_j = e1 - e0 if e0 is not None and e1 is not None else None
    diff = abs(integ.energy_j - counter_j) / counter_j if counter_j else None
    return {"counter_j": counter_j, "integrated_instant_j": integ.energy_j, "relative_difference": diff,
            "within_2_percent": diff is not None and diff <= 0.02}


def idle_vs_stored(dev, be, seconds: float, db: str | None) -> dict:
    from wattlens.profiler.gpu_share import IdleStretch

    stretch, last = IdleStretch(), None
    end = be.now_s() + seconds
    while be.now_s() < end:
        procs, _ = dev.running_processes()
        e, _ = dev.total_energy_j()
        if procs == {} and e is not None and last is not None:
            stretch.add(int(be.now_s() * 1e9), e - last)
        last = e
        be.sleep(0.1)
    got = stretch.power_w(min(2.0, seconds / 2))
    stored = None
    if db:
        from wattlens.profiler.store import Store

        try:
            row = Store(db).gpu_idle(dev.uuid or "")
            stored = row["idle_power_w"] if row else None
        except Exception as exc:  # noqa: BLE001 - a probe reports, it does not fail
            stored = f"unreadable: {exc}"
    return {"idle_measured_w": got[0] if got else None, "idle_stored_w": stored}


def cuda_event_vs_profiler(be) -> dict:
    if be.fake:
        return {"cuda_events": None, "reason": "needs a real GPU and torch with CUDA"}
    code = Path(__file__).with_name("gpu_probe_layers.py")
    if not code.exists():
        return {"cuda_events": None, "reason": "gpu_probe_layers.py not present"}
    r = subprocess.run([sys.executable, str(code)], capture_output=True, text=True, timeout=120)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"cuda_events": None, "reason": (r.stderr or r.stdout)[-500:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every phase length")
    ap.add_argument("--db", default=os.environ.get("WATTLENS_DB"))
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    a = ap.parse_args(argv)
    be = FakeBackend() if os.environ.get("WATTLENS_FAKE_NVML") else RealBackend()
    from importlib.metadata import PackageNotFoundError, version

    from wattlens.profiler.pidns import PidNamespace
    from wattlens.profiler.sources import nvml

    nvml.init()
    dev = nvml.NvmlDevice(0)
    try:
        binding = version("nvidia-ml-py")
    except PackageNotFoundError:
        binding = None
    res: dict = {"fake": be.fake, "gpu": dev.name, "binding_version": binding,
                 "v3_symbol": nvml.has_symbol("nvmlDeviceGetComputeRunningProcesses_v3"),
                 "process_struct": nvml.process_struct_layout()}
    s = a.scale
    res["idle"] = idle_vs_stored(dev, be, 6 * s, a.db)
    res["counter"] = counter_cadence(dev, be, 3 * s)
    t_load = be.now_s()
    pid = be.start_load(40 * s + 5)
    try:
        res["process_samples"] = process_samples(dev, be, t_load, 8 * s)
        procs, reason = dev.running_processes()
        ns = PidNamespace()
        res["pids"] = {"ours": pid, "nvml": sorted(procs) if procs else reason,
                       "in_host_pid_namespace": ns.in_host_namespace,
                       "ours_seen_by_nvml": bool(procs) and (ns.to_host({pid})[0] or {}).get(pid) in procs}
        res["power"] = power_readings(dev, be, 3 * s)
        res["counter_vs_integrated"] = counter_vs_integrated(dev, be, 20 * s)
    finally:
        be.stop_load()
    res["cuda_events_vs_profiler"] = cuda_event_vs_profiler(be)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_probe.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
