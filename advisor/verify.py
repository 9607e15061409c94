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
from wattlens.profiler import figures

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
    #: the span the meter integrated over (its tick at the window's start to its tick at the end);
    #: None when the meter does not say
    meter_duration_s: float | None = None

    @property
    def span_s(self) -> float:
        """The shorter of the work's span and the meter's: how long the energy figure is measured."""
        if self.meter_duration_s is None:
            return self.duration_s
        return min(self.duration_s, self.meter_duration_s)


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
        meter_duration_s=getattr(m, "duration_s", None),
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
    #: samples each round ran (a re-measured round runs more batches than the first ones)
    round_samples: tuple[int, ...] = ()


@dataclass(frozen=True)
class Verification:
    """The measured effect of a candidate against its baseline, with the predicted one beside it.

    ``saving_fraction`` = 1 − E_candidate/E_baseline per sample (positive = candidate uses less),
    the two per-sample energies being the arms' ``energy_per_sample_j`` (see :func:`paired_saving`
    for the estimator and its interval). It is None, with ``saving_reason``, when no sound figure
    came out (energy unavailable, or no round's window long enough for the meter).
    ``n_rounds`` counts the rounds the figure rests on; ``refused_rounds`` says why others were
    left out, ``round_batches`` how many batches each counted round ran.
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
    #: the shortest window a round may have: max(min_window_s, MIN_WINDOW_INTERVALS × meter interval)
    required_window_s: float | None = None
    round_batches: tuple[int, ...] = ()
    refused_rounds: tuple[str, ...] = ()
    #: each counted round measured once more because it read as disturbed (:func:`disturbances`):
    #: its round number, why, the disturbed measurement (kept here, left out of the figure), the
    #: re-measurement, which of the two the figure counts, and whether the re-measurement read
    #: as disturbed too (then it is counted and named in ``notes``, as any disturbed round is)
    remeasured: tuple[dict[str, Any], ...] = ()

    @property
    def n_remeasured(self) -> int:
        """How many counted rounds were measured again after a disturbance."""
        return len(self.remeasured)

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


def ratio_saving(base: list[float], cand: list[float], weights: list[float] | None = None,
                 confidence: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """1 − R with R = Σ wᵢ·candᵢ / Σ wᵢ·baseᵢ (a ratio of pooled totals), and its interval.

    The standard error is the ratio estimator's linearised (delta-method) one: with the paired
    residuals dᵢ = wᵢ·candᵢ − R·wᵢ·baseᵢ, SE(R) = √(n · Σdᵢ² / (n − 1)) / Σ wᵢ·baseᵢ (Cochran,
    *Sampling Techniques*, §6.4). The interval is taken on log R (SE(log R) = SE(R)/R, Student-t
    with n − 1 degrees of freedom; :func:`figures.saving_interval`), so it never passes +100 %.
    None with fewer than two rounds; R ≤ 0 (a candidate with no energy) has no log interval.
    """
    w = weights if weights is not None else [1.0] * len(base)
    tb = [wi * b for wi, b in zip(w, base, strict=True)]
    tc = [wi * c for wi, c in zip(w, cand, strict=True)]
    ratio = sum(tc) / sum(tb)
    n = len(tb)
    if n < 2:
        return 1.0 - ratio, None
    from scipy.stats import t as student_t

    if ratio <= 0:
        return 1.0 - ratio, None
    resid = [c - ratio * b for b, c in zip(tb, tc, strict=True)]
    se = math.sqrt(n * sum(d * d for d in resid) / (n - 1)) / sum(tb)
    return 1.0 - ratio, figures.saving_interval(ratio, se / ratio, float(student_t.ppf(0.5 + confidence / 2, n - 1)))


def paired_saving(base: list[float | None], cand: list[float | None], confidence: float = 0.95,
                  samples: list[int] | None = None
                  ) -> tuple[float | None, tuple[float, float] | None, str | None]:
    """The energy saving per sample from per-round energies per sample (A and B of a round ran the
    same ``samples``), with its interval, or None and why.

    Estimator: the ratio of the arms' pooled energies per sample, 1 − ΣE_B/ΣE_A over the rounds
    (:func:`ratio_saving`, weights = samples per round), not the mean of per-round ratios. Why:
    it is exactly 1 − (candidate J/sample) / (baseline J/sample) as the result prints them, so the
    saving and the two figures beside it cannot disagree; and each round weighs by its energy, so
    a disturbed or short round (a per-round ratio is unbounded as its baseline tends to 0 — one
    13-ms window once read +1435 %) moves the figure in proportion to what it measured instead of
    dominating it. Its interval is the ratio estimator's delta-method t-interval over the paired
    rounds: honest, i.e. wide, when rounds disagree or are few.
    """
    if not base:
        return None, None, "no round was measured"
    if any(v is None for v in base + cand):
        return None, None, "energy was not available in every round"
    for arm, values in (("baseline", base), ("candidate", cand)):
        if any(v <= 0 for v in values):
            return None, None, f"the {arm}'s attributed energy was zero in a round (window too short?)"
    saving, interval = ratio_saving(base, cand, [float(n) for n in samples] if samples else None, confidence)
    reason = None if interval else "one round gives no interval; measure 2 or more rounds (--rounds N)"
    return saving, interval, reason


#: a round's J/sample this many times its arm's median over the other rounds (or a fraction of
#: it) reads as disturbed: the A/B's two arms run the same work, so they differ by far less
DISTURBED_FACTOR = 3.0


@dataclass(frozen=True)
class Disturbance:
    """One arm of one counted round read far from its other rounds (:func:`disturbances`)."""

    index: int  # the counted round, from 0
    arm: str
    energy_per_sample_j: float
    median_j: float  # the other rounds' median
    pooled_share: float  # of the arm's pooled energy

    @property
    def factor(self) -> float:
        return self.energy_per_sample_j / self.median_j

    @property
    def note(self) -> str:
        return (f"counted round {self.index + 1}: the {self.arm} read {self.energy_per_sample_j:.3g} J/sample, "
                f"{self.factor:.2g}× the other rounds' median ({self.median_j:.3g}); it holds "
                f"{self.pooled_share:.0%} of the {self.arm}'s pooled energy — a disturbance (another "
                "process?): measure again when the machine is quieter")


def disturbances(base: list[float], cand: list[float], samples: list[int] | None = None) -> list[Disturbance]:
    """Each arm's rounds whose energy per sample is beyond ``DISTURBED_FACTOR`` × or ÷ the median
    of its other rounds. Three rounds or more (two have no "others" to hold one against)."""
    n = len(base)
    if n < 3:
        return []
    weights = [float(x) for x in samples] if samples else [1.0] * n
    out = []
    for arm, values in (("baseline", base), ("candidate", cand)):
        pooled = sum(w * v for w, v in zip(weights, values, strict=True))
        for i, v in enumerate(values):
            others = sorted(values[:i] + values[i + 1:])
            mid = (others[(n - 2) // 2] + others[(n - 1) // 2]) / 2
            if mid <= 0 or v <= 0 or 1 / DISTURBED_FACTOR < v / mid < DISTURBED_FACTOR:
                continue
            out.append(Disturbance(i, arm, v, mid, weights[i] * v / pooled))
    return out


def disturbed_rounds(base: list[float], cand: list[float], samples: list[int] | None = None) -> list[str]:
    """Notes naming each round whose energy per sample is far from its arm's other rounds
    (:func:`disturbances`), with the share of the arm's pooled energy it holds. The A/B measures
    such a round once more (:func:`ab_verify`); a round still disturbed after that is kept by the
    pooled estimator (:func:`paired_saving`) — dropping it after the fact would bias the figure —
    and its interval widens for it; the note says which round, so a user knows to measure again
    on a quieter machine."""
    return [d.note for d in disturbances(base, cand, samples)]


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
        round_samples=tuple(w.samples for w in windows),
    )


#: a round's window must last at least this many meter intervals. The meter attributes energy to
#: this process by its CPU-time share measured over spans of ≥ 0.8 interval and reuses the last
#: share for a shorter span (profiler/process.py): a window of one or two intervals is mostly
#: edge, and one shorter than an interval is not measured at all.
MIN_WINDOW_INTERVALS = 5
#: measurements of one round (the first one and the re-measurements with more batches) before
#: the round is refused
ROUND_ATTEMPTS = 3
#: a re-measurement runs at most this many times the batches of the window before it
MAX_GROWTH = 20


def required_window_s(meter: Any, min_window_s: float) -> float:
    """The shortest window a round may have with ``meter``: ``min_window_s``, and at least
    ``MIN_WINDOW_INTERVALS`` of the meter's sampling interval."""
    interval = getattr(meter, "interval_s", None)
    floor = MIN_WINDOW_INTERVALS * interval if isinstance(interval, int | float) and interval > 0 else 0.0
    return max(min_window_s, floor)


def window_problem(w: WindowResult, required_s: float) -> str | None:
    """Why ``w`` cannot give a sound energy figure (too short, zero energy), or None."""
    if w.span_s < required_s:
        meter = "" if w.meter_duration_s is None else f", the meter's {w.meter_duration_s:.3g} s"
        return (f"its window lasted {w.duration_s:.3g} s{meter}, shorter than the {required_s:.3g} s "
                f"a measurement needs")
    if w.attributed_energy_j is not None and w.attributed_energy_j <= 0:
        return "the meter attributed no energy to its window"
    return None


def _grown(n: int, windows: dict[str, WindowResult], required_s: float) -> int | None:
    """Batches for a re-measurement that would fill ``required_s``, or None when more batches
    cannot help (the work lasted long enough; the meter's span or energy is what failed)."""
    work = min(w.duration_s for w in windows.values())
    if work >= required_s:
        return None
    # aim at twice the need: on a loaded machine a batch's time varies by tens of percent between
    # measurements, and 1.25x left all three attempts of every round short in a CI run
    factor = min(MAX_GROWTH, max(2.0, 2.0 * required_s / max(work, 1e-6)))
    return max(n + 1, math.ceil(n * factor))


def measure_round(meter: Any, r: int, models: dict[str, nn.Module], inputs: ModelInputs, n_batches: int,
                  required_s: float, label: str = "ab") -> tuple[dict[str, WindowResult], bool, int, list[str]]:
    """One A/B round: each arm in turn, the same ``n_batches`` each.

    A round whose window is too short for the meter (or that the meter attributes no energy to)
    is measured again with more batches, both arms, up to ``ROUND_ATTEMPTS`` in all; one that is
    still unsound is refused. Returns (the last windows by arm, whether they count, the batch count
    to go on with, notes on what was re-measured or refused and why).
    """
    notes: list[str] = []
    n = n_batches
    for attempt in range(ROUND_ATTEMPTS):
        suffix = "" if attempt == 0 else f":again{attempt}"
        windows = {k: measure_window(meter, f"{label}:{k}:{r}{suffix}", m, inputs, n) for k, m in models.items()}
        problems = {k: p for k, w in windows.items() if (p := window_problem(w, required_s))}
        if not problems:
            return windows, True, n, notes
        why = "; ".join(f"{k}: {p}" for k, p in problems.items())
        grown = _grown(n, windows, required_s)
        if grown is None or attempt == ROUND_ATTEMPTS - 1:
            notes.append(f"round {r + 1} refused after {attempt + 1} measurement(s) of {n} batches "
                         f"({why}); it is not counted")
            return windows, False, n, notes
        notes.append(f"round {r + 1} measured again with {grown} batches instead of {n} ({why})")
        n = grown
    raise AssertionError("unreachable")


#: a counted round that read as disturbed is measured once more (both arms, its batches): at most
#: this many re-measurements in one A/B run, the most disturbed rounds first
MAX_REMEASURED_ROUNDS = 2
#: the progress stage of those re-measurements (optimize prints it: "wattlens: re-measure …")
REMEASURE_STAGE = "re-measure a disturbed round"


def _window_record(w: WindowResult) -> dict[str, Any]:
    return {"samples": w.samples, "duration_s": w.duration_s, "energy_j": w.attributed_energy_j,
            "energy_per_sample_j": None if w.attributed_energy_j is None else w.attributed_energy_j / w.samples}


def _disturbed_words(found: list[Disturbance]) -> str:
    return "; ".join(f"the {d.arm} read {d.energy_per_sample_j:.3g} J/sample, {d.factor:.2g}× the other rounds' "
                     f"median ({d.median_j:.3g})" for d in found)


def remeasure_disturbed(meter: Any, models: dict[str, nn.Module], inputs: ModelInputs,
                        windows: dict[str, list[WindowResult]], round_batches: list[int], required_s: float,
                        progress: Progress | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure each disturbed counted round (:func:`disturbances`) once more, in place.

    ``windows`` (by arm) and ``round_batches`` hold the counted rounds; a round's re-measurement,
    when sound (:func:`measure_round`), takes the disturbed measurement's place in them, so the
    figure and its interval rest on it. At most one re-measurement per round and
    ``MAX_REMEASURED_ROUNDS`` in all, the most disturbed first. Returns (the record of each
    re-measured round, with the disturbed measurement kept in it; notes saying what was done).
    """
    if len(round_batches) < 3:
        return [], []
    per = {k: [None if w.attributed_energy_j is None else w.attributed_energy_j / w.samples for w in ws]
           for k, ws in windows.items()}
    if any(v is None or v <= 0 for vs in per.values() for v in vs):
        return [], []  # no sound figure to hold a round against
    found = disturbances(per["baseline"], per["candidate"], [w.samples for w in windows["baseline"]])
    by_round: dict[int, list[Disturbance]] = {}
    for d in sorted(found, key=lambda d: -abs(math.log(d.factor))):
        by_round.setdefault(d.index, []).append(d)
    chosen = list(by_round)[:MAX_REMEASURED_ROUNDS]
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for j, i in enumerate(chosen):
        if progress:
            progress(REMEASURE_STAGE, j / len(chosen))
        got, counts, used, round_notes = measure_round(meter, i, models, inputs, round_batches[i], required_s,
                                                       label="ab-retry")
        notes.extend(f"counted round {i + 1}, measured once more: {n}" for n in round_notes)
        record = {"round": i + 1, "why": [d.note for d in by_round[i]],
                  "disturbed": {k: _window_record(windows[k][i]) for k in models},
                  "remeasurement": {k: _window_record(got[k]) for k in models},
                  "counted": "remeasurement" if counts else "disturbed", "disturbed_again": False}
        records.append(record)
        why = _disturbed_words(by_round[i])
        if counts:
            for k in models:
                windows[k][i] = got[k]
            round_batches[i] = used
            notes.append(f"counted round {i + 1} was disturbed ({why}) and was measured once more: the "
                         "re-measurement is counted; the disturbed measurement is kept in the record and left "
                         "out of the figure and its interval")
        else:
            notes.append(f"counted round {i + 1} was disturbed ({why}); its re-measurement could not be "
                         "measured soundly, so the disturbed measurement stays counted")
    if chosen and progress:
        progress(REMEASURE_STAGE, 1.0)
    left = len(by_round) - len(chosen)
    if left:
        notes.append(f"counted round(s) disturbed: {left} more not measured again (at most {MAX_REMEASURED_ROUNDS} "
                     "re-measurements per run); named below")
    return records, notes


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

    ``batches_per_round`` defaults to enough batches that the faster model's warm-up speed fills
    the required window (:func:`required_window_s`: ``min_window_s``, and at least a few of the
    meter's sampling intervals). Both arms run the same batches in a round. The window each really
    lasted is checked afterwards (a machine's speed changes: a contended warm-up sizes too few
    batches for an idle round): a round too short for the meter is measured again with more
    batches, and refused when it stays unsound (:func:`measure_round`). The saving rests on the
    counted rounds only, as do the arms' per-sample figures.
    """
    if n_rounds < 1:
        raise ValueError("n_rounds must be at least 1")
    meter = meter if meter is not None else _default_meter()
    models = {"baseline": baseline, "candidate": candidate}
    memory = {k: PeakMemory(model_device(m)) for k, m in models.items()}
    notes: list[str] = []
    required_s = required_window_s(meter, min_window_s)

    # keep one outer window open so the meter's sampler runs through the whole A/B run
    meter.begin_window("ab:all")
    try:
        latencies = {k: _latency_s(m, inputs, max(1, warmup_batches)) for k, m in models.items()}
        if batches_per_round is None:
            fastest = max(min(latencies.values()), 1e-6)
            batches_per_round = max(1, math.ceil(required_s / fastest))
        windows: dict[str, list[WindowResult]] = {k: [] for k in models}
        refused: dict[str, list[WindowResult]] = {k: [] for k in models}
        refused_rounds: list[str] = []
        round_batches: list[int] = []
        n = batches_per_round
        for r in range(n_rounds):
            got, counts, used, round_notes = measure_round(meter, r, models, inputs, n, required_s)
            notes.extend(round_notes)
            for k in models:
                (windows if counts else refused)[k].append(got[k])
            if counts:
                round_batches.append(used)
                n = used  # the machine proved faster than the warm-up said: keep the batches
            else:
                refused_rounds.append(round_notes[-1])
            if progress:
                progress("verify", (r + 1) / n_rounds)
        # a counted round that read as disturbed (another process, throttling…) is measured once
        # more, inside the same outer window, before the figure is taken
        remeasured, retry_notes = remeasure_disturbed(meter, models, inputs, windows, round_batches,
                                                      required_s, progress)
        notes.extend(retry_notes)
    finally:
        meter.end_window("ab:all")
    # memory is probed apart: trimming the heap inside an energy window would cost page faults
    peaks = {k: max(memory[k].probe(m, inputs) for _ in range(2)) for k, m in models.items()}

    counted = windows
    if not round_batches:
        # nothing sound to count: the arms show the work (latency, which was measured) and no
        # energy, with why
        why = f"no round could be measured soundly: {refused_rounds[-1]}"
        counted = {k: [dataclasses.replace(w, attributed_energy_j=None, reason=why) for w in ws]
                   for k, ws in refused.items()}
    arm_a = _arm("baseline", baseline, counted["baseline"], peaks["baseline"], memory["baseline"].method)
    arm_b = _arm("candidate", candidate, counted["candidate"], peaks["candidate"], memory["candidate"].method)
    samples = list(arm_a.round_samples)
    if round_batches:
        saving, interval, reason = paired_saving(list(arm_a.round_energy_per_sample_j),
                                                 list(arm_b.round_energy_per_sample_j), confidence, samples)
        if arm_a.energy_reason and saving is None:
            reason = f"{reason}: {arm_a.energy_reason}"
        elif refused_rounds and interval is None and reason:
            reason = f"{reason} ({len(refused_rounds)} of {n_rounds} rounds refused)"
    else:
        saving, interval = None, None
        reason = (f"no round could be measured soundly ({refused_rounds[-1]}); "
                  "run again on a quieter machine")
    # the same estimator for time: the ratio of the arms' pooled latencies per sample
    lat_saving, lat_interval = ratio_saving(list(arm_a.round_latency_per_sample_s),
                                            list(arm_b.round_latency_per_sample_s),
                                            [float(x) for x in samples], confidence)
    if saving is not None:
        # a round still disturbed (never re-measured, or disturbed again) is counted and named
        found = disturbances(list(arm_a.round_energy_per_sample_j), list(arm_b.round_energy_per_sample_j), samples)
        again = {d.index + 1 for d in found}
        for rec in remeasured:
            if rec["counted"] == "remeasurement" and rec["round"] in again:
                rec["disturbed_again"] = True
                notes.append(f"counted round {rec['round']}: its re-measurement read as disturbed too; it is "
                             "counted and named below")
        notes.extend(d.note for d in found)
    if arm_a.energy_method.endswith("estimated"):
        notes.append("energy is estimated from a CPU power model (no hardware counter here): "
                     "compare the two arms, do not read the joules as exact")
    return Verification(
        baseline=arm_a,
        candidate=arm_b,
        saving_fraction=saving,
        saving_interval=interval,
        saving_reason=reason,
        latency_saving_fraction=lat_saving,
        latency_saving_interval=lat_interval,
        fidelity=fidelity,
        n_rounds=len(round_batches),
        warmup_batches=max(1, warmup_batches),
        batches_per_round=batches_per_round,
        batch_size=inputs.n_samples,
        inputs=inputs.description,
        sources=_source_methods(meter),
        confidence=confidence,
        notes=tuple(notes),
        required_window_s=required_s,
        round_batches=tuple(round_batches),
        refused_rounds=tuple(refused_rounds),
        remeasured=tuple(remeasured),
    )


def _source_methods(meter: Any) -> dict[str, str]:
    return {s.id: s.method for s in getattr(meter, "sources", [])}
