"""Lost-read accounting (profiler/stacks/lost.py): the math on synthetic reads with a known truth.

A simulated target spends known shares of its time in classes whose non-blocking reads fail at
different rates (short calls fail often, one long call never). Dropping the failed reads leans to
the long call; spreading them with a few exact (blocking) calibration reads must not.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from wattlens.profiler.stacks.lost import (
    HANDLING_CALIBRATED,
    HANDLING_NONE,
    HANDLING_PROPORTIONAL,
    LossAccount,
    allocate_lost,
)

# class -> (true share of time, probability that a non-blocking read there fails)
TRUTH = {
    "lm_head": (0.33, 0.0),  # one long matmul: the stack never changes under the reader
    "mlp": (0.30, 0.12),
    "attention": (0.25, 0.18),
    "norm": (0.12, 0.30),  # short Python calls: the stack changes all the time
}


def simulate(rng: random.Random, n_reads: int, n_cal: int) -> tuple[Counter, int, Counter]:
    """(non-blocking counts that succeeded, failed reads, blocking calibration counts)."""
    names = list(TRUTH)
    weights = [TRUTH[k][0] for k in names]
    observed: Counter = Counter()
    failed = 0
    for cls in rng.choices(names, weights, k=n_reads):
        if rng.random() < TRUTH[cls][1]:
            failed += 1
        else:
            observed[cls] += 1
    calibration = Counter(rng.choices(names, weights, k=n_cal))
    return observed, failed, calibration


def shares(counts: dict) -> dict:
    total = sum(counts.values())
    return {k: counts.get(k, 0) / total for k in TRUTH}


def test_allocation_is_non_negative_and_adds_up():
    observed = {"a": 50, "b": 30, "c": 20}
    alloc = allocate_lost(observed, {"a": 2, "b": 5, "c": 3, "d": 1}, 17)
    assert all(v >= 0 for v in alloc.values())
    assert sum(alloc.values()) == pytest.approx(17)
    assert "d" in alloc  # a class only the calibration saw (every non-blocking read of it failed)
    assert alloc.get("a", 0.0) < alloc["b"]  # a is over-represented in the non-blocking reads


def test_allocation_is_proportional_when_calibration_agrees_or_is_missing():
    observed = {"a": 60, "b": 30, "c": 10}
    agree = allocate_lost(observed, {"a": 6, "b": 3, "c": 1}, 10)
    assert agree == pytest.approx({"a": 6.0, "b": 3.0, "c": 1.0})
    none = allocate_lost(observed, {}, 10)
    assert none == pytest.approx({"a": 6.0, "b": 3.0, "c": 1.0})
    assert allocate_lost(observed, {"a": 1}, 0) == {}


def test_allocation_is_the_constrained_maximum_likelihood():
    # water-filling: n + e = max(n, lam * m); the log-likelihood sum m log(n + e) is maximal there
    import math

    observed, calibration, lost = {"a": 40, "b": 40, "c": 20}, {"a": 3, "b": 5, "c": 4}, 30.0
    best = allocate_lost(observed, calibration, lost)

    def loglik(e: dict) -> float:
        return sum(m * math.log(observed[k] + e.get(k, 0.0)) for k, m in calibration.items())

    rng = random.Random(7)
    for _ in range(300):  # no other feasible allocation does better
        w = [rng.random() for _ in observed]
        other = {k: lost * x / sum(w) for k, x in zip(observed, w, strict=True)}
        assert loglik(other) <= loglik(best) + 1e-9


def errors_over_sessions(seed: int, reps: int, n_reads: int, n_cal: int) -> tuple[dict, dict]:
    """Per class, (share read by dropping the failed reads - truth, calibrated share - truth)."""
    rng = random.Random(seed)
    naive_err: dict = {k: [] for k in TRUTH}
    fixed_err: dict = {k: [] for k in TRUTH}
    for _ in range(reps):
        observed, failed, calibration = simulate(rng, n_reads, n_cal)
        alloc = allocate_lost(observed, calibration, failed)
        corrected = {k: observed.get(k, 0) + alloc.get(k, 0.0) for k in TRUTH}
        for k, (truth, _) in TRUTH.items():
            naive_err[k].append(shares(observed)[k] - truth)
            fixed_err[k].append(shares(corrected)[k] - truth)
    return naive_err, fixed_err


def mean(xs: list) -> float:
    return sum(xs) / len(xs)


def se(xs: list) -> float:
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5


def test_dropping_failed_reads_is_biased_and_calibrated_spreading_removes_most_of_it():
    # one minute at 50 Hz non-blocking with 5 Hz blocking calibration, 300 simulated sessions
    naive_err, fixed_err = errors_over_sessions(2026, reps=300, n_reads=3000, n_cal=300)
    # dropping: the never-failing long call reads ~4 pp high, far outside the noise
    naive_bias = mean(naive_err["lm_head"])
    assert naive_bias > 0.03 and naive_bias > 10 * se(naive_err["lm_head"])
    # calibrated: what is left is the small-sample effect of "a lost read only adds" (a class that
    # never fails cannot be read below its non-blocking count): a third of the naive bias or less
    worst_naive = max(abs(mean(naive_err[k])) for k in TRUTH)
    worst_fixed = max(abs(mean(fixed_err[k])) for k in TRUTH)
    assert worst_fixed < worst_naive / 3


def test_calibrated_spreading_is_consistent():
    # ten times the reads (a ten-minute session): the leftover bias shrinks towards 0, while the
    # bias of dropping the failed reads stays where it was
    naive, short = errors_over_sessions(11, reps=60, n_reads=3000, n_cal=300)
    _, long = errors_over_sessions(11, reps=60, n_reads=30000, n_cal=3000)
    assert abs(mean(long["lm_head"])) < abs(mean(short["lm_head"])) / 2
    assert abs(mean(long["lm_head"])) < abs(mean(naive["lm_head"])) / 8


def test_loss_account_adds_each_windows_lost_reads_back():
    rng = random.Random(3)
    account = LossAccount()
    assert account.handling == HANDLING_NONE
    for _ in range(12):  # 5 s windows: 250 reads, 25 calibration reads each
        observed, failed, calibration = simulate(rng, 250, 25)
        out = account.correct(observed, failed=failed, torn=2, calibration=calibration)
        assert sum(out.values()) == pytest.approx(sum(observed.values()) + failed + 2)
        assert all(out.get(k, 0.0) >= observed.get(k, 0) for k in out)
    summary = account.summary()
    assert summary["torn"] == 24 and summary["failed"] == account.failed > 0
    assert summary["reads"] == 12 * 250 + 24
    assert summary["calibration_reads"] == 12 * 25
    assert account.handling == HANDLING_CALIBRATED
    assert "lost" in account.message() and "\n" not in account.message()


def test_loss_account_without_calibration_says_the_bias_remains():
    account = LossAccount()
    out = account.correct({"a": 9, "b": 1}, failed=10, torn=0, calibration={})
    assert out == pytest.approx({"a": 18.0, "b": 2.0})
    assert account.handling == HANDLING_PROPORTIONAL
    assert "leans to long calls" in account.message()
