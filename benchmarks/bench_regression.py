"""Advisor regression benchmarks (issue 5): how well the regressions fitted on a user's own
measurements predict energy per sample.

1. Batch-size sweep 1…32 of a GPT-2-style CPU model (6 layers, width 512, 8 heads, vocabulary
   8192, 32 tokens, one torch thread), measured with the real sweep code (``advisor.optimize.sweep_batch_sizes``)
   and ``EnergyMeter``; the rows go through a Store and the regression is refitted from them.
   Reported: the chosen model, its leave-one-out error on J/sample (goal ≤ 10 %), and the error
   on batch sizes the fit never saw (3, 12, 24), measured the same way.
2. A/B results of quantize-int8 on four GPT-2 sizes (``advisor.verify.ab_verify``, interleaved
   A B A B …); with three stored, the saving of the fourth is predicted and compared with its
   measured saving (goal: within 10 percentage points). Every rotation is shown.

    python benchmarks/bench_regression.py      → benchmarks/results/regression.md
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

SWEEP = (1, 2, 4, 8, 16, 32)
HOLDOUT = (3, 12, 24)
SEQ_LEN = 32
MIN_WINDOW_S = 1.0
AB_SIZES = ((2, 128), (3, 256), (4, 384), (6, 512))  # (layers, width) of the four A/B models


def gpt2(n_layer: int, n_embd: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(2, n_embd // 64), vocab_size=8192,
                     n_positions=128)
    return GPT2LMHeadModel(cfg).eval()


def bench_sweep(store, meter) -> dict:
    from wattlens.advisor.optimize import sweep_batch_sizes
    from wattlens.advisor.regression import SweepPoint, fit_energy_vs_batch

    model = gpt2(6, 512)
    t0 = time.perf_counter()
    rows = sweep_batch_sizes(model, SWEEP, seq_len=SEQ_LEN, n_rounds=3, min_window_s=MIN_WINDOW_S, meter=meter)
    sweep_s = time.perf_counter() - t0
    store.add_measurements([
        {"kind": "batch-sweep", "model_key": "gpt2-6x512", "batch_size": r.batch_size,
         "energy_per_sample_j": r.energy_per_sample_j, "throughput_per_s": r.throughput_samples_per_s,
         "payload": {"status": r.status, "method": r.energy_method, "interval": r.energy_per_sample_interval_j}}
        for r in rows])
    points = [SweepPoint(m["batch_size"], m["energy_per_sample_j"], m["throughput_per_s"],
                         m["payload"]["status"], m["model_key"]) for m in store.measurements("batch-sweep")]
    advice = fit_energy_vs_batch(points, current_batch_size=1)
    held = sweep_batch_sizes(model, HOLDOUT, seq_len=SEQ_LEN, n_rounds=3, min_window_s=MIN_WINDOW_S, meter=meter)
    holdout = [(r.batch_size, r.energy_per_sample_j, advice.predict(r.batch_size)) for r in held]
    return {"rows": rows, "advice": advice, "holdout": holdout, "sweep_s": sweep_s,
            "method": rows[0].energy_method}


def bench_ab(store, meter) -> dict:
    from wattlens.advisor.actions import parse_action
    from wattlens.advisor.modelio import random_inputs, tensor_footprint
    from wattlens.advisor.regression import AbPoint, predict_action_saving
    from wattlens.advisor.verify import ab_verify

    results = []
    for n_layer, width in AB_SIZES:
        base = gpt2(n_layer, width)
        cand = parse_action("quantize-int8").apply(base)
        inputs = random_inputs(base, 8, SEQ_LEN)
        v = ab_verify(base, cand, inputs, n_rounds=5, warmup_batches=2, min_window_s=MIN_WINDOW_S, meter=meter)
        params, _ = tensor_footprint(base)
        results.append({"model": f"gpt2-{n_layer}x{width}", "params": params, "saving": v.saving_fraction,
                        "interval": v.saving_interval, "latency_saving": v.latency_saving_fraction})
    store.add_measurements([{"kind": "ab", "model_key": r["model"], "action": "quantize-int8",
                             "saving_fraction": r["saving"], "params": r["params"],
                             "payload": {"interval": r["interval"]}} for r in results])
    stored = [AbPoint(m["action"], m["saving_fraction"], m["params"], m["flops"], m["model_key"])
              for m in store.measurements("ab")]
    rotations = []
    for i, r in enumerate(results):
        history = [p for j, p in enumerate(stored) if j != i]
        pred = predict_action_saving(history, "quantize-int8", params=r["params"])
        rotations.append((r, pred))
    return {"results": results, "rotations": rotations}


def main() -> None:
    import torch

    from wattlens.profiler.meter import EnergyMeter
    from wattlens.profiler.store import Store

    # one thread: on a small shared machine, fewer threads means less contention noise
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    meter = EnergyMeter(pid=os.getpid())
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "bench.db")
        sweep = bench_sweep(store, meter)
        ab = bench_ab(store, meter)
        store.close()
    meter.close()
    total_s = time.perf_counter() - t_start

    adv = sweep["advice"]
    import psutil

    load = psutil.getloadavg()[0]
    lines = [f"Load average at the end: {load:.1f} on {psutil.cpu_count()} logical CPUs (other work shared "
             "the machine).", "",
             f"### 1. Energy per sample vs batch size (GPT-2 6 layers × 512, {SEQ_LEN} tokens, CPU, 1 thread)", "",
             f"Energy method: {sweep['method']}. Sweep of {len(SWEEP)} sizes took {sweep['sweep_s']:.0f} s.", "",
             "| Batch | J/sample measured (95 % interval over 3 rounds) | fitted | samples/s |", "|---|---|---|---|"]
    for r in sweep["rows"]:
        iv = r.energy_per_sample_interval_j
        ivs = f" ({iv[0]:.4g} … {iv[1]:.4g})" if iv else ""
        e = f"{r.energy_per_sample_j:.4g}{ivs}" if r.energy_per_sample_j is not None else f"— ({r.status}: {r.reason})"
        fitted = adv.predict(r.batch_size)
        lines.append(f"| {r.batch_size} | {e} | {fitted:.4g} | {r.throughput_samples_per_s or 0:.1f} |"
                     if fitted is not None else f"| {r.batch_size} | {e} | — | — |")
    if adv.ok:
        f = adv.fit
        lines += ["", f"Chosen model: **{f.model}**; leave-one-out MAE {f.loo_mae:.4g} J/sample, "
                  f"**LOO mean relative error {f.loo_mape * 100:.1f} %** (goal ≤ 10 %), largest LOO error "
                  f"{f.loo_max_abs:.4g} J/sample.",
                  "Candidates (LOO MAE, J/sample): " + "; ".join(f"{n}: {m:.4g}" for n, m in f.candidates) + ".",
                  f"Recommended batch size: {adv.best_batch_size} ({adv.limit}).",
                  f"Predicted saving from batch 1: {adv.saving(1).text}."]
        lines += [f"Note: {n}" for n in adv.notes]
        errs = [abs(p - m) / m for _, m, p in sweep["holdout"] if m and p]
        lines += ["", "Held-out batch sizes (not in the fit, measured afterwards the same way):", "",
                  "| Batch | measured J/sample | predicted | error |", "|---|---|---|---|"]
        for b, m, p in sweep["holdout"]:
            lines.append(f"| {b} | {m:.4g} | {p:.4g} | {abs(p - m) / m * 100:.1f} % |" if m and p
                         else f"| {b} | {m} | {p} | — |")
        if errs:
            lines.append(f"\nMean held-out error: {sum(errs) / len(errs) * 100:.1f} %.")
    else:
        lines += ["", f"Regression: {adv.reason}"]

    lines += ["", "### 2. quantize-int8 saving predicted from three other model sizes", "",
              "| Model | params | measured saving (95 % interval) | latency saving | predicted from the other three | "
              "model chosen (LOO error) | |error| |", "|---|---|---|---|---|---|---|"]
    for r, pred in ab["rotations"]:
        iv = r["interval"]
        meas = f"{r['saving'] * 100:.1f} %" + (f" ({iv[0] * 100:.1f} … {iv[1] * 100:.1f})" if iv else "")
        if pred.ok:
            p = f"{pred.saving_fraction * 100:.1f} % ({pred.low * 100:.1f} … {pred.high * 100:.1f})"
            err = f"{abs(pred.saving_fraction - r['saving']) * 100:.1f} pp"
            model = f"{pred.fit.model} (±{pred.fit.loo_mae * 100:.1f} pp)"
        else:
            p, err, model = "measure first", "—", pred.reason
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {meas} | {r['latency_saving'] * 100:.1f} % "
                     f"| {p} | {model} | {err} |")
    last_r, last_p = ab["rotations"][-1]
    if last_p.ok:
        lines += ["", f"Headline (three smaller models → the largest, {last_r['model']}): predicted "
                  f"{last_p.saving_fraction * 100:.1f} %, measured {last_r['saving'] * 100:.1f} %, error "
                  f"**{abs(last_p.saving_fraction - last_r['saving']) * 100:.1f} pp** (goal ≤ 10 pp)."]
    lines += ["", f"Whole benchmark: {total_s:.0f} s of machine time. The CPU here has no RAPL, so energy is "
              "the CPU power model's estimate (TDP × load) attributed to this process: J/sample tracks "
              "time × load, and savings compare like with like, but the joules are not metered."]
    path = write_section("regression", "Advisor regressions (issue 5)", "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
