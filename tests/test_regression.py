"""The advisor's regressions on exact-known synthetic rows: recovery, LOO error, measure first."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattlens.advisor.regression import (
    AbPoint,
    SweepPoint,
    fit_energy_vs_batch,
    predict_action_saving,
)

SIZES = (1, 2, 4, 8, 16, 32)


def sweep(fn, sizes=SIZES, **kw):
    return [SweepPoint(b, fn(b), **kw) for b in sizes]


def test_power_law_is_recovered_with_zero_loo_error():
    adv = fit_energy_vs_batch(sweep(lambda b: 2.0 * b ** -0.5))
    assert adv.ok and adv.fit.model.startswith("power law")
    assert adv.fit.coefficients["coef_0"] == pytest.approx(-0.5, abs=1e-9)
    assert math.exp(adv.fit.coefficients["intercept"]) == pytest.approx(2.0, rel=1e-9)
    assert adv.fit.loo_mae < 1e-9 and adv.fit.n_points == 6
    assert adv.best_batch_size == 32  # monotone: the largest measured
    assert any("still falling" in n for n in adv.notes)
    assert adv.predict(8) == pytest.approx(2.0 / math.sqrt(8))
    assert adv.predict(64) is None  # never extrapolates
    s = adv.saving(2)
    assert s.fraction == pytest.approx(1 - (32 / 2) ** -0.5) and s.method.startswith("regression (power law")
    assert "LOO CV error ±" in s.method


def test_amortised_overhead_wins_on_its_own_data():
    adv = fit_energy_vs_batch(sweep(lambda b: 0.3 + 1.2 / b))
    assert adv.fit.model.startswith("amortised overhead")
    assert adv.fit.coefficients["coef_0"] == pytest.approx(1.2) and adv.fit.coefficients["intercept"] == pytest.approx(0.3)
    names = [c[0] for c in adv.fit.candidates]
    assert len(names) == 3  # every candidate was cross-validated and is reported


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_power_law_within_tolerance_and_loo_error_reported(seed):
    rng = np.random.default_rng(seed)
    truth = lambda b: 0.8 * b ** -0.7  # noqa: E731
    pts = [SweepPoint(b, truth(b) * (1 + rng.normal(0, 0.02))) for b in SIZES for _ in range(3)]
    adv = fit_energy_vs_batch(pts)
    assert adv.fit.n_points == 6  # replicates averaged: LOO over distinct batch sizes
    assert 0 < adv.fit.loo_mae < 0.05 * truth(1)
    assert 0 < adv.fit.loo_mape < 0.05
    for b in SIZES:
        assert adv.predict(b) == pytest.approx(truth(b), rel=0.05)
    s = adv.saving(1, 16)
    assert s.low < s.fraction < s.high  # noise gives a real interval
    assert s.low <= 1 - truth(16) / truth(1) <= s.high


def test_u_shape_picks_the_interior_minimum():
    pts = sweep(lambda b: math.exp(0.1 * (math.log(b) - math.log(8)) ** 2), sizes=(1, 2, 4, 8, 16, 32, 64))
    adv = fit_energy_vs_batch(pts)
    assert adv.fit.model.startswith("quadratic")
    assert adv.best_batch_size == 8 and not adv.notes


def test_memory_limit_caps_the_recommendation():
    pts = sweep(lambda b: b ** -0.5, sizes=(1, 2, 4, 8)) + [SweepPoint(16, None, status="oom"),
                                                            SweepPoint(32, None, status="skipped")]
    adv = fit_energy_vs_batch(pts, current_batch_size=2)
    assert adv.best_batch_size == 8 and adv.max_batch_size == 8
    assert "16 did not fit" in adv.limit and not adv.notes
    assert adv.saving(2).fraction == pytest.approx(1 - 2 ** -1)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_points_means_measure_first(n):
    adv = fit_energy_vs_batch(sweep(lambda b: 1 / b, sizes=SIZES[:n]), current_batch_size=12)
    assert not adv.ok and adv.fit is None and adv.best_batch_size is None
    assert adv.measure_command.startswith("wattlens optimize MODEL --batch-sizes 1,2,4,8,12,16")
    s = adv.saving(12)
    assert s.is_measure_first and s.method == "measure first" and s.measure_command == adv.measure_command
    # replicates of one size are one point, not three
    assert not fit_energy_vs_batch([SweepPoint(4, 1.0)] * 5).ok


def test_saving_outside_the_measured_range_is_measure_first():
    adv = fit_energy_vs_batch(sweep(lambda b: b ** -0.3, sizes=(4, 8, 16)))
    s = adv.saving(1)
    assert s.is_measure_first and "outside the measured range" in s.text


@settings(max_examples=15, deadline=None)
@given(a=st.floats(0.01, 100.0), k=st.floats(-1.0, -0.05))
def test_any_power_law_is_recovered(a, k):
    adv = fit_energy_vs_batch(sweep(lambda b: a * b ** k))
    assert adv.predict(4) == pytest.approx(a * 4 ** k, rel=1e-6)
    assert adv.fit.loo_mape < 1e-6


# --------------------------------------------------------------------------- action savings

def ab(action, rows):
    return [AbPoint(action, s, params=p, flops=fl, model_key=f"m{p}") for p, s, fl in rows]


def test_saving_linear_in_log_params_is_recovered():
    truth = lambda p: 0.05 + 0.04 * math.log10(p)  # noqa: E731
    hist = ab("quantize-int8", [(p, truth(p), None) for p in (1e6, 1e7, 1e8, 1e9)])
    pred = predict_action_saving(hist, "quantize-int8", params=3 * 10**7)
    assert pred.ok and pred.fit.model == "linear in log10 params"
    assert pred.saving_fraction == pytest.approx(truth(3e7))
    assert pred.fit.loo_mae < 1e-9
    ps = pred.to_predicted_saving()
    assert "LOO CV error ±" in ps.method and ps.low <= ps.fraction <= ps.high


def test_other_action_kinds_are_not_mixed_in():
    hist = ab("prune-heads:0.25", [(1e6, 0.1, None), (1e7, 0.1, None)]) + ab(
        "quantize-int8", [(1e6, 0.5, None), (1e7, 0.5, None), (1e8, 0.5, None)])
    pred = predict_action_saving(hist, "prune-heads:0.25", params=10**7)
    assert not pred.ok and "2 earlier A/B results of prune-heads" in pred.reason
    ps = pred.to_predicted_saving()
    assert ps.is_measure_first and ps.measure_command.startswith("wattlens optimize MODEL --action prune-heads:0.25")


def test_unknown_model_size_falls_back_to_the_mean_with_its_loo_error():
    hist = ab("bf16", [(1e6, 0.10, None), (1e7, 0.20, None), (1e8, 0.30, None)])
    pred = predict_action_saving(hist, "bf16", params=None)
    assert pred.fit.model == "mean of earlier savings"
    assert pred.saving_fraction == pytest.approx(0.2)
    # LOO of a mean over 0.1/0.2/0.3: left-out errors 0.15, 0, 0.15
    assert pred.fit.loo_mae == pytest.approx(0.1) and pred.fit.loo_max_abs == pytest.approx(0.15)
    assert (pred.low, pred.high) == (pytest.approx(0.05), pytest.approx(0.35))


def test_fraction_is_a_feature_when_the_history_has_several():
    truth = lambda f: 0.8 * f  # noqa: E731
    hist = [AbPoint(f"prune-mlp:{f}", truth(f), params=10**7) for f in (0.1, 0.25, 0.5, 0.75)]
    pred = predict_action_saving(hist, "prune-mlp:0.4", params=10**7)
    assert pred.fit.model == "linear in fraction"
    assert pred.saving_fraction == pytest.approx(0.32)


def test_three_results_never_give_a_slope():
    # three points always fit a line when one is left out: a slope would be luck, so the mean
    hist = ab("quantize-int8", [(1e6, 0.38, None), (4e6, 0.28, None), (1e7, 0.19, None)])
    pred = predict_action_saving(hist, "quantize-int8", params=2 * 10**7)
    assert pred.fit.model == "mean of earlier savings"
    assert [c[0] for c in pred.fit.candidates] == ["mean of earlier savings"]
    assert pred.saving_fraction == pytest.approx((0.38 + 0.28 + 0.19) / 3)


@pytest.mark.parametrize("action", ["prune-layers", "quantize-int8-static", "quantize-int8-weight-only"])
def test_new_actions_learn_from_their_own_stored_results(action):
    truth = lambda f: 0.9 * f  # noqa: E731
    if action == "prune-layers":
        hist = [AbPoint(f"prune-layers:{f}", truth(f), params=10**7) for f in (0.1, 0.25, 0.5, 0.75)]
        hist.append(AbPoint("prune-mlp:0.5", -0.5, params=10**7))  # another action's result: ignored
        pred = predict_action_saving(hist, "prune-layers:0.4", params=10**7)
        assert pred.saving_fraction == pytest.approx(0.36)
    else:
        hist = ab(action, [(1e6, 0.1, None), (4e6, 0.2, None), (1e7, 0.3, None)])
        hist = [*hist, *ab("quantize-int8", [(1e6, 0.9, None), (2e6, 0.9, None), (3e6, 0.9, None)])]
        pred = predict_action_saving(hist, action, params=2 * 10**7)
        assert pred.saving_fraction == pytest.approx(0.2)


def test_stored_results_of_the_new_actions_train_their_own_regression_only(tmp_path):
    """A/B rows as `wattlens optimize` stores them (Store.add_measurements, kind "ab") for the new
    actions: each kind learns from its own rows; a combined spec (prune then quantize) is its own
    kind, never a prune-layers result."""
    from wattlens.advisor.features import ab_points
    from wattlens.profiler.store import Store

    store = Store(tmp_path / "w.db")
    rows = [("quantize-int8-static", p, 0.1 + 0.05 * i) for i, p in enumerate((10**6, 4 * 10**6, 10**7))]
    rows += [(f"prune-layers:{f}", 10**7, 0.8 * f) for f in (0.25, 0.34, 0.5, 0.75)]
    rows += [("prune-layers:0.34,quantize-int8", 10**7, -0.9), ("prune-layers:0.5,quantize-int8", 10**7, -0.7),
             ("prune-layers:0.75,quantize-int8", 10**7, -0.5)]
    store.add_measurements([{"session_id": None, "kind": "ab", "model_key": f"m:{p}", "action": a,
                             "saving_fraction": s, "params": p, "payload": {}} for a, p, s in rows])
    history = ab_points(store.measurements("ab"))
    store.close()
    static = predict_action_saving(history, "quantize-int8-static", params=2 * 10**6)
    assert static.ok and static.fit.n_points == 3 and static.saving_fraction == pytest.approx(0.15)
    layers = predict_action_saving(history, "prune-layers:0.4", params=10**7)
    assert layers.ok and layers.fit.n_points == 4 and layers.fit.model == "linear in fraction"
    assert layers.saving_fraction == pytest.approx(0.32)
    combo = predict_action_saving(history, "prune-layers:0.34,quantize-int8", params=10**7)
    assert combo.ok and combo.fit.n_points == 3 and combo.saving_fraction == pytest.approx(-0.7)
