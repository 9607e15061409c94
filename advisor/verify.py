"""Interleaved A/B measurement of a baseline and a candidate model.

Published results disagree on when quantization or pruning saves energy, so the advisor does
not promise: it measures. Warm-up first (allocator, kernel selection, caches), then rounds of
A B A B …; interleaving spreads drift (thermal state, other processes, frequency scaling) over
both arms, and pairing A and B within a round lets the round-to-round spread give the interval of
the saving. Energy comes from :class:`wattlens.profiler.meter.EnergyMeter` — the same sources and
arithmetic as a profiling session — attributed to this process, with the method label it reports.

Peak memory is the *working* memory one batch adds on top of what is already resident (weights
are reported apart as ``model_bytes``), probed in a separate pass outside the energy windows.
``tracemalloc`` does not see torch's allocations, so on CPU we hand freed heap memory back to the
kernel (glibc ``malloc_trim``; otherwise a reused allocation never shows in RSS), reset the
kernel's peak-RSS counter (``VmHWM``, via ``/proc/self/clear_refs``) and read its growth over one
batch; without those we poll RSS with psutil. On CUDA it is ``torch.cuda.max_memory_allocated``
minus what was allocated before the batch (both arms may share the GPU, so the absolute figure
would count both models).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattlens.advisor.fidelity import Fidelity
from wattlens.advisor.modelio import ModelInputs, forward, model_device, tensor_footprint

Progress = Callable[[str, float], None]


# --------------------------------------------------------------------------- peak memory


class PeakMemory:
    """Peak working memory of a block of work. ``method`` names how it is measured."""

    def __init__(self, device: torch.device):
        self.device = device
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._peak = 0
        self._start = 0
        self._trim = _malloc_trim_fn()
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated − allocated before the batch"
        elif _can_reset_hwm():
            self.method = "peak RSS growth over one batch (VmHWM" + (
                ", after malloc_trim)" if self._trim else "; allocator reuse may hide some)")
        else:
            self.method = "peak RSS growth over one batch (psutil polled every 2 ms)"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = int(torch.cuda.memory_allocated(self.device))
            return
        if self._trim:
            self._trim(0)
        if "VmHWM" in self.method:
            _reset_hwm()
            self._start = _status_kb("VmRSS") * 1024
            return
        import psutil

        proc = psutil.Process()
        self._start = self._peak = proc.memory_info().rss
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=poll, name="wattlens-peak-rss", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, int(torch.cuda.max_memory_allocated(self.device)) - self._start)
        if self._thread is None:
            return max(0, _status_kb("VmHWM") * 1024 - self._start)
        self._stop.set()
        self._thread.join()
        self._thread = None
        return max(0, self._peak - self._start)

    def probe(self, model: nn.Module, inputs: ModelInputs) -> int:
        """Working memory of one forward of ``model`` on ``inputs`` (outside any energy window)."""
        on_device = inputs.to(model_device(model))
        self.start()
        try:
            forward(model, on_device)
        finally:
            peak = self.stop()
        return peak


def _malloc_trim_fn() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (returns freed heap pages to the kernel), or None elsewhere."""
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
    return fn


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
        _status_kb("VmHWM")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- one measured window


@dataclass(frozen=True)
class WindowResult:
    samples: int
    duration_s: float
    attributed_energy_j: float | None
    attributed_method: str
    source_energy_j: dict[str, float | None]
    reason: str | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_window(meter: Any, key: str, model: nn.Module, inputs: ModelInputs, n_batches: int
                   ) -> WindowResult:
    """Run ``n_batches`` forwards of ``model`` inside one energy window."""
    device = model_device(model)
    on_device = inputs.to(device)
    _sync(device)
    meter.begin_window(key)
    t0 = time.perf_counter_ns()
    try:
        for _ in range(n_batches):
            forward(model, on_device)
        _sync(device)
    finally:
        t1 = time.perf_counter_ns()
        m = meter.end_window(key)
    reason = None
    if m.attributed_energy_j is None:
        reason = m.reasons.get("attributed") or "; ".join(f"{k}: {v}" for k, v in m.reasons.items()) \
            or "the meter gave no attributed energy"
    return WindowResult(
        samples=n_batches * inputs.n_samples,
        duration_s=(t1 - t0) / 1e9,
        attributed_energy_j=m.attributed_energy_j,
        attributed_method=m.attributed_method,
        source_energy_j=dict(m.energy_j),
        reason=reason,
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ArmResult:
    """One side of the A/B run. Energy per sample is attributed to this process."""

    label: str
    device: str
    energy_per_sample_j: float | None
    energy_method: str
    energy_reason: str | None
    latency_per_sample_s: float
    peak_mem_bytes: int | None  # working memory of one batch (see the module docstring)
    mem_method: str
    model_params: int
    model_bytes: int
    round_energy_per_sample_j: tuple[float | None, ...]
    round_latency_per_sample_s: tuple[float, ...]
    #: whole-machine energy per sample per source (includes other processes): context only
    source_energy_per_sample_j: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    """The measured effect of a candidate against its baseline, with the predicted one beside it.

    ``saving_fraction`` = 1 − E_candidate/E_baseline per sample (positive = candidate uses less);
    its interval is a ``confidence`` t-interval over the per-round paired savings.
    ``predicted_saving`` is filled later by the advisor's regression (:meth:`with_prediction`).
    """

    baseline: ArmResult
    candidate: ArmResult
    saving_fraction: float | None
    saving_interval: tuple[float, float] | None
    saving_reason: str | None
    latency_saving_fraction: float
    latency_saving_interval: tuple[float, float] | None
    fidelity: Fidelity | None
    n_rounds: int
    warmup_batches: int
    batches_per_round: int
    batch_size: int
    inputs: str
    sources: dict[str, str]
    confidence: float = 0.95
    predicted_saving: float | None = None
    predicted_saving_interval: tuple[float, float] | None = None
    prediction_method: str | None = None
    notes: tuple[str, ...] = ()

    def with_prediction(self, saving: float | None, interval: tuple[float, float] | None = None,
                        method: str | None = None) -> Verification:
        return dataclasses.replace(self, predicted_saving=saving,
                                   predicted_saving_interval=interval, prediction_method=method)

    def side_by_side(self) -> dict[str, Any]:
        """Predicted and measured saving together, as the report shows them."""
        return {
            "predicted": self.predicted_saving,
            "predicted_interval": self.predicted_saving_interval,
            "prediction_method": self.prediction_method or "no prediction",
            "measured": self.saving_fraction,
            "measured_interval": self.saving_interval,
            "measured_method": self.baseline.energy_method,
            "measured_reason": self.saving_reason,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- statistics


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Two-sided Student-t interval of the mean; None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t as student_t

    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def paired_saving(base: list[float | None], cand: list[float | None], confidence: float = 0.95
                  ) -> tuple[float | None, tuple[float, float] | None, str | None]:
    """Mean per-round saving 1 − cand/base with its interval, or None and why."""
    if any(v is None for v in base + cand):
        return None, None, "energy was not available in every round"
    if any(v <= 0 for v in base):
        return None, None, "the baseline's attributed energy was zero in a round (window too short?)"
    savings = [1.0 - c / b for b, c in zip(base, cand, strict=True)]
    mean = sum(savings) / len(savings)
    interval = t_interval(savings, confidence)
    reason = None if interval else "one round gives no interval; use n_rounds ≥ 2"
    return mean, interval, reason


# --------------------------------------------------------------------------- the A/B run


def _default_meter() -> Any:
    from wattlens.profiler.meter import EnergyMeter

    return EnergyMeter(pid=os.getpid())


def _latency_s(model: nn.Module, inputs: ModelInputs, batches: int) -> float:
    device = model_device(model)
    on_device = inputs.to(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        forward(model, on_device)
    _sync(device)
    return (time.perf_counter() - t0) / batches


def _arm(label: str, model: nn.Module, windows: list[WindowResult], peak_mem_bytes: int | None,
         mem_method: str) -> ArmResult:
    samples = sum(w.samples for w in windows)
    energies = [w.attributed_energy_j for w in windows]
    per_round = tuple(None if e is None else e / w.samples for e, w in zip(energies, windows, strict=True))
    total = None if any(e is None for e in energies) else sum(energies) / samples
    reason = next((w.reason for w in windows if w.reason), None)
    source_ids = windows[0].source_energy_j.keys() if windows else []
    by_source: dict[str, float | None] = {}
    for sid in source_ids:
        vals = [w.source_energy_j.get(sid) for w in windows]
        by_source[sid] = None if any(v is None for v in vals) else sum(vals) / samples
    params, nbytes = tensor_footprint(model)
    return ArmResult(
        label=label,
        device=str(model_device(model)),
        energy_per_sample_j=total,
        energy_method=windows[0].attributed_method if windows else "none",
        energy_reason=reason,
        latency_per_sample_s=sum(w.duration_s for w in windows) / samples,
        peak_mem_bytes=peak_mem_bytes,
        mem_method=mem_method,
        model_params=params,
        model_bytes=nbytes,
        round_energy_per_sample_j=per_round,
        round_latency_per_sample_s=tuple(w.duration_s / w.samples for w in windows),
        source_energy_per_sample_j=by_source,
    )


def ab_verify(
    baseline: nn.Module,
    candidate: nn.Module,
    inputs: ModelInputs,
    *,
    n_rounds: int = 5,
    warmup_batches: int = 2,
    min_window_s: float = 0.5,
    batches_per_round: int | None = None,
    meter: Any | None = None,
    fidelity: Fidelity | None = None,
    confidence: float = 0.95,
    progress: Progress | None = None,
) -> Verification:
    """Measure ``baseline`` (A) and ``candidate`` (B) in interleaved rounds A B A B ….

    ``batches_per_round`` defaults to enough batches that the faster model's window lasts
    ``min_window_s`` (the meter samples at a fixed interval; short windows are mostly edge).
    Both arms always run the same number of batches on the same inputs.
    """
    if n_rounds < 1:
        raise ValueError("n_rounds must be at least 1")
    meter = meter if meter is not None else _default_meter()
    models = {"baseline": baseline, "candidate": candidate}
    memory = {k: PeakMemory(model_device(m)) for k, m in models.items()}
    notes: list[str] = []

    # keep one outer window open so the meter's sampler runs through the whole A/B run
    meter.begin_window("ab:all")
    try:
        latencies = {k: _latency_s(m, inputs, max(1, warmup_batches)) for k, m in models.items()}
        if batches_per_round is None:
            fastest = max(min(latencies.values()), 1e-6)
            batches_per_round = max(1, math.ceil(min_window_s / fastest))
        windows: dict[str, list[WindowResult]] = {k: [] for k in models}
        for r in range(n_rounds):
            for k, m in models.items():
                windows[k].append(measure_window(meter, f"ab:{k}:{r}", m, inputs, batches_per_round))
            if progress:
                progress("verify", (r + 1) / n_rounds)
    finally:
        meter.end_window("ab:all")
    # memory is probed apart: trimming the heap inside an energy window would cost page faults
    peaks = {k: max(memory[k].probe(m, inputs) for _ in range(2)) for k, m in models.items()}

    arm_a = _arm("baseline", baseline, windows["baseline"], peaks["baseline"], memory["baseline"].method)
    arm_b = _arm("candidate", candidate, windows["candidate"], peaks["candidate"], memory["candidate"].method)
    saving, interval, reason = paired_saving(
        list(arm_a.round_energy_per_sample_j), list(arm_b.round_energy_per_sample_j), confidence
    )
    if arm_a.energy_reason and saving is None:
        reason = f"{reason}: {arm_a.energy_reason}"
    lat_savings = [1 - c / b for b, c in zip(arm_a.round_latency_per_sample_s,
                                             arm_b.round_latency_per_sample_s, strict=True)]
    if arm_a.energy_method.endswith("estimated"):
        notes.append("energy is estimated from a CPU power model (no hardware counter here): "
                     "compare the two arms, do not read the joules as exact")
    return Verification(
        baseline=arm_a,
        candidate=arm_b,
        saving_fraction=saving,
        saving_interval=interval,
        saving_reason=reason,
        latency_saving_fraction=sum(lat_savings) / len(lat_savings),
        latency_saving_interval=t_interval(lat_savings, confidence),
        fidelity=fidelity,
        n_rounds=n_rounds,
        warmup_batches=max(1, warmup_batches),
        batches_per_round=batches_per_round,
        batch_size=inputs.n_samples,
        inputs=inputs.description,
        sources=_source_methods(meter),
        confidence=confidence,
        notes=tuple(notes),
    )


def _source_methods(meter: Any) -> dict[str, str]:
    return {s.id: s.method for s in getattr(meter, "sources", [])}
