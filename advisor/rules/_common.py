"""Small helpers the rules share: evidence rows, confidence from a fit, percent text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wattlens.advisor.recommend import MODEL_PLACEHOLDER, Evidence, Level
from wattlens.advisor.regression import Fit

if TYPE_CHECKING:
    from wattlens.advisor.features import SessionFeatures

LAYER_SOURCE = {
    "stack-sampling": "stack sampling (CPU-side time by module class)",
    "agent-timing": "agent timing (per module instance)",
}


def model_arg(f: SessionFeatures) -> str:
    """The model a rule's command names: the Hugging Face folder the session knows (an optimize
    session's, or the one the agent saw a model loaded from) where it is on this host, else the
    MODEL placeholder (a module file needs --trust-pickle and its own route: quantize_int8.route)."""
    return f.model_path if f.model_path and f.model_kind == "hf-folder" else MODEL_PLACEHOLDER


def model_source(f: SessionFeatures) -> str:
    """Where the session learnt which model it measured, for an evidence row."""
    return f.model_path_source or "optimize session settings"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.0f} %"


def ev(what: str, value, unit: str, source: str) -> Evidence:
    if isinstance(value, float):
        value = round(value, 6)
    return Evidence(what, value, unit, source)


def layer_source(method: str | None) -> str:
    return LAYER_SOURCE.get(method or "", method or "layer costs")


def fit_confidence(fit: Fit | None, relative_error: float | None = None) -> Level:
    """How much to trust a regression: its leave-one-out error, relative to the predicted value.

    < 5 % with ≥ 5 points: high; < 10 %: medium; otherwise low (as a rule of thumb would be).
    """
    if fit is None:
        return "low"
    rel = relative_error if relative_error is not None else fit.loo_mape
    if rel is None:
        return "low"
    if rel < 0.05 and fit.n_points >= 5:
        return "high"
    if rel < 0.10:
        return "medium"
    return "low"


def top_layer_evidence(features, category: str | None = None, n: int = 3) -> list[Evidence]:
    """The largest layers (by self time), optionally of one category, as evidence rows."""
    rows = [t for t in features.top_layers if category is None or t.category == category][:n]
    src = layer_source(features.layer_method)
    # the features add a module's forward and backward rows up (the agent times both phases of a
    # training model per module), while show and the reports list them apart: say which it is
    both = getattr(features, "is_training", None) and features.layer_method == "agent-timing"
    name = "forward + backward self time share of" if both else "self time share of"
    return [ev(f"{name} {t.path}", t.share, "fraction of sampled time", src) for t in rows]
