"""Optimisation actions (issue 5): measured saving and fidelity of each action, A/B interleaved.

A Llama-style model (6 layers, width 512, 8 heads, MLP 1 376, 32 000-token vocabulary) is built
from a config, saved with ``save_pretrained`` and run through the real ``optimize`` path for each
action: load → copy → apply → save → reload with plain transformers → fidelity → interleaved
A B A B rounds. Every torchao quantization variant that runs here has its own row (int8 dynamic
activation + int8 weight, int8 weight-only), so the measured saving of each backend variant is
side by side; int4 and float8 need a capable CUDA GPU and are listed as refused on CPU.

The healing row prunes the same way and then distils the original back into the pruned model
(``--heal-steps N --heal-text FILE``, a character tokenizer saved with the model, the public-domain
text of tests/fixtures/text/heal.txt, its last fifth held out). Its payback is computed here from
the measurements: healing joules ÷ joules saved per sample (E_A − E_B, from the same A/B run),
with the range that the saving's 95 % interval gives (unbounded when the interval reaches 0).

    python benchmarks/bench_actions.py                 → benchmarks/results/actions.md
    python benchmarks/bench_actions.py --only heal     → re-runs that row, keeps the others

The weights are random (no download here), so fidelity numbers say how far outputs move, not
how much language quality a trained model would lose.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, write_section  # noqa: E402

HEAL_TEXT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "text" / "heal.txt"
HEAL_SPEC = "prune-layers:0.34"
HEAL_LABEL = "heal"  # the row's name for --only

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
    HEAL_LABEL,
]
HEADER = ("| action | E_A mJ/sample | E_B mJ/sample | energy saving [95 % CI] | latency saving [95 % CI] "
          "| weights MiB A → B | on disk MiB A → B | peak working MiB A / B | top-1 agreement | KL nats "
          "| claim holds | rounds × batches | healing: held-out KL before → after, energy, payback |")
N_COLS = HEADER.count("|") - 1


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


def save_char_tokenizer(folder: Path) -> None:
    """A character-level tokenizer (a..z and space; anything else unknown), built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", " ", *"abcdefghijklmnopqrstuvwxyz"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


def payback(heal_j: float | None, e_a: float | None, e_b: float | None,
            saving_ci: tuple[float, float] | None) -> tuple[float | None, tuple[float, float] | None, str | None]:
    """(samples until healing's joules are paid back, range from the saving's interval, reason if n/a).

    Joules saved per sample = E_A − E_B; the range uses E_A × the saving's 95 % interval bounds
    (an upper end of ∞ when the interval reaches "no saving")."""
    if heal_j is None:
        return None, None, "healing energy not measured"
    if e_a is None or e_b is None:
        return None, None, "energy per sample not measured"
    saved = e_a - e_b
    if saved <= 0:
        return None, None, "the pruned model saved no energy per sample here: healing never pays back"
    rng = None
    if saving_ci is not None:
        lo, hi = saving_ci
        rng = (heal_j / (e_a * hi) if hi > 0 else float("inf"), heal_j / (e_a * lo) if lo > 0 else float("inf"))
    return heal_j / saved, rng, None


def _samples(x: float) -> str:
    return "∞" if x == float("inf") else f"{x:,.0f}"


def _merge(old_rows: list[str], new_rows: dict[str, str]) -> list[str]:
    """Rows of the previous table (widened to the current columns), the re-run ones replaced."""
    out = []
    for row in old_rows:
        key = row.split("|")[1].strip()
        if key in new_rows:
            out.append(new_rows.pop(key))
        else:
            missing = N_COLS - (row.count("|") - 1)
            out.append(row + " — |" * max(0, missing))
    return out + list(new_rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--min-window-s", type=float, default=1.0)
    parser.add_argument("--heal-steps", type=int, default=40)
    parser.add_argument("--only", metavar="ACTION[;ACTION]",
                        help=f"re-run these rows (e.g. {HEAL_LABEL}) and keep the others of the last run")
    args = parser.parse_args()
    only = [a.strip() for a in args.only.split(";")] if args.only else None
    if only and set(only) - set(ACTIONS):
        parser.error(f"--only: unknown rows {sorted(set(only) - set(ACTIONS))}; choose from {ACTIONS}")

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wattlens.advisor.optimize import optimize
    from wattlens.profiler.errors import BadInputError

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=6, hidden_size=512, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=1376, vocab_size=32000,
                         max_position_embeddings=1024)
    model = LlamaForCausalLM(config).eval()
    rows: dict[str, str] = {}
    method = "n/a"
    mem_method = "n/a"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "llama-6x512"
        model.save_pretrained(src)
        save_char_tokenizer(src)
        del model
        src_bytes = (src / "model.safetensors").stat().st_size
        for i, name in enumerate(ACTIONS):
            if only and name not in only:
                continue
            healing = name == HEAL_LABEL
            spec = HEAL_SPEC if healing else name
            key = f"`{spec}` + heal {args.heal_steps} steps" if healing else f"`{spec}`"
            t0 = time.perf_counter()
            try:
                r = optimize(src, spec, Path(d) / f"out{i}", n_rounds=args.rounds,
                             batch_size=args.batch_size, seq_len=args.seq_len,
                             min_window_s=args.min_window_s, warmup_batches=2,
                             heal_steps=args.heal_steps if healing else 0,
                             heal_text=HEAL_TEXT if healing else None)
            except BadInputError as exc:
                rows[key] = f"| {key} | refused here: {exc.message} |" + " |" * (N_COLS - 2)
                print(f"{spec}: refused: {exc.message}", file=sys.stderr)
                continue
            v, f = r.verification, r.verification.fidelity
            method, mem_method = v.baseline.energy_method, v.baseline.mem_method
            heal_cell = "—"
            if healing:
                h = r.healing
                pb, pb_range, why = payback(h["energy_j"], v.baseline.energy_per_sample_j,
                                            v.candidate.energy_per_sample_j, v.saving_interval)
                energy = f"{h['energy_j']:.1f} J" if h["energy_j"] is not None else f"n/a ({h['energy_reason']})"
                pays = (f"pays back after **{_samples(pb)} samples**"
                        + (f" [{_samples(pb_range[0])}, {_samples(pb_range[1])}]" if pb_range else "")
                        if pb is not None else f"payback n/a: {why}")
                heal_cell = (f"{h['steps']} steps, {h['held_out_tokens']} held-out tokens: KL "
                             f"{h['held_out_kl_before']:.3g} → {h['held_out_kl_after']:.3g}; {energy} in "
                             f"{h['duration_s']:.0f} s; {pays}")
                print(f"heal: {heal_cell}", file=sys.stderr)
            rows[key] = (
                f"| {key} | {_mj(v.baseline.energy_per_sample_j)} | {_mj(v.candidate.energy_per_sample_j)} "
                f"| {_pct(v.saving_fraction)} {_ci(v.saving_interval)} "
                f"| {_pct(v.latency_saving_fraction)} {_ci(v.latency_saving_interval)} "
                f"| {_mib(v.baseline.model_bytes)} → {_mib(v.candidate.model_bytes)} "
                f"| {_mib(src_bytes)} → {_mib(r.sizes.get('saved_weights_bytes'))} "
                f"| {_mib(v.baseline.peak_mem_bytes)} / {_mib(v.candidate.peak_mem_bytes)} "
                f"| {_num(f.top1_agreement, '.3f')} | {_num(f.kl_base_candidate, '.2e')} "
                f"| {'yes' if all(a.claim.holds for a in r.actions) else 'NO'} "
                f"| {v.n_rounds}×{v.batches_per_round} | {heal_cell} |"
            )
            print(f"{spec}: saving {_pct(v.saving_fraction)} {_ci(v.saving_interval)}, "
                  f"latency {_pct(v.latency_saving_fraction)}, top-1 {f.top1_agreement}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    load = os.getloadavg()[0]
    partial = ""
    table = list(rows.values())
    if only:
        previous = RESULTS_DIR / "actions.md"
        lines = previous.read_text().splitlines() if previous.exists() else []
        old = [ln for ln in lines if ln.startswith("| `")]
        stamp = next((ln.removeprefix("Run ").split(" on:")[0] for ln in lines if ln.startswith("Run ")), "n/a")
        table = _merge(old, rows)
        partial = (f"\n- Rows re-run in this run ({', '.join(only)}): load average {load:.1f} on "
                   f"{os.cpu_count()} logical CPUs at the end; the other rows are from the run of {stamp} "
                   "(same settings unless this file's git history says otherwise).")
    else:
        partial = f"\n- Load average at the end: {load:.1f} on {os.cpu_count()} logical CPUs."
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
- Healing row: {HEAL_SPEC} then {args.heal_steps} AdamW steps of KL distillation from the original
  on {HEAL_TEXT.name} (character tokenizer; the held-out last fifth measures KL before/after);
  its energy is the healing loop's own window (same method). Payback = healing J ÷ (E_A − E_B)
  samples, the range from the saving's 95 % interval (∞ where it reaches 0).
- The machine is shared (2 logical CPUs, other jobs running), so intervals are wide; a saving
  whose interval spans 0 is not established.{partial}

{HEADER}
|{"---|" * N_COLS}
""" + "\n".join(table)
    path = write_section("actions", "Optimisation actions: measured saving and fidelity (A/B)", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
