"""A stored session → :class:`SessionFeatures`, the typed record every rule reads.

Every feature is ``None`` when the session holds no evidence for it, and ``reasons`` says why
(rules stay silent on ``None``; they never read a missing figure as 0). Nothing here imports
torch: CPU int8 support comes from the CPU flags (``/proc/cpuinfo``, read only when the session
was recorded on this host — another host's CPU is unknown here), and torch's quantized engines
are read only if torch is already loaded in this process.

Layer shares are shares of sampled *time* (stack sampling: CPU-side time by module class; agent:
per-instance timing), computed from self times so that nothing is counted twice: each row's
self time goes to the first attention/MLP module on its path from the root, and to "Linear" when
the row itself is a Linear/Conv1D.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wattlens.advisor.blocks import config_blocks, count_blocks
from wattlens.advisor.regression import AbPoint, SweepPoint
from wattlens.profiler import figures
from wattlens.profiler.ranks import session_ranks
from wattlens.profiler.records import EventRecord, LayerCost
from wattlens.profiler.stacks import backward_map
from wattlens.profiler.summary import step_stats, target_energy_between

#: Buckets of time spent outside the model's forward (names from profiler/stacks/parse.py and
#: the agent's "outside modules").
OUTSIDE_BUCKETS = ("data loading", "idle", "gpu-wait", "optimizer", "outside modules")
TRAINING_BUCKETS = ("backward", "optimizer")

#: CPU flags that matter for int8 and bf16 on CPU (x86 from "flags", ARM from "Features").
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
RELEVANT_CPU_FLAGS = ("asimd", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                      "amx_int8", "amx_bf16", "asimddp", "i8mm", "bf16")

_LINEAR_CLASS = re.compile(r"(Linear|^Conv1D)$")
_CONV1D_CLASS = re.compile(r"^Conv1D$")
#: Files that make a model folder's tokenizer loadable (a subset of modelio.TOKENIZER_FILES,
#: which imports torch): healing and calibration text need one.
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model")
#: Actions whose stored results the healing rule reads (structured pruning keeps dense shapes
#: that distillation can train; unstructured masks would not survive training).
HEALABLE_PRUNING = ("prune-layers", "prune-mlp", "prune-heads")
_ATTN_WORD = re.compile(r"attention|attn", re.IGNORECASE)
_MLP_WORD = re.compile(r"mlp|intermediate|feed_?forward|ffn|(^|_)fc\d?$|swiglu", re.IGNORECASE)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class GpuFeatures:
    source_id: str
    name: str
    memory_total_bytes: float | None
    memory_used_max_bytes: float | None
    memory_headroom_fraction: float | None  # 1 - peak used / total over the session
    util_mean_pct: float | None
    util_p90_pct: float | None
    target_energy_j: float | None  # energy attributed to the target on this GPU
    mean_power_w: float | None = None  # whole-GPU energy / span
    idle_power_w: float | None = None  # measured with no GPU process, or remembered for this GPU (never a guess)


@dataclass(frozen=True)
class CpuFeatures:
    model_name: str | None
    logical_cores: int | None
    flags: tuple[str, ...] | None  # the relevant flags present; None = flags unknown
    flags_source: str | None
    int8_dot_product: bool | None  # VNNI / AMX-INT8 / ARM dot product
    amx: bool | None
    quantized_engines: tuple[str, ...] | None  # torch.backends.quantized.supported_engines


@dataclass(frozen=True)
class LayerShare:
    path: str
    category: str  # attention | mlp | other
    is_linear: bool | None
    self_time_s: float
    share: float  # self time / all sampled time (buckets included)
    params: int | None = None


@dataclass(frozen=True)
class OptimizeOutcome:
    """One stored ``wattlens optimize --action`` result that concerns the session (recorded by it,
    or applied from its advice with ``--from-session``): what was measured, and whether the
    user's ``--max-quality-loss`` refused it."""

    action_id: int
    spec: str  # the --action string, e.g. "prune-layers:0.34"
    status: str  # verified | refused | ...
    model_path: str | None
    model_kind: str | None  # hf-folder | torch-module-file | None (the path is not on this host)
    has_tokenizer: bool | None  # the model folder has tokenizer files (None: kind unknown)
    max_quality_loss: float | None
    quality_loss: float | None
    quality_metric: str | None
    fidelity_mode: str | None  # next-token (causal LM) | output-distribution | cosine
    kl_base_candidate: float | None
    saving_fraction: float | None
    saving_interval: tuple[float, float] | None
    energy_method: str | None
    healing: dict | None  # the healing the result already had (steps, held-out KL before/after)

    @property
    def exceeds_quality_bound(self) -> bool:
        return (self.max_quality_loss is not None and self.quality_loss is not None
                and self.quality_loss > self.max_quality_loss)


@dataclass(frozen=True)
class SessionFeatures:
    session_id: int
    name: str | None
    status: str | None
    duration_s: float | None
    recorded_here: bool
    # devices
    gpus: tuple[GpuFeatures, ...]
    gpu_names: tuple[str, ...]
    gpu_util_mean_pct: float | None
    gpu_util_p90_pct: float | None
    gpu_memory_headroom_fraction: float | None
    gpu_used_by_target: bool | None
    cpu: CpuFeatures | None
    cpu_util_mean_pct: float | None
    target_cpu_pct_mean: float | None  # percent of one core
    target_core_fraction: float | None  # target CPU / (100 × logical cores)
    # energy
    energy_per_step_j: float | None
    energy_per_sample_j: float | None
    energy_per_token_j: float | None
    samples_per_step: float | None
    batch_sweep: tuple[SweepPoint, ...]
    energy_per_sample_slope: float | None  # d log(J/sample) / d log(batch) across the sweep
    energy_per_sample_trend: str | None  # falling | flat | rising
    ab_history: tuple[AbPoint, ...]
    # layers
    layer_method: str | None
    sampled_time_s: float | None
    linear_share_of_model: float | None
    linear_share: float | None
    attention_share_of_model: float | None
    attention_share: float | None
    mlp_share_of_model: float | None
    mlp_share: float | None
    model_share: float | None
    top_layers: tuple[LayerShare, ...]
    outside_shares: dict[str, float] | None
    outside_model_share: float | None
    linear_params_median: float | None  # median parameter count of the Linear layers
    linear_params_source: str | None
    # model
    model_key: str | None
    model_class: str | None
    model_params: int | None
    flops_per_forward: int | None
    dtype: str | None
    device: str | None
    is_training: bool | None
    training_evidence: str | None
    # a torch.distributed job: profiler.ranks.per_rank (per-rank table, straggler), None otherwise
    ranks: dict | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    # share of the Linear-like time spent in GPT-2's Conv1D (which transformers' torchao
    # integration cannot quantize in a Hugging Face folder)
    conv1d_share_of_linear: float | None = None
    # the model file or folder, where the session knows it (optimize sessions record it; under
    # `wattlens run` the agent reports the folder a Hugging Face model was loaded from)
    model_path: str | None = None
    model_kind: str | None = None  # hf-folder | torch-module-file
    model_path_source: str | None = None  # where model_path came from, as evidence names it
    optimize_results: tuple[OptimizeOutcome, ...] = ()
    # the user's own text, given to `wattlens advise` (the rules put it in their commands)
    calibration_text: str | None = None
    heal_text: str | None = None
    # the model's repeated blocks (decoder/encoder layers) and where the count comes from
    n_blocks: int | None = None
    n_blocks_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def others_core_fraction(self) -> float | None:
        """Share of all cores kept busy by *other* processes: machine busy − target busy (≥ 0);
        None when either was not measured. High means contention, not idle cores."""
        if self.cpu_util_mean_pct is None or self.target_core_fraction is None:
            return None
        return max(0.0, self.cpu_util_mean_pct / 100.0 - self.target_core_fraction)

    @property
    def cpu_inference(self) -> bool | None:
        """True when the evidence says the model runs on the CPU; None when it cannot tell."""
        if self.device is not None:
            return self.device.startswith("cpu")
        if not self.gpus:
            return True  # no GPU was measured: whatever ran, ran on the CPU
        if self.gpu_used_by_target is not None:
            return not self.gpu_used_by_target
        return None


# --------------------------------------------------------------------------- helpers


def _series_mean(series: Mapping[str, tuple[np.ndarray, np.ndarray]], key: str) -> float | None:
    s = series.get(key)
    return float(np.mean(s[1])) if s is not None and len(s[1]) else None


def _series_p(series: Mapping, key: str, q: float) -> float | None:
    s = series.get(key)
    return float(np.percentile(s[1], q)) if s is not None and len(s[1]) else None


def _series_max(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    return float(np.max(s[1])) if s is not None and len(s[1]) else None


def _series_last(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    return float(s[1][-1]) if s is not None and len(s[1]) else None


def _mean_power(series: Mapping, energy_key: str) -> float | None:
    s = series.get(energy_key)
    if s is None or len(s[0]) < 2 or s[0][-1] <= s[0][0]:
        return None
    return figures.mean_power_w(float(s[1][-1] - s[1][0]), (s[0][-1] - s[0][0]) / 1e9)


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str | None, set[str]]:
    """(model name, all flags) of this host's CPU; (None, empty) when unreadable."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _quantized_engines() -> tuple[str, ...] | None:
    torch = sys.modules.get("torch")  # never import torch here: only read it when already loaded
    if torch is None:
        return None
    try:
        return tuple(str(e) for e in torch.backends.quantized.supported_engines)
    except Exception:  # noqa: BLE001 - a torch without quantized support
        return None


def _cpu_features(session: dict, reasons: dict[str, str], recorded_here: bool) -> CpuFeatures | None:
    hw = session.get("hardware") or {}
    cpu_sources = [s for s in session.get("sources", []) if s["kind"] == "cpu"]
    model_name = next((s["details"].get("model_name") for s in cpu_sources
                       if s.get("details", {}).get("model_name")), None)
    flags: set[str] | None = None
    flags_source = None
    if hw.get("cpu_flags"):
        flags, flags_source = set(hw["cpu_flags"]), "session hardware record"
    elif recorded_here:
        name_here, flags_here = read_cpuinfo()
        model_name = model_name or name_here
        if flags_here:
            flags, flags_source = flags_here, "/proc/cpuinfo of this host (the session's host)"
    if flags is None:
        reasons["cpu.flags"] = ("the session was recorded on another host and stored no CPU flags"
                                if not recorded_here else "/proc/cpuinfo has no flags here")
    logical = hw.get("cpu_logical")
    if model_name is None and logical is None and flags is None and not cpu_sources:
        reasons["cpu"] = "the session has no CPU source and no hardware record"
        return None
    relevant = tuple(sorted(f for f in (flags or ()) if f in RELEVANT_CPU_FLAGS)) if flags is not None else None
    return CpuFeatures(
        model_name=model_name,
        logical_cores=int(logical) if logical else None,
        flags=relevant,
        flags_source=flags_source,
        int8_dot_product=None if flags is None else any(f in flags for f in INT8_DOT_FLAGS),
        amx=None if flags is None else any(f.startswith("amx") for f in flags),
        quantized_engines=_quantized_engines() if recorded_here else None,
    )


def _gpu_features(session: dict, series: Mapping) -> tuple[GpuFeatures, ...]:
    out = []
    for s in session.get("sources", []):
        if s["kind"] != "gpu":
            continue
        sid, details = s["id"], s.get("details") or {}
        total = details.get("memory_total_bytes")
        used_max = _series_max(series, f"{sid}/mem_used_bytes")
        headroom = (1.0 - used_max / total) if total and used_max is not None else None
        out.append(GpuFeatures(
            source_id=sid, name=details.get("name") or s.get("label") or sid,
            memory_total_bytes=float(total) if total else None, memory_used_max_bytes=used_max,
            memory_headroom_fraction=headroom,
            util_mean_pct=_series_mean(series, f"{sid}/util_pct"),
            util_p90_pct=_series_p(series, f"{sid}/util_pct", 90),
            target_energy_j=_series_last(series, f"target/{sid}/energy_j"),
            mean_power_w=_mean_power(series, f"{sid}/energy_j"),
            idle_power_w=_series_last(series, f"{sid}/idle_power_w"),
        ))
    return tuple(out)


def _model_event(events: Sequence[EventRecord]) -> dict | None:
    """The agent's description of the main model: an event carrying the agent's ``model``
    message, or the agent link's hello info (``{"models": [...], ...}``, see profiler/agentlink.py)."""
    candidates = []
    for e in events:
        if not isinstance(e.data, dict):
            continue
        found = [e.data] + [m for m in e.data.get("models") or [] if isinstance(m, dict)]
        candidates += [d for d in found if ("dtype" in d or "modules" in d) and ("class" in d or "params" in d)]
    if not candidates:
        return None
    main = [d for d in candidates if d.get("main")]
    return (main or candidates)[-1]


def _block_count(model_info: dict | None, layers: Sequence[LayerCost], model_path: str | None
                 ) -> tuple[int | None, str | None]:
    """(number of repeated blocks, where it was read): the agent's module table, else its
    per-instance layer rows, else the model folder's config.json."""
    modules = (model_info or {}).get("modules")
    if isinstance(modules, list):
        n = count_blocks(str(m.get("path", "")) for m in modules if isinstance(m, dict))
        if n:
            return n, "agent module table"
    n = count_blocks(r.path for r in layers if r.granularity == "instance")
    if n:
        return n, "agent layer timing"
    n = config_blocks(model_path)
    if n:
        return n, f"{model_path}/config.json"
    return None, None


def _flops_event(events: Sequence[EventRecord]) -> int | None:
    for e in reversed(events):
        v = e.data.get("flops_per_forward") if isinstance(e.data, dict) else None
        if isinstance(v, int | float) and v > 0:
            return int(v)
    return None


def _normalise_dtype(dtype: str | None) -> str | None:
    if not dtype:
        return None
    return str(dtype).removeprefix("torch.")


def category_of(path: str, sep: str, classes: Mapping[str, str] | None = None) -> str:
    """attention | mlp | other: the first attention/MLP module on the path, root first.

    Root first matters: ``BertAttention/BertSelfOutput`` is attention, ``BertLayer/BertOutput``
    is the MLP's second half; walking from the leaf would read the latter's ``output`` first.
    For instance paths (``encoder.layer.0.output.dense``) ``classes`` maps each prefix to its
    module class, and both the attribute name and the class name are read at each depth.
    """
    parts = [p for p in path.split(sep) if p]
    for depth in range(len(parts)):
        names = [parts[depth]]
        if classes:
            cls = classes.get(sep.join(parts[:depth + 1]))
            if cls:
                names.append(cls)
        for part in names:
            if _ATTN_WORD.search(part) or part.endswith("SelfOutput"):
                return "attention"
        for part in names:
            if _MLP_WORD.search(part):
                return "mlp"
            if depth >= 2 and (part == "output" or (part.endswith("Output") and part != "ModelOutput")):
                return "mlp"  # BertOutput / layer.N.output: the second FFN projection
    return "other"


def _self_times(rows: Sequence[LayerCost], sep: str) -> dict[str, tuple[float, int | None, str]]:
    """path → (self time s, params, granularity), summed over windows. A row without a self time
    gets inclusive time minus its direct children's inclusive time."""
    incl: dict[str, float] = defaultdict(float)
    self_t: dict[str, float] = defaultdict(float)
    missing: set[str] = set()
    params: dict[str, int | None] = {}
    gran: dict[str, str] = {}
    for r in rows:
        incl[r.path] += r.time_s
        if r.self_time_s is None:
            missing.add(r.path)
        else:
            self_t[r.path] += r.self_time_s
        if r.params is not None:
            params[r.path] = r.params
        gran[r.path] = r.granularity
    for path in missing:
        if gran[path] == "bucket":
            self_t[path] = incl[path]
            continue
        prefix = path + sep if path else ""
        children = [p for p in incl if p != path and p.startswith(prefix) and gran[p] != "bucket"
                    and sep not in p[len(prefix):]]
        self_t[path] = max(0.0, incl[path] - sum(incl[c] for c in children))
    return {p: (self_t[p], params.get(p), gran[p]) for p in incl}


def _layer_features(layers: Sequence[LayerCost], model_info: dict | None, reasons: dict[str, str]
                    ) -> dict[str, Any]:
    empty = {k: None for k in ("layer_method", "sampled_time_s", "linear_share_of_model", "linear_share",
                               "attention_share_of_model", "attention_share", "mlp_share_of_model",
                               "mlp_share", "model_share", "outside_shares", "outside_model_share",
                               "linear_params_median", "linear_params_source",
                               "conv1d_share_of_linear")}
    empty["top_layers"] = ()
    if not layers:
        reasons["layers"] = ("no layer costs were recorded (attach without --no-stacks, or run "
                             "under `wattlens run` for the agent's per-layer timing)")
        return empty
    methods = {r.method for r in layers}
    method = ("agent-timing" if "agent-timing" in methods
              else "stack-sampling" if "stack-sampling" in methods else sorted(methods)[0])
    # the backward's rows by module class are an estimate with its own label, from the same
    # stack-sampled session: they hold the backward bucket's time
    rows = [r for r in layers if r.method == method
            or (method == "stack-sampling" and r.method == backward_map.METHOD)]
    instance = any(r.granularity == "instance" for r in rows)
    sep = "." if instance else "/"
    times = _self_times(rows, sep)
    total = sum(t for t, _, _ in times.values())
    if total <= 0:
        reasons["layers"] = "the layer rows hold no sampled time"
        return empty
    classes: dict[str, str] = {}
    if instance and model_info and isinstance(model_info.get("modules"), list):
        classes = {m.get("path", ""): m.get("class", "") for m in model_info["modules"] if isinstance(m, dict)}
    buckets: dict[str, float] = defaultdict(float)
    cat_time: dict[str, float] = defaultdict(float)
    linear_time = 0.0
    conv1d_time = 0.0
    linear_known = not instance or bool(classes)
    model_time = 0.0
    shares = []
    linear_params: list[int] = []
    for path, (t, params, gran) in times.items():
        if gran == "bucket":
            # a bucket's named parts (backward/MmBackward0, optimizer/_fused_adamw) hold its
            # self time: they count toward the bucket
            buckets[path.split("/", 1)[0]] += t
            continue
        if path.startswith("@"):  # a second root (loss function ...): not the model
            buckets["outside modules"] += t
            continue
        model_time += t
        cat = category_of(path, sep, classes)
        cat_time[cat] += t
        leaf_cls = path.split(sep)[-1] if not instance else classes.get(path)
        is_linear = bool(_LINEAR_CLASS.search(leaf_cls)) if leaf_cls else None
        if is_linear:
            linear_time += t
            if _CONV1D_CLASS.search(leaf_cls):
                conv1d_time += t
            if params:
                linear_params.append(params)
        shares.append(LayerShare(path, cat, is_linear, t, t / total, params))
    if instance and not classes:
        reasons["linear_share"] = "the agent's module table (class names) is not stored with this session"
    linear_src = None
    if not linear_params and classes and model_info:
        linear_params = [int(m["params"]) for m in model_info["modules"]
                         if isinstance(m, dict) and _LINEAR_CLASS.search(m.get("class", ""))
                         and m.get("params")]
        linear_src = "agent module table"
    elif linear_params:
        linear_src = f"{method} rows"
    if not linear_params:
        reasons["linear_params_median"] = ("no parameter counts for the Linear layers (stack sampling "
                                           "sees classes, not shapes; the agent reports them)")

    def frac(x: float, of: float) -> float | None:
        return x / of if of > 0 else None

    outside = {b: buckets[b] / total for b in buckets}
    top = tuple(sorted(shares, key=lambda s: -s.self_time_s)[:10])
    return {
        "layer_method": method,
        "sampled_time_s": total,
        "linear_share_of_model": frac(linear_time, model_time) if linear_known else None,
        "linear_share": linear_time / total if linear_known else None,
        "attention_share_of_model": frac(cat_time["attention"], model_time),
        "attention_share": cat_time["attention"] / total,
        "mlp_share_of_model": frac(cat_time["mlp"], model_time),
        "mlp_share": cat_time["mlp"] / total,
        "model_share": model_time / total,
        "top_layers": top,
        "outside_shares": outside,
        "outside_model_share": sum(v for k, v in outside.items() if k in OUTSIDE_BUCKETS),
        "linear_params_median": float(np.median(linear_params)) if linear_params else None,
        "linear_params_source": linear_src,
        "conv1d_share_of_linear": (conv1d_time / linear_time if linear_known and linear_time > 0 else None),
    }


def _training(layers: Sequence[LayerCost], model_info: dict | None, events: Sequence[EventRecord]
              ) -> tuple[bool | None, str | None]:
    back = sum(r.time_s for r in layers if r.phase == "backward" or r.path in TRAINING_BUCKETS)
    if back > 0:
        where = sorted({r.path for r in layers if r.path in TRAINING_BUCKETS} |
                       ({"backward-phase rows"} if any(r.phase == "backward" for r in layers) else set()))
        return True, f"{back:.3g} s of sampled time in {', '.join(where)}"
    for e in events:
        if isinstance(e.data, dict) and isinstance(e.data.get("training"), bool):
            return e.data["training"], f"the agent reported training={e.data['training']}"
    model_rows = [r for r in layers if r.granularity != "bucket"]
    n = sum(r.n_samples or 0 for r in model_rows)
    if model_rows and (n >= 20 or any(r.method == "agent-timing" for r in model_rows)):
        what = f"{n} stack samples" if n else "agent timing"
        return False, f"no backward or optimizer time in {what} of the model: inference"
    return None, None


def _sweep_points(rows: Iterable[dict]) -> tuple[SweepPoint, ...]:
    out = []
    for r in rows:
        if r.get("batch_size") is None:
            continue
        payload = r.get("payload") or {}
        status = payload.get("status") or ("ok" if r.get("energy_per_sample_j") is not None else "unknown")
        out.append(SweepPoint(int(r["batch_size"]), r.get("energy_per_sample_j"),
                              r.get("throughput_per_s"), str(status), r.get("model_key") or ""))
    return tuple(sorted(out, key=lambda p: p.batch_size))


def ab_points(rows: Iterable[dict]) -> tuple[AbPoint, ...]:
    return tuple(AbPoint(r["action"], float(r["saving_fraction"]), r.get("params"), r.get("flops"),
                         r.get("model_key") or "")
                 for r in rows if r.get("action") and r.get("saving_fraction") is not None
                 and math.isfinite(r["saving_fraction"]))


def _trend(points: Sequence[SweepPoint]) -> tuple[float | None, str | None]:
    ok = [(p.batch_size, p.energy_per_sample_j) for p in points
          if p.status == "ok" and p.energy_per_sample_j and p.energy_per_sample_j > 0]
    if len({b for b, _ in ok}) < 2:
        return None, None
    x = np.log([b for b, _ in ok])
    y = np.log([e for _, e in ok])
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, "falling" if slope < -0.05 else "rising" if slope > 0.05 else "flat"


def model_kind(path: str | None) -> tuple[str | None, bool | None]:
    """(hf-folder | torch-module-file | None, has tokenizer files) of a model path on this host."""
    if not path:
        return None, None
    p = Path(path)
    try:
        if p.is_dir() and (p / "config.json").is_file():
            return "hf-folder", any((p / name).is_file() for name in TOKENIZER_MARKERS)
        if p.is_file():
            return "torch-module-file", False
    except OSError:
        pass
    return None, None


def _pair(v: Any) -> tuple[float, float] | None:
    return (float(v[0]), float(v[1])) if isinstance(v, list | tuple) and len(v) == 2 else None


def optimize_outcomes(store, session_id: int) -> tuple[OptimizeOutcome, ...]:
    """The stored optimize results recorded by ``session_id`` or applied from its advice."""
    rows = {r["id"]: r for r in [*store.actions(session_id), *store.actions(source_session_id=session_id)]}
    out = []
    for r in rows.values():
        params, result = r.get("params") or {}, r.get("result") or {}
        verification = result.get("verification") or {}
        fidelity = result.get("fidelity") or verification.get("fidelity") or {}
        path = params.get("model")
        kind, tokenizer = model_kind(path)
        mql = params.get("max_quality_loss")
        out.append(OptimizeOutcome(
            action_id=int(r["id"]), spec=str(params.get("actions") or r.get("kind") or ""),
            status=str(r.get("status") or ""), model_path=path, model_kind=kind, has_tokenizer=tokenizer,
            max_quality_loss=float(mql) if isinstance(mql, int | float) else None,
            quality_loss=fidelity.get("quality_loss"), quality_metric=fidelity.get("quality_metric"),
            fidelity_mode=fidelity.get("mode"), kl_base_candidate=fidelity.get("kl_base_candidate"),
            saving_fraction=verification.get("saving_fraction"),
            saving_interval=_pair(verification.get("saving_interval")),
            energy_method=(verification.get("baseline") or {}).get("energy_method"),
            healing=result.get("healing")))
    return tuple(out)


# --------------------------------------------------------------------------- the entry point


def extract_features(store, session_id: int, *, calibration_text: str | None = None,
                     heal_text: str | None = None) -> SessionFeatures:
    """Read one stored session (and the stored measurements that concern it) into features.

    ``calibration_text`` / ``heal_text`` are the user's own text files given to ``wattlens
    advise``; rules that need text put them into their commands and stay silent without.

    Raises :class:`~wattlens.profiler.errors.SessionNotFoundError` for an unknown id.
    """
    session = store.session(session_id)
    reasons: dict[str, str] = {}
    series = store.series_data(session_id)
    layers = store.layer_costs(session_id)
    steps = store.steps(session_id)
    events = store.events(session_id)
    recorded_here = session.get("host") == socket.gethostname()

    gpus = _gpu_features(session, series)
    if not gpus:
        reasons["gpu"] = "no GPU source was measured in this session"
    utils = [g.util_mean_pct for g in gpus if g.util_mean_pct is not None]
    all_util = np.concatenate([series[f"{g.source_id}/util_pct"][1] for g in gpus
                               if f"{g.source_id}/util_pct" in series and len(series[f"{g.source_id}/util_pct"][1])]
                              ) if utils else np.array([])
    headrooms = [g.memory_headroom_fraction for g in gpus if g.memory_headroom_fraction is not None]
    if gpus and not headrooms:
        reasons["gpu_memory_headroom_fraction"] = "GPU memory total or used was not recorded"
    target_gpu = [g.target_energy_j for g in gpus if g.target_energy_j is not None]

    cpu = _cpu_features(session, reasons, recorded_here)
    cpu_util = next((v for s in session.get("sources", []) if s["kind"] == "cpu"
                     for v in [_series_mean(series, f"{s['id']}/util_pct")] if v is not None), None)
    target_cpu = _series_mean(series, "target/cpu_pct")
    if target_cpu is None:
        reasons["target_cpu_pct_mean"] = "the session followed no target process"
    logical = cpu.logical_cores if cpu else None
    core_fraction = target_cpu / (100.0 * logical) if target_cpu is not None and logical else None

    # the step figures of the summary (show, reports, app): steps without the agent's figure get
    # the target's energy between their ends
    st = step_stats(figures.fill_step_energy(steps, target_energy_between(series))) if steps else None
    if st is None:
        reasons["steps"] = "no training/inference steps were reported (the agent reports them under `wattlens run`)"
    elif st.get("reason"):
        reasons["steps"] = st["reason"]
    sample_counts = [s.samples for s in steps if s.samples]
    samples_per_step = float(np.median(sample_counts)) if sample_counts else None
    if samples_per_step is None:
        reasons["samples_per_step"] = "steps did not report their number of samples"

    model_info = _model_event(events)
    settings = session.get("settings") or {}
    model_key = settings.get("model_key") or (model_info or {}).get("model_key")
    sweep_rows = [r for r in store.measurements("batch-sweep")
                  if r.get("session_id") == session_id or (model_key and r.get("model_key") == model_key)]
    sweep = _sweep_points(sweep_rows)
    if not sweep:
        reasons["batch_sweep"] = "no batch-size sweep of this session's model is stored"
    slope, trend = _trend(sweep)
    ab = ab_points(store.measurements("ab"))
    if not ab:
        reasons["ab_history"] = "no A/B results are stored yet (run `wattlens optimize`)"

    layer = _layer_features(layers, model_info, reasons)
    is_training, training_evidence = _training(layers, model_info, events)
    if is_training is None:
        reasons["is_training"] = "no layer or agent evidence says whether the model trains or infers"

    model_params = (model_info or {}).get("params") or None
    if model_params is None:
        roots = [r.params for r in layers if r.params and r.granularity != "bucket"]
        model_params = max(roots) if roots else None
    if model_params is None:
        reasons["model_params"] = "the model's parameter count was not reported (the agent reports it)"
    dtype = _normalise_dtype((model_info or {}).get("dtype"))
    if dtype is None:
        reasons["dtype"] = "the model's dtype was not reported (the agent reports it under `wattlens run`)"
    device = (model_info or {}).get("device")
    flops = _flops_event(events)
    if flops is None:
        reasons["flops_per_forward"] = next(
            (e.message for e in reversed(events) if e.kind == "flops-unavailable"),
            "the agent reported no FLOP count (it does so under `wattlens run`)")

    # optimize sessions name their model; under `wattlens run` the agent reports the folder a
    # Hugging Face model was loaded from
    model_path = settings.get("model") or (model_info or {}).get("source")
    model_path_source = ("optimize session settings" if settings.get("model") else
                         "agent: the folder the model was loaded from" if model_path else None)
    kind, _ = model_kind(model_path)
    n_blocks, n_blocks_source = _block_count(model_info, layers, model_path)
    if n_blocks is None:
        reasons["n_blocks"] = ("the session does not show how many blocks the model has (the agent's "
                               "module table under `wattlens run`, or a model folder's config.json, does)")
    outcomes = optimize_outcomes(store, session_id)

    ranks = session_ranks(steps, events, series)
    if ranks is None:
        reasons["ranks"] = ("no step carries a torch.distributed rank (run the job under `wattlens run "
                            "-- torchrun ...`)")
    return SessionFeatures(
        session_id=session_id, name=session.get("name"), status=session.get("status"),
        duration_s=session.get("duration_s"), recorded_here=recorded_here,
        gpus=gpus, gpu_names=tuple(g.name for g in gpus),
        gpu_util_mean_pct=float(np.mean(utils)) if utils else None,
        gpu_util_p90_pct=float(np.percentile(all_util, 90)) if len(all_util) else None,
        gpu_memory_headroom_fraction=min(headrooms) if headrooms else None,
        gpu_used_by_target=(any(v > 0 for v in target_gpu) if target_gpu else None),
        cpu=cpu, cpu_util_mean_pct=cpu_util, target_cpu_pct_mean=target_cpu,
        target_core_fraction=core_fraction,
        energy_per_step_j=st.get("energy_per_step_j") if st else None,
        energy_per_sample_j=st.get("energy_per_sample_j") if st else None,
        energy_per_token_j=st.get("energy_per_token_j") if st else None,
        samples_per_step=samples_per_step,
        batch_sweep=sweep, energy_per_sample_slope=slope, energy_per_sample_trend=trend,
        ab_history=ab,
        **layer,
        model_key=model_key, model_class=(model_info or {}).get("class"),
        model_params=int(model_params) if model_params else None, flops_per_forward=flops,
        dtype=dtype, device=device, is_training=is_training, training_evidence=training_evidence,
        ranks=ranks, reasons=reasons, model_path=model_path, model_kind=kind, model_path_source=model_path_source,
        optimize_results=outcomes, calibration_text=calibration_text, heal_text=heal_text,
        n_blocks=n_blocks, n_blocks_source=n_blocks_source,
    )
