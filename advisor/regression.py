"""Regressions fitted on the user's own stored measurements, refitted from rows every time.

Two questions, each answered with its cross-validated error or with "measure first":

(a) :func:`fit_energy_vs_batch` — energy per sample against batch size, from batch-size sweep
    rows. A few small scikit-learn pipelines compete (a power law, a fixed per-batch overhead
    amortised over the batch, a quadratic in log batch size when there are enough points); the
    one with the lowest leave-one-out error wins, simpler first on a tie. It recommends the batch
    size that minimises J/sample *within the sizes that were measured to fit in memory* — it
    never extrapolates past them.
(b) :func:`predict_action_saving` — the saving of one action kind (``quantize-int8``,
    ``quantize-int8-static``, ``prune-layers`` …; a combined spec such as
    ``prune-layers:0.34,quantize-int8`` is a kind of its own) against model size (parameters), FLOPs and the pruning fraction, from
    earlier A/B results. Published results disagree on when these techniques pay off, so the
    only trustworthy predictor is the user's own history on their own machine.

Nothing is ever loaded from a pickle: the database holds measurement rows, and the models are
fitted from them on demand (they are tiny). scikit-learn is imported lazily so ``wattlens advise``
only pays for it when there is something to fit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wattlens.advisor.recommend import (
    MEASURE_FIRST,
    MODEL_PLACEHOLDER,
    PredictedSaving,
    measure_first,
    optimize_command,
    sweep_command,
)

#: Fewer distinct points than this and a fit is a guess: we answer "measure first" instead.
MIN_POINTS = 3
DEFAULT_SWEEP = (1, 2, 4, 8, 16, 32)
#: Statuses of sweep rows that mark a memory limit (see advisor/optimize.py SweepRow).
LIMIT_STATUSES = ("oom", "memory-guard")


# --------------------------------------------------------------------------- input points


@dataclass(frozen=True)
class SweepPoint:
    """One batch size of a stored sweep (a ``batch-sweep`` measurement row)."""

    batch_size: int
    energy_per_sample_j: float | None
    throughput_per_s: float | None = None
    status: str = "ok"
    model_key: str = ""


@dataclass(frozen=True)
class AbPoint:
    """One stored A/B result (an ``ab`` measurement row): saving = 1 - E_candidate / E_baseline."""

    action: str
    saving_fraction: float
    params: int | None = None
    flops: int | None = None
    model_key: str = ""


def action_name(spec: str) -> str:
    """``"prune-heads:0.25"`` → ``"prune-heads"``; a combined spec is its own kind:
    ``"prune-layers:0.34,quantize-int8"`` → ``"prune-layers,quantize-int8"`` (its saving is not a
    prune-layers saving, so it must not train that regression)."""
    return ",".join(part.split(":", 1)[0].strip() for part in spec.split(",") if part.strip())


def action_fraction(spec: str) -> float | None:
    """The fraction of a single ``name:F`` spec; None without one or for a combined spec."""
    if "," in spec:
        return None
    _, sep, arg = spec.partition(":")
    if not sep:
        return None
    try:
        return float(arg)
    except ValueError:
        return None


# --------------------------------------------------------------------------- fit results


@dataclass(frozen=True)
class Fit:
    """The winning model of a leave-one-out competition and its errors (units of the target)."""

    model: str
    n_points: int
    loo_mae: float
    loo_max_abs: float
    loo_mape: float | None
    candidates: tuple[tuple[str, float], ...]  # (model, LOO MAE) of every candidate tried
    coefficients: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_points": self.n_points, "loo_mae": self.loo_mae,
                "loo_max_abs": self.loo_max_abs, "loo_mape": self.loo_mape,
                "candidates": [list(c) for c in self.candidates], "coefficients": self.coefficients}


@dataclass(frozen=True)
class BatchSizeAdvice:
    """Answer of :func:`fit_energy_vs_batch`.

    ``status`` is ``"ok"`` or ``"measure-first"`` (then ``measure_command`` names the sweep to
    run and every prediction is None). ``max_batch_size`` is the largest size measured to run;
    ``limit`` says whether memory stopped the sweep there.
    """

    status: str
    reason: str
    fit: Fit | None = None
    best_batch_size: int | None = None
    best_energy_per_sample_j: float | None = None
    max_batch_size: int | None = None
    min_batch_size: int | None = None
    limit: str | None = None
    curve: tuple[tuple[int, float], ...] = ()
    measured: tuple[tuple[int, float], ...] = ()
    measure_command: str | None = None
    notes: tuple[str, ...] = ()
    _estimator: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def predict(self, batch_size: int) -> float | None:
        """Predicted J/sample at ``batch_size``; None outside the measured range (no extrapolation)."""
        if not self.ok or self.min_batch_size is None or self.max_batch_size is None:
            return None
        if not self.min_batch_size <= batch_size <= self.max_batch_size:
            return None
        return float(self._estimator.predict(np.array([[float(batch_size)]]))[0])

    def saving(self, from_batch_size: int | None, to_batch_size: int | None = None,
               model: str = MODEL_PLACEHOLDER) -> PredictedSaving:
        """Predicted saving of J/sample when moving from one batch size to another (default: the
        best one), with the interval from the largest leave-one-out error."""
        to_bs = to_batch_size or self.best_batch_size
        if not self.ok or to_bs is None:
            return measure_first(self.reason, self.measure_command)
        if from_batch_size is None:
            return measure_first("the batch size the session ran at is unknown, so the saving "
                                 f"of moving to batch {to_bs} cannot be stated; report samples per "
                                 "step (agent.step(samples=...)) or compare sizes in the sweep",
                                 sweep_command(_sweep_sizes(None, self.max_batch_size), model))
        e_from, e_to = self.predict(from_batch_size), self.predict(to_bs)
        if e_from is None or e_to is None:
            sizes = _sweep_sizes(from_batch_size, self.max_batch_size)
            return measure_first(f"batch size {from_batch_size} is outside the measured range "
                                 f"{self.min_batch_size}…{self.max_batch_size}; the regression does not "
                                 "extrapolate", sweep_command(sizes, model))
        assert self.fit is not None
        h = self.fit.loo_max_abs
        central = 1.0 - e_to / e_from
        high = 1.0 - max(e_to - h, 0.0) / (e_from + h)
        low = 1.0 - (e_to + h) / (e_from - h) if e_from - h > 0 else -math.inf
        low = max(low, -1.0)  # report at most "twice the energy"; the interval says it is wide
        low, high = min(low, central), max(high, central)
        method = (f"regression ({self.fit.model} on {self.fit.n_points} batch sizes, "
                  f"LOO CV error ±{self.fit.loo_mae:.3g} J/sample)")
        text = (f"batch {from_batch_size} → {to_bs}: {e_from:.4g} → {e_to:.4g} J/sample predicted, "
                f"{central * 100:.1f} % less energy per sample (interval {low * 100:.1f} … "
                f"{high * 100:.1f} %, from the largest leave-one-out error ±{h:.3g} J/sample)")
        return PredictedSaving(central, low, high, method, text)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "fit": self.fit.to_dict() if self.fit else None,
                "best_batch_size": self.best_batch_size,
                "best_energy_per_sample_j": self.best_energy_per_sample_j,
                "min_batch_size": self.min_batch_size, "max_batch_size": self.max_batch_size,
                "limit": self.limit, "curve": [list(c) for c in self.curve],
                "measured": [list(m) for m in self.measured],
                "measure_command": self.measure_command, "notes": list(self.notes)}


@dataclass(frozen=True)
class SavingPrediction:
    """Answer of :func:`predict_action_saving` (fractions; the LOO error is in the same units)."""

    status: str  # ok | measure-first
    action: str
    reason: str
    saving_fraction: float | None = None
    low: float | None = None
    high: float | None = None
    fit: Fit | None = None
    measure_command: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_predicted_saving(self) -> PredictedSaving:
        if not self.ok:
            return measure_first(self.reason, self.measure_command)
        assert self.fit is not None
        method = (f"regression ({self.fit.model} on {self.fit.n_points} earlier A/B results of "
                  f"{action_name(self.action)}, LOO CV error ±{self.fit.loo_mae * 100:.1f} pp)")
        text = (f"{self.saving_fraction * 100:.1f} % less energy per sample predicted from your "
                f"earlier A/B results (interval {self.low * 100:.1f} … {self.high * 100:.1f} %, from "
                f"the largest leave-one-out error ±{self.fit.loo_max_abs * 100:.1f} pp)")
        return PredictedSaving(self.saving_fraction, self.low, self.high, method, text)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "action": self.action, "reason": self.reason,
                "saving_fraction": self.saving_fraction, "low": self.low, "high": self.high,
                "fit": self.fit.to_dict() if self.fit else None,
                "measure_command": self.measure_command}


# --------------------------------------------------------------------------- the LOO competition


def _loo_select(candidates: Sequence[tuple[str, Any, int]], X: np.ndarray, y: np.ndarray,
                *, relative_tie: float = 0.05) -> tuple[str, Any, Fit]:
    """Leave-one-out predictions of each candidate (name, estimator, points each LOO fit needs);
    the lowest MAE wins, but a candidate listed earlier (simpler) wins when within
    ``relative_tie`` of it."""
    from sklearn.base import clone
    from sklearn.model_selection import LeaveOneOut, cross_val_predict

    n = len(y)
    scored: list[tuple[str, Any, float, np.ndarray]] = []
    for name, est, n_params in candidates:
        if n - 1 < n_params:  # each LOO fit needs at least as many points as parameters
            continue
        with np.errstate(all="ignore"):
            pred = cross_val_predict(clone(est), X, y, cv=LeaveOneOut())
        err = np.abs(pred - y)
        if not np.all(np.isfinite(err)):
            continue
        scored.append((name, est, float(np.mean(err)), err))
    if not scored:
        raise ValueError("no candidate model could be cross-validated on these points")
    best_mae = min(s[2] for s in scored)
    name, est, mae, err = next(s for s in scored if s[2] <= best_mae * (1 + relative_tie) + 1e-12)
    fitted = clone(est).fit(X, y)
    nonzero = np.abs(y) > 0
    mape = float(np.mean(err[nonzero] / np.abs(y[nonzero]))) if np.all(nonzero) else None
    fit = Fit(model=name, n_points=n, loo_mae=mae, loo_max_abs=float(np.max(err)), loo_mape=mape,
              candidates=tuple((s[0], s[2]) for s in scored), coefficients=_coefficients(fitted))
    return name, fitted, fit


def _coefficients(est: Any) -> dict[str, float]:
    inner = getattr(est, "regressor_", est)
    last = inner.steps[-1][1] if hasattr(inner, "steps") else inner
    out: dict[str, float] = {}
    if hasattr(last, "coef_"):
        for i, c in enumerate(np.ravel(last.coef_)):
            out[f"coef_{i}"] = float(c)
        out["intercept"] = float(np.ravel(last.intercept_)[0]) if np.ndim(last.intercept_) else float(last.intercept_)
    elif hasattr(last, "constant_"):
        out["constant"] = float(np.ravel(last.constant_)[0])
    return out


def _batch_candidates() -> list[tuple[str, Any, int]]:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures

    def log_target(pipe):
        return TransformedTargetRegressor(regressor=pipe, func=np.log, inverse_func=np.exp)

    return [
        ("power law (log E linear in log batch)",
         log_target(make_pipeline(FunctionTransformer(np.log), LinearRegression())), 2),
        ("amortised overhead (E = a + b / batch)",
         make_pipeline(FunctionTransformer(np.reciprocal), LinearRegression()), 2),
        ("quadratic in log batch (log E)",
         log_target(make_pipeline(FunctionTransformer(np.log), PolynomialFeatures(2, include_bias=False),
                                  LinearRegression())), 4),  # 3 coefficients; ask for one spare point
    ]


# --------------------------------------------------------------------------- (a) batch size


def _sweep_sizes(current: int | None, largest: int | None) -> tuple[int, ...]:
    top = max(32, 2 * (largest or 0), 2 * (current or 0))
    sizes, b = [], 1
    while b <= top:
        sizes.append(b)
        b *= 2
    if current and current not in sizes:
        sizes = sorted({*sizes, current})
    return tuple(sizes)


def fit_energy_vs_batch(points: Sequence[SweepPoint], *, current_batch_size: int | None = None,
                        model: str = MODEL_PLACEHOLDER, min_points: int = MIN_POINTS) -> BatchSizeAdvice:
    """Fit J/sample against batch size and pick the best size within the memory limit seen.

    Repeated measurements of one size are averaged (leave-one-out runs over distinct sizes, so
    a replicate cannot vouch for itself). Rows whose status is ``oom``/``memory-guard`` mark the
    memory limit: the recommendation stays at or below the largest size that ran.
    """
    ok = [p for p in points if p.status == "ok" and p.energy_per_sample_j is not None
          and p.energy_per_sample_j > 0 and p.batch_size >= 1]
    by_size: dict[int, list[float]] = defaultdict(list)
    for p in ok:
        by_size[p.batch_size].append(float(p.energy_per_sample_j))
    measured = tuple(sorted((b, float(np.mean(v))) for b, v in by_size.items()))
    limited = sorted(p.batch_size for p in points if p.status in LIMIT_STATUSES)
    command = sweep_command(_sweep_sizes(current_batch_size, max(by_size) if by_size else None), model)
    if len(measured) < min_points:
        have = (f"only {len(measured)} batch size{'s' if len(measured) != 1 else ''} "
                f"({', '.join(str(b) for b, _ in measured)}) measured" if measured
                else "no batch-size sweep of this model is stored")
        return BatchSizeAdvice(status="measure-first",
                               reason=f"{have}; a fit needs at least {min_points}",
                               measured=measured, measure_command=command)
    X = np.array([[float(b)] for b, _ in measured])
    y = np.array([e for _, e in measured])
    name, est, fit = _loo_select(_batch_candidates(), X, y)
    lo, hi = int(measured[0][0]), int(measured[-1][0])
    grid = sorted({b for b, _ in measured} | {2 ** k for k in range(0, 21) if lo <= 2 ** k <= hi})
    pred = est.predict(np.array([[float(b)] for b in grid]))
    curve = tuple((int(b), float(e)) for b, e in zip(grid, pred, strict=True))
    best_b, best_e = min(curve, key=lambda c: (c[1], c[0]))
    above = [b for b in limited if b > hi]
    if above:
        limit = f"batch {above[0]} did not fit in memory (measured), so {hi} is the largest tried"
    else:
        limit = f"no memory limit was reached; {hi} is the largest size measured"
    notes = []
    if best_b == hi and not above:
        notes.append(f"energy per sample is still falling at batch {hi}, the largest measured: "
                     f"measure larger sizes to see where it stops ("
                     f"{sweep_command(tuple(hi * 2 ** k for k in range(0, 4)), model)})")
    return BatchSizeAdvice(
        status="ok", reason=f"{fit.model} fitted on {fit.n_points} batch sizes", fit=fit,
        best_batch_size=best_b, best_energy_per_sample_j=best_e, max_batch_size=hi,
        min_batch_size=lo, limit=limit, curve=curve, measured=measured, measure_command=command,
        notes=tuple(notes), _estimator=est)


# --------------------------------------------------------------------------- (b) action saving


def _saving_candidates(use_params: bool, use_flops: bool, use_fraction: bool
                       ) -> list[tuple[str, Any, int, list[int]]]:
    """(name, estimator, points each LOO fit needs, feature columns), simplest first.
    Columns: 0 log10 params, 1 log10 FLOPs, 2 fraction.

    A slope fitted on exactly as many points as it has coefficients has no residual, so its
    leave-one-out error measures only luck: with three results, the two left in always lie on
    *some* line. Every fit with a slope therefore asks for one spare point (a line needs four
    results, two features five); below that, the mean of earlier savings is the honest answer.
    """
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression

    cands: list[tuple[str, Any, int, list[int]]] = [
        ("mean of earlier savings", DummyRegressor(strategy="mean"), 1, [0]),
    ]
    if use_params:
        cands.append(("linear in log10 params", LinearRegression(), 3, [0]))
    if use_flops:
        cands.append(("linear in log10 FLOPs", LinearRegression(), 3, [1]))
        cands.append(("linear in log10 params and log10 FLOPs", LinearRegression(), 4, [0, 1]))
    if use_fraction:
        cands.append(("linear in fraction", LinearRegression(), 3, [2]))
        if use_params:
            cands.append(("linear in log10 params and fraction", LinearRegression(), 4, [0, 2]))
    return cands


def predict_action_saving(history: Sequence[AbPoint], action: str, *, params: int | None,
                          flops: int | None = None, model: str = MODEL_PLACEHOLDER,
                          min_points: int = MIN_POINTS) -> SavingPrediction:
    """Predict the saving of ``action`` on a model of ``params``/``flops`` from earlier A/B results
    of the same action kind (any fraction), with its leave-one-out error.

    Candidates: the mean of earlier savings; linear in log10 params; linear in log10 FLOPs (when
    every row and the query have FLOPs); the pruning fraction (when the history has several).
    Parameters unknown for the query model leave only the mean.
    """
    name = action_name(action)
    rows = [p for p in history if action_name(p.action) == name and p.saving_fraction is not None
            and math.isfinite(p.saving_fraction)]
    command = optimize_command(action, model)
    if len(rows) < min_points:
        return SavingPrediction(
            status="measure-first", action=action,
            reason=(f"{len(rows)} earlier A/B result{'s' if len(rows) != 1 else ''} of {name} stored; "
                    f"a prediction needs at least {min_points} (on models of different sizes)"),
            measure_command=command)
    frac_q = action_fraction(action)
    fracs = [action_fraction(p.action) for p in rows]
    use_params = params is not None and params > 0 and all(p.params for p in rows)
    use_flops = use_params and flops is not None and flops > 0 and all(p.flops for p in rows)
    use_fraction = frac_q is not None and None not in fracs and len(set(fracs)) > 1
    X = np.array([[math.log10(p.params) if use_params else 0.0,
                   math.log10(p.flops) if use_flops else 0.0,
                   f if use_fraction else 0.0] for p, f in zip(rows, fracs, strict=True)])
    q = np.array([[math.log10(params) if use_params else 0.0,
                   math.log10(flops) if use_flops else 0.0,
                   frac_q if use_fraction else 0.0]])
    y = np.array([p.saving_fraction for p in rows])
    cands = _saving_candidates(use_params, use_flops, use_fraction)
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    wrapped = [(n, make_pipeline(ColumnTransformer([("x", "passthrough", cols)]), est), k)
               for n, est, k, cols in cands]
    _, est, fit = _loo_select(wrapped, X, y)
    value = float(est.predict(q)[0])
    h = fit.loo_max_abs
    return SavingPrediction(status="ok", action=action,
                            reason=f"{fit.model} fitted on {fit.n_points} A/B results of {name}",
                            saving_fraction=value, low=value - h, high=value + h, fit=fit,
                            measure_command=command)


def describe_fit(fit: Fit | None) -> str:
    if fit is None:
        return MEASURE_FIRST
    mape = f", {fit.loo_mape * 100:.1f} % mean relative" if fit.loo_mape is not None else ""
    return f"{fit.model}: LOO MAE {fit.loo_mae:.4g}{mape} over {fit.n_points} points"
