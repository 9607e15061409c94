"""Optimisation actions (issue 5): measured saving and fidelity of each action, A/B interleaved.

A Llama-style model (6 layers, width 512, 8 heads, MLP 1 376, 32 000-token vocabulary) is built
from a config, saved with ``save_pretrained`` and run through the real ``optimize`` path for each
action: load → copy → apply → save → reload with plain transformers → fidelity → interleaved
A B A B rounds. Every torchao quantization variant that runs here has its own row (int8 dynamic
activation + int8 weight, int8 weight-only), so the measured saving of each backend variant is
side by side; int4 and float8 need a capable CUDA GPU and are listed as refused on CPU.

    python benchmarks/bench_actions.py        → benchmarks/results/actions.md

The weights are random (no download here), so fidelity numbers say how far outputs move, not
how much language quality a trained model would lose.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_section  # noqa: E402

ACTIONS = [
    "quantize-int8",
    "quantize-int8-weight-only",
    "quantize-int4",
    "quantize-float8",
    "bf16",
    "prune-mlp:0.5",
    "prune-layers:0.34",
    "prune-unstructured:0.5",
    "prune-layers:0.34,quantize-int8",
]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f} %"


def _ci(iv: tuple[float, float] | None) -> str:
    return "n/a" if iv is None else f"[{iv[0] * 100:+.1f}, {iv[1] * 100:+.1f}]"


def _mj(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.1f}"


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--min-window-s", type=float, default=1.0)
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wattlens.advisor.optimize import optimize
    from wattlens.profiler.errors import BadInputError

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=6, hidden_size=512, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=1376, vocab_size=32000,
                         max_position_embeddings=1024)
    model = LlamaForCausalLM(config).eval()
    rows = []
    method = "n/a"
    mem_method = "n/a"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "llama-6x512"
        model.save_pretrained(src)
        del model
        src_bytes = (src / "model.safetensors").stat().st_size
        for i, spec in enumerate(ACTIONS):
            t0 = time.perf_counter()
            try:
                r = optimize(src, spec, Path(d) / f"out{i}", n_rounds=args.rounds,
                             batch_size=args.batch_size, seq_len=args.seq_len,
                             min_window_s=args.min_window_s, warmup_batches=2)
            except BadInputError as exc:
                rows.append(f"| `{spec}` | refused here: {exc.message} |" + " |" * 10)
                print(f"{spec}: refused: {exc.message}", file=sys.stderr)
                continue
            v, f = r.verification, r.verification.fidelity
            method, mem_method = v.baseline.energy_method, v.baseline.mem_method
            rows.append(
                f"| `{spec}` | {_mj(v.baseline.energy_per_sample_j)} | {_mj(v.candidate.energy_per_sample_j)} "
                f"| {_pct(v.saving_fraction)} {_ci(v.saving_interval)} "
                f"| {_pct(v.latency_saving_fraction)} {_ci(v.latency_saving_interval)} "
                f"| {_mib(v.baseline.model_bytes)} → {_mib(v.candidate.model_bytes)} "
                f"| {_mib(src_bytes)} → {_mib(r.sizes.get('saved_weights_bytes'))} "
                f"| {_mib(v.baseline.peak_mem_bytes)} / {_mib(v.candidate.peak_mem_bytes)} "
                f"| {_num(f.top1_agreement, '.3f')} | {_num(f.kl_base_candidate, '.2e')} "
                f"| {'yes' if all(a.claim.holds for a in r.actions) else 'NO'} "
                f"| {v.n_rounds}×{v.batches_per_round} |"
            )
            print(f"{spec}: saving {_pct(v.saving_fraction)} {_ci(v.saving_interval)}, "
                  f"latency {_pct(v.latency_saving_fraction)}, top-1 {f.top1_agreement}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    body = f"""
Llama-style model from a config (6 layers, width 512, 8 heads, MLP 1 376, vocab 32 000, random weights),
{args.batch_size}×{args.seq_len} seeded random token ids per batch, CPU. Each row is one real
`optimize` run: warm-up, then {args.rounds} interleaved rounds A B A B … (A = original, B =
candidate, same batches per window, each window ≥ {args.min_window_s:g} s). B is the saved folder
as plain transformers reloads it (quantization: torchao via TorchAoConfig), so what is measured is
what ships.

- Energy per sample is attributed to the benchmark process; method: **{method}**. Saving =
  1 − E_B/E_A, mean of the per-round paired savings with a 95 % t-interval over rounds.
- Latency saving is the same statistic on time per sample.
- Peak working memory: {mem_method}, probed on one batch outside the energy windows (what a
  batch adds on top of the resident weights; the weights are the "weights MiB" column).
- Fidelity on the same random token ids: top-1 agreement and KL(base‖candidate) of next-token
  distributions. Random weights give nearly flat next-token distributions, so tiny output
  changes flip the argmax: top-1 agreement here is far harsher than on a trained model, and KL
  ("how far the outputs moved") is the number to compare between actions.
- The machine is shared (2 logical CPUs, other jobs running), so intervals are wide; a saving
  whose interval spans 0 is not established.

| action | E_A mJ/sample | E_B mJ/sample | energy saving [95 % CI] | latency saving [95 % CI] | weights MiB A → B | on disk MiB A → B | peak working MiB A / B | top-1 agreement | KL nats | claim holds | rounds × batches |
|---|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows)
    path = write_section("actions", "Optimisation actions: measured saving and fidelity (A/B)", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
