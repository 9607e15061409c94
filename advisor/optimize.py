"""``wattlens optimize``: load, copy, apply, measure A/B, check quality, save — never in place.

The order matters for the guarantees:

1. everything the user typed is checked first (actions, output folder, eval text), and for a
   Hugging Face model every action must be expressible for plain transformers
   (:meth:`Action.check_expressible`) — bad input fails in a second with one line, before any
   heavy work;
2. actions run on deep copies — the loaded input model object is never changed, and the user's
   files are only ever read;
3. the output is written into a temp folder beside ``out_dir`` and reloaded the way its user will
   load it (plain ``from_pretrained`` — also checked in a fresh interpreter that never imports
   wattlens — or :func:`load_optimized` for a module file). The claim, fidelity and A/B checks
   measure *that* reloaded model, so what is verified is what ships;
4. a candidate whose quality loss exceeds ``max_quality_loss`` is refused: it is still measured
   (what it would save is what a healing run can keep: the heal rule's evidence), stored as
   refused, and nothing is written (the same ``--out`` then takes a run with a larger limit or
   another action); a failure leaves nothing written either.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattlens.advisor.actions import Action, ClaimCheck, parse_actions
from wattlens.advisor.actions.quantize_int8 import torchao_version
from wattlens.advisor.fidelity import Fidelity, eval_windows, measure_fidelity, read_eval_tokens
from wattlens.advisor.heal import heal, payback_samples
from wattlens.advisor.modelio import (
    LoadedModel,
    build_manifest,
    check_out_dir,
    forward,
    load_model,
    load_optimized,
    model_device,
    random_inputs,
    staged_dir,
    tensor_footprint,
    write_manifest,
    write_model_files,
)
from wattlens.advisor.plainload import fresh_process_outputs
from wattlens.advisor.verify import (
    PeakMemory,
    Verification,
    _default_meter,
    ab_verify,
    measure_round,
    required_window_s,
    t_interval,
)
from wattlens.profiler.errors import ActionError, BadInputError

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class AppliedAction:
    spec: str
    description: str
    replay: str
    details: dict[str, Any]
    claim: ClaimCheck


@dataclass(frozen=True)
class SweepRow:
    """One batch size of a sweep. ``status``: ok | oom | memory-guard | skipped (``reason`` says why)."""

    batch_size: int
    status: str
    energy_per_sample_j: float | None = None
    energy_per_sample_interval_j: tuple[float, float] | None = None
    energy_method: str | None = None
    throughput_samples_per_s: float | None = None
    latency_per_batch_s: float | None = None
    peak_mem_bytes: int | None = None
    mem_method: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OptimizeResult:
    """Everything ``optimize`` learned; ``to_dict()`` is JSON-serialisable."""

    model_path: str
    out_dir: str | None
    actions: tuple[AppliedAction, ...]
    #: None when the quality check refused the copy: no A/B was run (``refusal`` says why)
    verification: Verification | None
    max_quality_loss: float | None
    quality_ok: bool
    #: elements and in-memory bytes of both models; ``base_weights_bytes`` / ``saved_weights_bytes``
    #: the weight files read and written, ``weights_quantized_on_load`` whether the written file
    #: holds float weights that :func:`load_optimized` quantizes
    sizes: dict[str, int | bool | None]
    manifest_path: str | None = None
    reload_max_abs_diff: float | None = None
    batch_sweep: tuple[SweepRow, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: distillation healing: steps, held-out KL before/after, energy, payback in samples
    healing: dict[str, Any] | None = None
    #: the quality check's refusal (loss, limit, by how much, metric, text); None when not refused
    refusal: dict[str, Any] | None = None
    #: the fidelity of the copy (also in ``verification`` when one was run)
    fidelity: Fidelity | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class QualityLossError(ActionError):
    """The candidate lost more quality than allowed: refused, nothing written. ``result`` has the
    numbers (``result.refusal``, the fidelity, the sizes, the A/B)."""

    def __init__(self, message: str, *, hint: str | None = None, result: OptimizeResult):
        super().__init__(message, hint=hint)
        self.result = result


def weights_file_bytes(path: Path) -> int | None:
    """Bytes of the weight files of a model: the file itself for a torch module file, the
    ``*.safetensors`` / ``*.bin`` files of a folder (None when none is readable)."""
    try:
        if path.is_file():
            return path.stat().st_size
        # the weights transformers loads: safetensors where there are any (a folder may ship a
        # pytorch_model.bin beside them, and training_args.bin is no weights)
        files = [p for p in path.iterdir() if p.is_file() and p.suffix == ".safetensors"]
        files = files or [p for p in path.iterdir()
                          if p.is_file() and p.suffix == ".bin" and p.name != "training_args.bin"]
        return sum(p.stat().st_size for p in files) if files else None
    except OSError:
        return None


def _noop(stage: str, fraction: float) -> None:
    return None


def _apply_all(model: nn.Module, actions: list[Action], progress: Progress
               ) -> tuple[nn.Module, list[AppliedAction]]:
    """Apply the float actions (all but quantization) in order; returns (model, records)."""
    current = model
    applied: list[AppliedAction] = []
    for i, action in enumerate(actions):
        result = action.apply_detailed(current)
        claim = action.check_claim(current, result.model)
        if not claim.holds:
            raise ActionError(f"{action.spec} did not do what it claims: {claim.observed}",
                              hint="the input model is untouched; report this model type")
        applied.append(AppliedAction(action.spec, action.description, action.replay,
                                     result.details, claim))
        current = result.model
        progress("apply", (i + 1) / len(actions))
    return current, applied


def _record(a: AppliedAction) -> dict[str, Any]:
    return {"spec": a.spec, "replay": a.replay, "details": a.details, "claim": a.claim.to_dict(),
            "description": a.description}


def _reload_shipped(folder: Path, loaded: LoadedModel) -> nn.Module:
    """The artifact as its user will load it: plain ``from_pretrained`` for a transformers folder,
    :func:`load_optimized` onto a fresh copy of the input module otherwise."""
    if loaded.kind == "torch-module-file":
        fresh = copy.deepcopy(loaded.model)
        return load_optimized(folder, fresh)
    return load_optimized(folder)


def _plain_transformers_check(folder: Path, artifact: nn.Module, inputs: Any) -> dict[str, Any]:
    """Load ``folder`` with plain transformers in a fresh interpreter and compare its outputs with
    the artifact's (the one measured); refuse to ship when they differ or wattlens was imported."""
    from wattlens.advisor.modelio import _auto_class

    auto, _ = _auto_class(artifact.config)
    theirs, info = fresh_process_outputs(folder, auto.__name__, dict(inputs.kwargs))
    ours = forward(artifact, inputs).float()
    diff = math.inf if ours.shape != theirs.shape else float((ours - theirs).abs().max())
    scale = max(1.0, float(ours.abs().max()))
    if info["wattlens_imported"]:
        raise ActionError(f"loading the output imported {info['wattlens_imported'][0]}",
                          hint="nothing was written; report this model type")
    if not diff <= 1e-4 * scale:
        raise ActionError(
            f"plain transformers in a fresh process computes other outputs than the verified model "
            f"(max difference {diff:.3g})", hint="nothing was written; report this model type")
    return {"auto_class": auto.__name__, "max_abs_diff": diff, "wattlens_imported": False}


def _with_tokenizer(loaded: LoadedModel, folder: Path) -> LoadedModel:
    """``loaded`` with the tokenizer of ``folder`` (``--tokenizer``: module files only)."""
    from wattlens.advisor.modelio import _load_tokenizer

    if loaded.kind != "torch-module-file":
        raise BadInputError("--tokenizer is for a torch module file; a model folder uses its own tokenizer",
                            hint="drop --tokenizer")
    tok, reason = _load_tokenizer(folder.expanduser())
    if tok is None:
        raise BadInputError(f"--tokenizer {folder}: {reason}",
                            hint="give the Hugging Face folder the module was exported from")
    return dataclasses.replace(loaded, tokenizer=tok, tokenizer_reason=None)


def refusal_record(fidelity: Fidelity, max_quality_loss: float) -> dict[str, Any]:
    """The quality check's refusal in numbers and words: the loss, the limit, by how much it is
    exceeded, and what to do."""
    loss = fidelity.quality_loss
    return {
        "quality_loss": loss, "max_quality_loss": max_quality_loss, "exceeded_by": loss - max_quality_loss,
        "quality_metric": fidelity.quality_metric,
        "text": (f"refused: quality loss {loss:.4g} ({fidelity.quality_metric}) exceeds --max-quality-loss "
                 f"{max_quality_loss:g} by {loss - max_quality_loss:.4g}"),
        "hint": (f"raise --max-quality-loss to at least {_ceil_sig(loss)} to accept this loss, or try a milder "
                 "or another action" if loss <= 1 else
                 "no --max-quality-loss (at most 1) accepts this loss: try a milder or another action"),
    }


def _ceil_sig(x: float, digits: int = 3) -> str:
    """``x`` rounded up to ``digits`` significant digits: a limit given as printed still accepts it."""
    if x <= 0 or not math.isfinite(x):
        return f"{x:g}"
    scale = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / scale - 1e-9) * scale:.12g}"


def optimize(
    model: str | Path,
    actions: str | Sequence[str],
    out_dir: str | Path,
    *,
    max_quality_loss: float | None = None,
    eval_text: str | Path | None = None,
    batch_sizes: Sequence[int] | None = None,
    batch_size: int = 4,
    seq_len: int = 64,
    n_rounds: int = 5,
    warmup_batches: int = 2,
    min_window_s: float = 0.5,
    device: str = "cpu",
    seed: int = 0,
    meter: Any | None = None,
    progress: Progress | None = None,
    trust_pickle: bool = False,
    calibration: str | Path | None = None,
    heal_steps: int = 0,
    heal_text: str | Path | None = None,
    tokenizer: str | Path | None = None,
) -> OptimizeResult:
    """Apply ``actions`` to MODEL, verify A/B against the original, save to ``out_dir``.

    Raises :class:`BadInputError` (exit 2) for bad input, :class:`ActionError` (exit 1) when an
    action fails, :class:`QualityLossError` (exit 1) when the measured quality loss exceeds
    ``max_quality_loss``: measured, refused, nothing written. ``progress(stage, fraction)`` is called with stages
    load, apply, verify, fidelity, save, sweep, done. ``tokenizer`` (a folder with tokenizer
    files) gives a torch module file, which has none, a tokenizer for its text options.
    """
    report = progress or _noop
    parsed = parse_actions(actions)
    out = check_out_dir(out_dir, model)
    if max_quality_loss is not None and not 0 <= max_quality_loss <= 1:
        raise BadInputError(f"--max-quality-loss must be between 0 and 1, got {max_quality_loss}",
                            hint="for example --max-quality-loss 0.02 (2 %)")
    if batch_size < 1 or seq_len < 2 or n_rounds < 1:
        raise BadInputError("batch size, sequence length and rounds must be positive (seq_len ≥ 2)",
                            hint="use the defaults or larger values")
    if heal_steps and heal_text is None:
        raise BadInputError("--heal-steps needs --heal-text FILE: healing trains the pruned model on "
                            "text, and wattlens does not train on random token ids",
                            hint="give a text file in the model's language with --heal-text")
    if heal_text is not None and heal_steps < 1:
        raise BadInputError("--heal-text needs --heal-steps N (N ≥ 1)", hint="e.g. --heal-steps 50")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device {device} asked for but torch sees no CUDA GPU",
                            hint="use --device cpu")

    report("load", 0.0)
    loaded: LoadedModel = load_model(model, trust_pickle=trust_pickle)
    if tokenizer is not None:
        loaded = _with_tokenizer(loaded, Path(tokenizer))
    if loaded.is_quantized:
        raise BadInputError(f"{loaded.path} is already quantized and cannot be changed further",
                            hint="optimize the original model instead")
    eval_ids = None
    if eval_text is not None:
        eval_ids = read_eval_tokens(eval_text, loaded.tokenizer, loaded.tokenizer_reason)
    base = loaded.model.to(device)
    report("load", 1.0)

    hf = loaded.kind != "torch-module-file" and hasattr(base, "save_pretrained")
    quantization = next((a for a in parsed if a.quantizes), None)
    for action in parsed:  # before any work: nothing plain transformers would load differently
        if hf:
            action.check_expressible(base)
    calibration_inputs = None
    if calibration is not None:
        cal_ids = read_eval_tokens(calibration, loaded.tokenizer, loaded.tokenizer_reason,
                                   flag="--calibration")
        calibration_inputs = eval_windows(cal_ids, base, seq_len)
        calibration_inputs = dataclasses.replace(
            calibration_inputs,
            description=f"calibration text {calibration} ({calibration_inputs.description[11:-1]})")
    for action in parsed:
        if hasattr(action, "calibration"):
            action.calibration = calibration_inputs  # None → seeded random ids, labelled
    float_model, applied = _apply_all(base, [a for a in parsed if not a.quantizes], report)
    healing = None
    if heal_steps:
        if not loaded.is_causal_lm:
            raise BadInputError("healing distils next-token logits; this model is not a causal LM",
                                hint="drop --heal-steps for this model")
        heal_ids = read_eval_tokens(heal_text, loaded.tokenizer, loaded.tokenizer_reason, flag="--heal-text")
        if meter is None:
            meter = _default_meter()
        healing = heal(base, float_model, heal_ids, steps=heal_steps, seq_len=seq_len, meter=meter,
                       source=str(heal_text), progress=report).to_dict()
        float_model.requires_grad_(False)
    quant_details: dict[str, Any] = {}
    if quantization is not None:  # in process for its details (e.g. calibrated scales)
        quant_details = quantization.apply_detailed(float_model).details

    inputs = random_inputs(base, batch_size, seq_len, seed=seed)
    fid_inputs = eval_windows(eval_ids, base, seq_len) if eval_ids is not None else inputs
    report("save", 0.0)
    with staged_dir(out) as tmp:
        layout = write_model_files(tmp, source=loaded, float_model=float_model,
                                   quantization=quantization)
        if quantization is not None:  # what was quantized is checked on what ships
            applied.append(AppliedAction(quantization.spec, quantization.description,
                                         quantization.replay, quant_details,
                                         ClaimCheck("checked on the reloaded model below", True, "")))
        records = loaded.prior_actions + [_record(a) for a in applied]
        write_manifest(tmp, {"format": "wattlens-optimization", "version": 2, "layout": layout,
                             "base": loaded.base, "actions": records})
        artifact = _reload_shipped(tmp, loaded).to(device)
        if quantization is not None:
            claim = quantization.check_claim(float_model, artifact)
            details = {**quant_details, "backend": f"torchao {torchao_version()} via "
                       + ("transformers TorchAoConfig" if hf else "quantize_ on load")}
            applied[-1] = AppliedAction(quantization.spec, quantization.description,
                                        quantization.replay, details, claim)
            if not claim.holds:
                raise ActionError(f"{quantization.spec} did not do what it claims: {claim.observed}",
                                  hint="nothing was written; report this model type")
            records = loaded.prior_actions + [_record(a) for a in applied]
        report("save", 0.5)
        plain = _plain_transformers_check(tmp, artifact, inputs) if layout == "transformers" else None

        report("fidelity", 0.0)
        fidelity = measure_fidelity(base, artifact, fid_inputs, is_causal_lm=loaded.is_causal_lm,
                                    eval_ids=eval_ids,
                                    eval_source=str(eval_text) if eval_text is not None else None)
        report("fidelity", 1.0)
        quality_ok = max_quality_loss is None or fidelity.quality_loss <= max_quality_loss
        refusal = None if quality_ok else refusal_record(fidelity, max_quality_loss)
        # measured even when refused: what the change would save is what a healing run can keep
        # (the heal rule's evidence), stored with the refusal; nothing is written
        verification = ab_verify(
            base, artifact, inputs, n_rounds=n_rounds, warmup_batches=warmup_batches,
            min_window_s=min_window_s, meter=meter, fidelity=fidelity, progress=report)
        base_elems, base_bytes = tensor_footprint(base)
        cand_elems, cand_bytes = tensor_footprint(artifact)
        sizes = {"base_params": base_elems, "base_tensor_bytes": base_bytes,
                 "candidate_params": cand_elems, "candidate_tensor_bytes": cand_bytes,
                 # what the disk holds, beside what memory holds: a module file's quantization is
                 # replayed on load, so its weights file stays float (as large as the input's)
                 "base_weights_bytes": weights_file_bytes(loaded.path),
                 "saved_weights_bytes": weights_file_bytes(tmp),
                 "weights_quantized_on_load": quantization is not None and layout != "transformers"}
        if healing is not None:
            if verification is None:
                payback, why = None, "not measured"
            else:
                payback, why = payback_samples(healing["energy_j"], verification.baseline.energy_per_sample_j,
                                               verification.candidate.energy_per_sample_j)
            healing = {**healing, "payback_samples": payback, "payback_reason": why}
        result = OptimizeResult(
            model_path=str(loaded.path), out_dir=None, actions=tuple(applied),
            verification=verification, max_quality_loss=max_quality_loss, quality_ok=quality_ok,
            sizes=sizes, notes=verification.notes if verification else (), healing=healing,
            refusal=refusal, fidelity=fidelity,
        )
        if refusal is not None:  # raised in the staged block: nothing is written, so the same --out
            # takes the run again with a larger --max-quality-loss or another action
            raise QualityLossError(f"{refusal['text']}; nothing was written", hint=refusal["hint"],
                                   result=result)
        manifest = build_manifest(
            source=loaded, records=records, layout=layout, base_model=base, candidate=artifact,
            folder=tmp,
            extra={"verification": verification.to_dict() if verification else None,
                   "plain_transformers_check": plain, "healing": healing},
        )
        write_manifest(tmp, manifest)
    report("save", 1.0)
    result = dataclasses.replace(result, out_dir=str(out),
                                 manifest_path=str(out / "wattlens-optimization.json"),
                                 reload_max_abs_diff=plain["max_abs_diff"] if plain else 0.0)
    if batch_sizes:
        sweep = sweep_batch_sizes(artifact, batch_sizes, seq_len=seq_len, meter=meter, seed=seed,
                                  min_window_s=min_window_s, progress=report)
        result = dataclasses.replace(result, batch_sweep=tuple(sweep))
    report("done", 1.0)
    return result


# --------------------------------------------------------------------------- batch-size sweep


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def sweep_batch_sizes(
    model: nn.Module,
    batch_sizes: Sequence[int],
    *,
    seq_len: int = 64,
    n_rounds: int = 3,
    min_window_s: float = 0.5,
    meter: Any | None = None,
    seed: int = 0,
    mem_headroom: float = 0.8,
    progress: Progress | None = None,
) -> list[SweepRow]:
    """Energy per sample and throughput of ``model`` at each batch size, smallest first.

    Growth stops at the first batch size that runs out of memory (the rest are reported as
    skipped) and *before* one whose working memory, extrapolated linearly from the last size that
    ran, would exceed ``mem_headroom`` of the free memory: on CPU the kernel's OOM killer, not an
    exception, would be the answer, so we must not try it.
    """
    sizes = sorted(set(int(b) for b in batch_sizes))
    if not sizes or sizes[0] < 1:
        raise BadInputError(f"batch sizes must be positive integers, got {list(batch_sizes)}",
                            hint="for example --batch-sizes 1,2,4,8")
    report = progress or _noop
    if meter is None:
        meter = _default_meter()
    device = model_device(model)
    memory = PeakMemory(device)
    rows: list[SweepRow] = []
    stop_reason: str | None = None
    last: tuple[int, int | None] | None = None
    required_s = required_window_s(meter, min_window_s)
    meter.begin_window("sweep:all")
    try:
        for i, bs in enumerate(sizes):
            if stop_reason:
                rows.append(SweepRow(bs, "skipped", reason=stop_reason))
                continue
            available = _available_bytes(device)
            if last and last[1] and available is not None:
                projected = last[1] * bs / last[0]
                if projected > mem_headroom * available:
                    reason = (f"needs about {projected / 2**20:.0f} MiB (extrapolated from batch "
                              f"{last[0]}), {available / 2**20:.0f} MiB free")
                    rows.append(SweepRow(bs, "memory-guard", reason=reason))
                    stop_reason = f"larger than batch size {bs}, which would likely not fit in memory"
                    continue
            try:
                inputs = random_inputs(model, bs, seq_len, seed=seed)
                forward(model, inputs.to(device))  # warm-up at this shape
                peak = memory.probe(model, inputs)
                # every round as the A/B's (verify.measure_round): a window too short for the
                # meter is measured again with more batches, and left out when it stays unsound
                # (round 0 alone was checked, so a machine that sped up made later rounds short)
                windows, refused = [], []
                n_batches = 1
                for r in range(n_rounds):
                    got, counts, n_batches, notes = measure_round(
                        meter, r, {str(bs): model}, inputs, n_batches, required_s, label="sweep")
                    (windows if counts else refused).append(got[str(bs)])
                    if not counts:
                        refused_why = notes[-1]
            except Exception as exc:  # noqa: BLE001 - only OOM is handled; others re-raised
                if not _is_oom(exc):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(SweepRow(bs, "oom", reason=f"out of memory: {str(exc).splitlines()[0][:200]}"))
                stop_reason = f"larger than batch size {bs}, which ran out of memory"
                continue
            timed = windows or refused  # the work was timed in every round; its energy only in sound ones
            samples = sum(w.samples for w in timed)
            duration = sum(w.duration_s for w in timed)
            energies = [w.attributed_energy_j for w in windows]
            per_round = [None if e is None else e / w.samples for e, w in zip(energies, windows, strict=True)]
            energy = None if not windows or None in energies else sum(energies) / sum(w.samples for w in windows)
            interval = t_interval(per_round) if energy is not None else None
            reason = next((w.reason for w in windows if w.reason), None)
            if not windows:
                reason = f"no round could be measured soundly: {refused_why}"
            rows.append(SweepRow(
                batch_size=bs, status="ok", energy_per_sample_j=energy,
                energy_per_sample_interval_j=interval, energy_method=timed[0].attributed_method,
                throughput_samples_per_s=samples / duration,
                latency_per_batch_s=duration / (samples / bs),
                peak_mem_bytes=peak, mem_method=memory.method,
                reason=reason,
            ))
            last = (bs, peak)
            report("sweep", (i + 1) / len(sizes))
    finally:
        meter.end_window("sweep:all")
    return rows
