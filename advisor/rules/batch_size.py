"""Batch size too small: the hardware waits between small batches, and its idle power is paid
per sample. Signals: a GPU busy only part of the time with memory to spare; a CPU target using a
small share of the cores; a stored sweep whose J/sample still falls past the current batch.

With a stored sweep the regression picks the batch size (within the memory limit measured) and
predicts the saving with its leave-one-out error. Without one, a GPU's idle share gives a rule of
thumb; a CPU gets "measure first" — the saving there depends too much on the model to state.
"""

from __future__ import annotations

from wattlens.advisor.features import SessionFeatures
from wattlens.advisor.recommend import (
    PredictedSaving,
    Recommendation,
    Risk,
    measure_first,
    rule_of_thumb,
    sweep_command,
)
from wattlens.advisor.regression import fit_energy_vs_batch
from wattlens.advisor.rules._common import ev, fit_confidence, model_arg, pct

RULE = "batch-size"
NEEDS = ("GPU utilisation with memory headroom, the target's CPU use against the core count, or a "
         "stored batch-size sweep")

GPU_UTIL_LOW_PCT = 60.0
GPU_HEADROOM_MIN = 0.25
CPU_CORE_FRACTION_LOW = 0.6
#: Below this idle share of the machine the target's low core use is contention (other processes
#: held the cores), not "small batches leave the cores idle": the CPU signal says so or stays silent.
MACHINE_IDLE_MIN = 0.25


def evaluate(f: SessionFeatures) -> list[Recommendation]:
    evidence = []
    reasons = []
    gpu_signal = (f.gpus and f.gpu_util_mean_pct is not None and f.gpu_util_mean_pct < GPU_UTIL_LOW_PCT
                  and (f.gpu_memory_headroom_fraction is None
                       or f.gpu_memory_headroom_fraction >= GPU_HEADROOM_MIN)
                  and f.gpu_used_by_target is not False)
    if gpu_signal:
        src = ", ".join(g.source_id for g in f.gpus)
        evidence.append(ev("GPU utilisation, mean", f.gpu_util_mean_pct, "%", f"{src}/util_pct"))
        if f.gpu_util_p90_pct is not None:
            evidence.append(ev("GPU utilisation, 90th percentile", f.gpu_util_p90_pct, "%", f"{src}/util_pct"))
        if f.gpu_memory_headroom_fraction is not None:
            evidence.append(ev("GPU memory free at the session's peak", f.gpu_memory_headroom_fraction,
                               "fraction", f"{src}/mem_used_bytes vs memory total"))
        reasons.append(f"the GPU ran kernels only {f.gpu_util_mean_pct:.0f} % of the time"
                       + (f" with {pct(f.gpu_memory_headroom_fraction)} of its memory free"
                          if f.gpu_memory_headroom_fraction is not None else ""))
    cores = f.cpu.logical_cores if f.cpu else None
    cpu_signal = (f.cpu_inference is True and f.target_core_fraction is not None and cores
                  and cores >= 2 and f.target_core_fraction < CPU_CORE_FRACTION_LOW)
    contention_note = None
    others = f.others_core_fraction
    if cpu_signal and others is not None and 1.0 - f.cpu_util_mean_pct / 100.0 < MACHINE_IDLE_MIN:
        cpu_signal = False  # the cores were not idle: other processes held them
        contention_note = (f"CPU: the process kept {f.target_cpu_pct_mean / 100:.1f} of {cores} cores busy while "
                           f"other processes kept {pct(others)} of the machine busy (machine "
                           f"{f.cpu_util_mean_pct:.0f} % busy): that is contention, not idle cores — a larger "
                           "batch would find no idle core; measure again on a quiet machine")
    if cpu_signal:
        evidence.append(ev("target CPU use, mean", f.target_cpu_pct_mean, "% of one core", "target/cpu_pct"))
        evidence.append(ev("machine CPU use, mean", f.cpu_util_mean_pct, "% of all cores", "cpu util_pct"))
        evidence.append(ev("logical cores", cores, "cores", "session hardware record"))
        reasons.append(f"the process kept {f.target_cpu_pct_mean / 100:.1f} of {cores} cores busy: "
                       "small batches leave the other cores idle (or torch.set_num_threads limits them)")
    current = round(f.samples_per_step) if f.samples_per_step else None
    advice = fit_energy_vs_batch(f.batch_sweep, current_batch_size=current) if f.batch_sweep else None
    sweep_signal = (advice is not None and advice.ok and f.energy_per_sample_trend == "falling"
                    and (current is None or advice.best_batch_size > current))
    if advice is not None and advice.ok:
        for b, e in advice.measured:
            evidence.append(ev(f"measured energy per sample at batch {b}", e, "J/sample", "batch-size sweep"))
        if current is not None and advice.best_batch_size is not None and advice.best_batch_size <= current:
            return []  # the user's own sweep says the current batch is already the best one
    if sweep_signal:
        reasons.append(f"your sweep shows energy per sample falling with batch size "
                       f"(slope {f.energy_per_sample_slope:.2f} in log-log)")
    if not (gpu_signal or cpu_signal or sweep_signal):
        return []
    if current is not None:
        evidence.append(ev("samples per step (current batch size)", f.samples_per_step, "samples",
                           "step records"))

    notes: list[str] = [contention_note] if contention_note else []
    if advice is not None and advice.ok:
        saving = advice.saving(current)
        notes += list(advice.notes)
        notes.append(f"memory: {advice.limit}")
        target = advice.best_batch_size
        rel = advice.fit.loo_mae / advice.best_energy_per_sample_j if advice.best_energy_per_sample_j else None
        confidence = fit_confidence(advice.fit, rel) if not saving.is_measure_first else "low"
        title = f"Raise the batch size to {target}"
        command = None
    else:
        target = None
        saving = _rule_of_thumb(f, current)
        confidence = "low"
        title = "Raise the batch size" + (f" above {current}" if current else "")
        command = sweep_command(model=model_arg(f))
        if advice is not None:
            notes.append(f"regression: {advice.reason}")
    rationale = ("Energy per sample falls when each batch keeps the hardware busy: " + "; ".join(reasons)
                 + ". Larger batches spread fixed costs (kernel launches, weight reads, idle power) over "
                   "more samples — until memory runs out or the hardware saturates, so the advisor "
                   "picks the size from measurements, never beyond the largest that fit.")
    training = f.is_training is True
    risk = Risk("medium", "training: a larger batch changes the optimisation — scale the learning rate "
                "and watch the validation loss; quality can drop at very large batches") if training else \
        Risk("low", "inference: outputs are unchanged up to float rounding; latency per request grows "
                    "with the batch and memory use rises")
    return [Recommendation(
        rule=RULE, title=title, rationale=rationale, evidence=tuple(evidence), predicted_saving=saving,
        confidence=confidence, risk=risk, action=None,
        command=command or (f"set the batch size to {target} in your program "
                            "(agent-run jobs: agent.knob('batch_size', …))" if target else None),
        notes=tuple(notes))]


def _rule_of_thumb(f: SessionFeatures, current: int | None) -> PredictedSaving:
    """GPU: idle power is paid per sample while kernels are not running. If a larger batch fills
    the idle time with the same work per sample, the static share of energy per sample falls by
    at most (1 - utilisation). Needs measured idle and mean power; otherwise measure first."""
    g = next((g for g in f.gpus if g.util_mean_pct is not None and g.mean_power_w and g.idle_power_w), None)
    if g is None or f.gpu_util_mean_pct is None:
        return measure_first("the saving depends on the model and the machine; a short sweep measures it",
                             sweep_command(model=model_arg(f)), )
    static_share = min(1.0, g.idle_power_w / g.mean_power_w)
    high = static_share * (1.0 - g.util_mean_pct / 100.0)
    return rule_of_thumb(0.0, high, f"{g.source_id}'s idle power ({g.idle_power_w:.0f} W of "
                         f"{g.mean_power_w:.0f} W mean) paid during the {100 - g.util_mean_pct:.0f} % of "
                         "time it ran no kernel; a larger batch can at most remove that share")
