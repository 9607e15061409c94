"""Session totals computed from stored (or live) series: one place for this arithmetic.

Everything here is derived from measured series; a figure that cannot be derived is None with a
reason next to it. The summary is cached in the session row and can be recomputed at any time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from wattlens.profiler import figures
from wattlens.profiler.figures import energy_between  # noqa: F401 - the name callers import
from wattlens.profiler.records import LayerCost, StepRecord

JOULES_PER_WH = 3600.0


def _last(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    if s is None or len(s[0]) == 0:
        return None
    return float(s[1][-1])


def _span_s(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    if s is None or len(s[0]) < 2:
        return None
    return float(s[0][-1] - s[0][0]) / 1e9


def _mean(series: Mapping, key: str) -> float | None:
    s = series.get(key)
    return float(np.mean(s[1])) if s is not None and len(s[1]) else None


def target_energy_between(series: Mapping) -> figures.EnergyBetween:
    """The target's energy between two monotonic times, from a session's series (a window that
    began before the first sample gets the energy since the baseline, as live)."""
    t, cum = series.get("target/energy_j", (np.empty(0), np.empty(0)))
    return lambda t0, t1: figures.energy_between(t, cum, t0, t1, since_baseline=True)


#: The version of the figures :func:`summarize` computes. A session's summary is stored when it
#: ends, as a cache for the sessions listing; one stored by a wattlens whose figures differ (a
#: lower or no version) is recomputed from the stored rows when it is listed
#: (``Store.sessions``), so the listing reads as ``show`` does. Raise it when a change alters
#: a stored session's figures (2: a ranked step's energy is its rank's share of the job's).
FIGURES_VERSION = 2


def summarize(session: dict, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
              steps: Sequence[StepRecord] = (), layers: Sequence[LayerCost] = (),
              reasons: Mapping[str, str] | None = None, grid_g_per_kwh: float | None = None) -> dict:
    reasons = dict(reasons or {})
    sources_out = []
    total_j = 0.0
    any_energy = False
    methods = set()
    # a GPU module whose counter covers its CPU (GH200): CPU sources are already inside it
    cpu_in_gpu = any(src.get("covers_cpu") or (src.get("details") or {}).get("covers_cpu")
                     for src in session.get("sources", []))
    for src in session.get("sources", []):
        sid = src["id"]
        energy_j = _last(series, f"{sid}/energy_j")
        span = _span_s(series, f"{sid}/energy_j")
        att = _last(series, f"target/{sid}/energy_j")
        row = {
            "id": sid, "kind": src["kind"], "method": src["method"], "label": src.get("label", sid),
            "energy_j": energy_j,
            "mean_power_w": figures.mean_power_w(energy_j, span),
            "max_power_w": (float(np.max(series[f"{sid}/power_w"][1]))
                            if f"{sid}/power_w" in series and len(series[f"{sid}/power_w"][1]) else None),
            "mean_util_pct": _mean(series, f"{sid}/util_pct"),
            "attributed_energy_j": att,
            "idle_power_w": _last(series, f"{sid}/idle_power_w"),
        }
        if energy_j is None:
            row["reason"] = reasons.get(f"{sid}/energy_j", "no energy samples were recorded")
        elif cpu_in_gpu and src["kind"] != "gpu":
            row["note"] = "inside the GPU module's energy counter (GH200): not added to the total"
        else:
            total_j += energy_j
            any_energy = True
            methods.add(src["method"])
        if att is None and session.get("target_pid") is not None:
            row["attributed_reason"] = reasons.get(f"target/{sid}/energy_j", "no attributed samples")
        sources_out.append(row)
    target_j = _last(series, "target/energy_j")
    target_span = _span_s(series, "target/energy_j")
    out = {
        "figures_version": FIGURES_VERSION,
        "session_id": session.get("id"),
        "name": session.get("name"),
        "status": session.get("status"),
        "duration_s": session.get("duration_s"),
        "sources": sources_out,
        "energy_j": total_j if any_energy else None,
        "energy_wh": total_j / JOULES_PER_WH if any_energy else None,
        "energy_method": "+".join(sorted(methods)) if methods else None,
        "mean_power_w": (sum(s["mean_power_w"] for s in sources_out)
                         if sources_out and all(s["mean_power_w"] is not None for s in sources_out) else None),
        "target": None,
        "steps": None,
    }
    if session.get("target_pid") is not None:
        attributed = [s for s in sources_out if s["attributed_energy_j"] is not None]
        att_methods = sorted({s["method"] for s in attributed})
        if not attributed:  # only the total's 0-J baseline: no source's energy was attributed
            target_j = target_span = None
        rules = []
        if any(s["kind"] in ("cpu", "dram") for s in attributed):
            rules.append("cpu-time share (CPU/DRAM)")
        if any(s["kind"] == "gpu" and s["idle_power_w"] is not None for s in attributed):
            rules.append("sm share × dynamic power (GPU)")
        if any(s["kind"] == "gpu" and s["idle_power_w"] is None for s in attributed):
            rules.append("sm share × total power, idle unknown (GPU)")
        out["target"] = {
            "pid": session["target_pid"],
            "energy_j": target_j,
            "energy_wh": target_j / JOULES_PER_WH if target_j is not None else None,
            "mean_power_w": figures.mean_power_w(target_j, target_span),
            "method": (f"attributed: {', '.join(rules)} of {'+'.join(att_methods)} energy"
                       if att_methods else None),
            "mean_cpu_pct": _mean(series, "target/cpu_pct"),
        }
        if target_j is None:
            out["target"]["reason"] = next(
                (s["attributed_reason"] for s in sources_out if s.get("attributed_reason")),
                "no attributed samples were recorded")
    if grid_g_per_kwh is not None and out["energy_j"] is not None:
        basis_j = target_j if target_j is not None else total_j
        out["co2_g"] = figures.co2_g(basis_j, grid_g_per_kwh)
        out["co2_basis"] = f"{'target' if target_j is not None else 'all sources'} energy × {grid_g_per_kwh:g} gCO2/kWh"
    if steps:
        out["steps"] = step_stats(figures.fill_step_energy(steps, target_energy_between(series)))
    if layers:
        out["top_layers"] = top_layers(layers, n=10)
        cov = layer_coverage(sum(lc.self_energy_j for lc in layers if lc.self_energy_j is not None)
                             if any(lc.self_energy_j is not None for lc in layers) else None,
                             target_j, {lc.method for lc in layers},
                             estimated="estimated" in ((out.get("target") or {}).get("method") or ""))
        if cov is not None:
            out["layer_coverage"] = cov
    return out


#: what the target's energy outside the layer rows is, by how the rows were measured
_LAYER_REST = {
    "agent-timing": "outside the timed steps (start-up, loading, between steps)",
    "stack-sampling": "between the sampling windows",
}


def _joules(x: float) -> str:
    return f"{x:.1f} J" if abs(x) >= 10 else f"{x:.3g} J"


def layer_coverage(layers_energy_j: float | None, target_energy_j: float | None,
                   methods: set[str] | frozenset[str] = frozenset(), *, estimated: bool = False) -> dict | None:
    """How much of the target's energy the layer rows hold (their self energies add up to it) and
    where the rest is, as one dict every view shows (``text``): the layers' shares are of the
    layers' total, not of the target's. None without both figures."""
    if layers_energy_j is None or not target_energy_j or target_energy_j <= 0:
        return None
    frac = layers_energy_j / target_energy_j
    rest = ("; ".join(_LAYER_REST[m] for m in sorted(methods) if m in _LAYER_REST)
            or "outside the measured layer windows")
    text = (f"layers: {_joules(layers_energy_j)} of the target's {_joules(target_energy_j)} "
            f"({'estimated, ' if estimated else ''}{frac * 100:.0f} %); "
            "the layers' % are shares of the layers' figures, not of the target's"
            + (f"; the rest: {rest}" if frac < 0.995 else ""))  # none left to place
    return {"layers_energy_j": layers_energy_j, "target_energy_j": target_energy_j, "fraction": frac,
            "rest": rest, "text": text}


def step_stats(steps: Sequence[StepRecord]) -> dict:
    """Steps, and energy per step, sample and token. In a job of several ranks each rank reports
    its own steps (with its own share of the energy): a step of the job is one step of every rank,
    so ``count`` is the job's steps (the most any rank made, as the rank table's "job" row) and
    energy per step is per job step; ``rank_steps`` and ``ranks`` say what was added up."""
    with_e = [s for s in steps if s.energy_j is not None]
    energy = sum(s.energy_j for s in with_e)
    samples = sum(s.samples or 0 for s in with_e)
    tokens = sum(s.tokens or 0 for s in with_e)
    durations = [(s.t_end_ns - s.t_start_ns) / 1e9 for s in steps]
    ranks = Counter(s.rank for s in steps if s.rank is not None)
    count, counted_e = len(steps), len(with_e)
    if len(ranks) > 1:
        count = max(ranks.values())
        counted_e = max(Counter(s.rank for s in with_e if s.rank is not None).values(), default=0)
    out = {
        "count": count,
        "with_energy": counted_e,
        "mean_duration_s": float(np.mean(durations)) if durations else None,
        "energy_per_step_j": energy / counted_e if counted_e else None,
        "energy_per_sample_j": energy / samples if with_e and samples else None,
        "energy_per_token_j": energy / tokens if with_e and tokens else None,
        "samples": sum(s.samples or 0 for s in steps) or None,
        "tokens": sum(s.tokens or 0 for s in steps) or None,
    }
    if len(ranks) > 1:
        out["ranks"], out["rank_steps"] = len(ranks), len(steps)
    if not with_e:
        out["reason"] = "no step had a measured energy (the session may have been too short)"
    return out


def top_layers(layers: Sequence[LayerCost], n: int | None = 10) -> list[dict]:
    """Aggregate windows per (path, granularity, phase): time and energy, costliest (self) first;
    the ``n`` costliest, or every row with ``n=None``."""
    agg: dict[tuple[str, str, str], dict] = {}
    total_t = 0.0
    for lc in layers:
        key = (lc.path, lc.granularity, lc.phase)
        a = agg.setdefault(key, {"path": lc.path, "granularity": lc.granularity, "phase": lc.phase,
                                 "method": lc.method, "time_s": 0.0, "self_time_s": 0.0,
                                 "energy_j": None, "self_energy_j": None})
        a["time_s"] += lc.time_s
        a["self_time_s"] += lc.self_time_s or 0.0
        if lc.energy_j is not None:
            a["energy_j"] = (a["energy_j"] or 0.0) + lc.energy_j
        if lc.self_energy_j is not None:
            a["self_energy_j"] = (a["self_energy_j"] or 0.0) + lc.self_energy_j
        total_t += lc.self_time_s or 0.0
    # costliest first by what the node itself spends (children excluded), so a model's root or a
    # block that only contains other modules does not hide the layers that do the work
    rows = sorted(agg.values(), key=lambda a: (a["self_energy_j"] or 0.0, a["self_time_s"]), reverse=True)
    se = _self_share_se(layers)
    for a in rows:
        a["self_share"] = a["self_time_s"] / total_t if total_t else None
        a["self_share_se"] = se.get((a["path"], a["granularity"], a["phase"]))
    return rows if n is None else rows[:n]


def _self_share_se(layers: Sequence[LayerCost]) -> dict[tuple[str, str, str], float]:
    """Standard error of each sampled node's self share (``figures.SelfShareSE``), the rows
    taken window by window."""
    per_window: dict[int, list[LayerCost]] = {}
    for lc in layers:
        per_window.setdefault(lc.window_start_ns, []).append(lc)
    acc = figures.SelfShareSE()
    for rows in per_window.values():
        acc.add_window(rows)
    return acc.all()
