"""The A/B run's windows and its estimator: a window too short for the meter is measured again or
refused, the saving is the ratio of the per-sample energies it prints, and a run with no sound
window is stored as unverified (a user trial once stored "+1435 %" from one 13-ms window)."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_actions_helpers import save_hf, tiny_gpt2
from wattlens.advisor.actions import parse_action
from wattlens.advisor.modelio import random_inputs
from wattlens.advisor.verify import ab_verify, paired_saving
from wattlens.profiler.meter import EnergyMeter
from wattlens.profiler.sources.base import Reading
from wattlens.profiler.store import Store

# per-round energy per sample (J) of the trial: round 1's baseline window lasted 13 ms
TRIAL_BASE = [0.0126, 0.540, 0.534]
TRIAL_CAND = [0.556, 0.537, 0.542]


class StuckCounter:
    """A CPU energy counter that never advances (the hardware boundary): every window reads 0 J."""

    id, kind, method, label = "rapl:package-0", "cpu", "counter", "CPU package (stuck)"

    def read(self, t_ns: int) -> Reading:
        return Reading(t_ns, 0.0, 0.0)

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the estimator


def test_the_saving_is_the_ratio_of_the_pooled_energies_not_a_mean_of_ratios():
    saving, (lo, hi), reason = paired_saving(TRIAL_BASE, TRIAL_CAND)
    # 1 − mean(B)/mean(A): what "0.362 J → 0.545 J per sample" says (+50 %), not +1435 %
    assert saving == pytest.approx(1 - sum(TRIAL_CAND) / sum(TRIAL_BASE))
    assert saving == pytest.approx(-0.5047, abs=1e-3)
    assert reason is None and lo < saving < hi
    assert hi - lo > 2.0  # three rounds that disagree this much give a wide interval, honestly
    # rounds of different lengths weigh by their samples: pooled J/sample of each arm
    saving, _, _ = paired_saving([1.0, 2.0], [0.5, 1.0], samples=[8, 2])
    pooled_a, pooled_b = (8 * 1.0 + 2 * 2.0) / 10, (8 * 0.5 + 2 * 1.0) / 10
    assert saving == pytest.approx(1 - pooled_b / pooled_a)


def test_the_interval_is_exact_when_every_round_agrees():
    saving, interval, _ = paired_saving([2.0, 4.0, 1.0], [1.0, 2.0, 0.5])
    assert saving == pytest.approx(0.5) and interval == pytest.approx((0.5, 0.5))


# --------------------------------------------------------------------------- the rounds


def test_a_window_too_short_for_the_meter_is_measured_again_with_more_batches():
    base = tiny_gpt2()
    cand = parse_action("prune-mlp:0.5").apply(base)
    meter = EnergyMeter()
    # one batch of this model lasts milliseconds, far below the meter's interval: the trial's case
    # of a round sized by a slow warm-up running fast
    v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=3, warmup_batches=1,
                  min_window_s=0.3, batches_per_round=1, meter=meter)
    assert v.required_window_s >= max(0.3, 5 * meter.interval_s)
    assert v.n_rounds + len(v.refused_rounds) == 3
    if v.n_rounds == 0:  # a machine too loaded for any round to fill the window: refused, said why
        assert v.saving_fraction is None and all("refused" in r for r in v.refused_rounds), v.refused_rounds
        return
    for arm in (v.baseline, v.candidate):  # the counted rounds (the arms hold only those)
        spans = [lat * n for lat, n in zip(arm.round_latency_per_sample_s, arm.round_samples, strict=True)]
        assert spans and all(s >= v.required_window_s for s in spans), spans
    assert all(b == 1 for b in v.round_batches) or any("measured again" in n for n in v.notes)
    if v.saving_fraction is not None:  # the saving is the one the per-sample figures say
        ratio = v.candidate.energy_per_sample_j / v.baseline.energy_per_sample_j
        assert v.saving_fraction == pytest.approx(1 - ratio, rel=1e-9, abs=1e-12)


def test_rounds_the_meter_cannot_measure_are_refused_and_give_no_figure():
    base = tiny_gpt2()
    cand = parse_action("prune-mlp:0.5").apply(base)
    v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=2, warmup_batches=1,
                  min_window_s=0.25, meter=EnergyMeter(sources=[StuckCounter()]))
    assert v.saving_fraction is None and v.saving_interval is None
    assert v.n_rounds == 0 and len(v.refused_rounds) == 2
    assert "no energy" in v.refused_rounds[0] and "could be measured" in v.saving_reason
    assert v.baseline.energy_per_sample_j is None and v.baseline.latency_per_sample_s > 0
    json.dumps(v.to_dict())


def test_optimize_stores_an_unmeasurable_run_as_unverified_with_the_reason(tmp_path, monkeypatch, capsys):
    from wattlens.advisor import verify
    from wattlens.app.cli import main

    src = save_hf(tiny_gpt2(), tmp_path / "gpt2")
    monkeypatch.setattr(verify, "_default_meter", lambda: EnergyMeter(sources=[StuckCounter()]))
    db = tmp_path / "w.db"
    code = main(["optimize", str(src), "--action", "prune-mlp:0.25", "--out", str(tmp_path / "out"),
                 "--rounds", "2", "--db", str(db), "--json"])
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("wattlens: error: ")
    assert "no sound energy figure" in err[-1] and "unverified" in err[-1]
    doc = json.loads(out.out)  # --json: one document on stdout, a failed run too (it printed none)
    assert doc["status"] == "unverified" and "no sound energy figure" in doc["error"]
    store = Store(db)
    (action,) = store.actions()
    assert action["status"] == "unverified"
    assert "could be measured" in action["result"]["measured_text"]
    assert store.measurements("ab") == []  # nothing for the regression to learn from
    session = store.session(action["session_id"])
    assert session["status"] == "failed" and "no sound energy figure" in session["end_reason"]
    assert any(f"session {action['session_id']}" in line for line in err)


# --------------------------------------------------------------------------- the batch-size sweep


def test_a_sweep_the_meter_cannot_measure_says_so_and_gives_no_energy():
    """The sweep checked round 0's window length alone and read a counter that gave nothing as
    0 J per sample; each round is now checked as the A/B's are (verify.measure_round)."""
    from wattlens.advisor.optimize import sweep_batch_sizes

    rows = sweep_batch_sizes(tiny_gpt2(), [1], seq_len=8, n_rounds=2, min_window_s=0.25,
                             meter=EnergyMeter(sources=[StuckCounter()]))
    (row,) = rows
    assert row.status == "ok" and row.energy_per_sample_j is None and row.energy_per_sample_interval_j is None
    assert row.reason.startswith("no round could be measured soundly") and "no energy" in row.reason
    assert row.throughput_samples_per_s > 0  # the work was timed all the same


def test_the_interval_never_passes_a_full_saving_however_much_the_rounds_disagree():
    # a candidate round that read a tenth of its baseline beside two that read ten times more:
    # a symmetric interval on the ratio went past +100 % (negative energy); the log-ratio cannot
    for base, cand in ((TRIAL_BASE, TRIAL_CAND), ([1.0, 1.0, 1.0], [0.1, 10.0, 10.0]),
                       ([1.0, 1.0], [0.05, 0.5])):
        saving, (lo, hi), _ = paired_saving(base, cand)
        assert lo < saving < hi < 1.0
    # a doubling and a halving are as far from no change, on the scale the interval uses
    _, (lo_half, hi_half), _ = paired_saving([1.0, 1.0, 1.0], [0.4, 0.5, 0.6])
    assert math.log(1 - lo_half) + math.log(1 - hi_half) == pytest.approx(2 * math.log(0.5), abs=0.02)


def test_a_round_in_which_the_candidate_read_no_energy_gives_no_figure():
    saving, interval, reason = paired_saving([1.0, 1.0], [0.0, 0.5])
    assert saving is None and interval is None and "candidate" in reason and "zero" in reason


def test_a_round_far_from_its_arms_others_is_named_with_its_weight():
    from wattlens.advisor.verify import disturbed_rounds

    # the trial's bf16 run: one baseline round read 0.896 J against 0.055–0.080 J in the others
    base, cand = [0.060, 0.070, 0.055, 0.080, 0.896, 0.065], [0.057, 0.074, 0.060, 0.081, 0.085, 0.066]
    (note,) = disturbed_rounds(base, cand)
    assert note.startswith("counted round 5: the baseline read 0.896 J/sample, 14× the other rounds' median (0.065)")
    assert "73% of the baseline's pooled energy" in note and "quieter" in note
    assert disturbed_rounds([1.0, 1.1, 0.9], [0.5, 0.55, 0.45]) == []  # rounds that agree: nothing
    assert disturbed_rounds([1.0, 9.0], [1.0, 1.0]) == []  # two rounds: no "others" to hold one against
    assert disturbed_rounds([1.0, 1.0, 1.0], [1.0, 0.2, 1.0])[0].startswith("counted round 2: the candidate read 0.2")


def test_the_ab_run_names_a_disturbed_round_in_its_notes():
    import time

    from tests.test_optimize_edges import SteadyMeter
    from wattlens.profiler.meter import Measurement

    class BusyRoundMeter(SteadyMeter):
        """1 J per window whatever its length (so this loaded machine's own speed changes do not
        move it), except the baseline's second round, which another process made read 30 J."""

        def end_window(self, key: str) -> Measurement:
            d = time.perf_counter() - self._opened.pop(key)
            joules = 30.0 if ":baseline:1" in key else 1.0
            return Measurement(duration_s=d, energy_j={"test": joules}, methods={"test": "counter"},
                               attributed_energy_j=joules, attributed_method="counter (test)")

    base = tiny_gpt2()
    cand = parse_action("prune-mlp:0.5").apply(base)
    with pytest.MonkeyPatch.context() as mp:
        from wattlens.advisor import verify

        mp.setattr(verify, "window_problem", lambda w, required_s: None)  # every window counts
        v = ab_verify(base, cand, random_inputs(base, 2, 8), n_rounds=4, warmup_batches=1,
                      batches_per_round=2, meter=BusyRoundMeter())
    named = [n for n in v.notes if "J/sample" in n and "the other rounds' median" in n]
    assert any(n.startswith("counted round 2: the baseline read") for n in named), v.notes
    assert not any("candidate" in n for n in named), named  # the steady arm is not named


def test_an_interval_with_no_bound_does_not_overflow():
    from wattlens.profiler.figures import saving_interval

    # live apply's steps of very uneven sample counts once gave SE(log R) past 700: exp overflowed
    lo, hi = saving_interval(0.5, 1000.0, 1.96)
    assert lo < -1e300 and 0.99 < hi <= 1.0  # no bound either way, and no OverflowError


def test_the_weights_on_disk_are_those_transformers_loads(tmp_path):
    from wattlens.advisor.optimize import weights_file_bytes

    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 100)  # shipped beside them: not counted twice
    (tmp_path / "training_args.bin").write_bytes(b"x" * 7)
    assert weights_file_bytes(tmp_path) == 100
    (tmp_path / "model.safetensors").unlink()
    assert weights_file_bytes(tmp_path) == 100  # .bin weights, not the training arguments
    assert weights_file_bytes(tmp_path / "pytorch_model.bin") == 100  # a module file: itself
