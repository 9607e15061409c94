"""The rich report's content as plain views: the report dict (data.py) and the stored series
turned into rows of cells, lines to plot and recommendation/action views, shared by the HTML and
PDF renderers so the two never disagree on a number. Pure: no matplotlib, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wattlens.app import present
from wattlens.app.gui.models.format import layer_label, share_with_se
from wattlens.app.report.formats import fmt
from wattlens.profiler.stacks import backward_map

MAX_PLOT_POINTS = 2000  # per line; longer series keep each bucket's min and max (peaks survive)
METHOD_TEXT = {
    "counter": "hardware energy counter (NVML total energy, RAPL energy_uj): measured",
    "polled": "power readings integrated over time (trapezoid): measured",
    "estimated": "CPU power model (idle + (TDP − idle) × busy fraction): an estimate, not a measurement",
    "attributed": "the target's share: CPU-time share of CPU/DRAM energy, SM share × dynamic power of GPU energy",
    "stack-sampling": "CPU-side time share by module class, from sampled Python stacks (py-spy)",
    "agent-timing": "per-module timings from the in-process agent (perf_counter on CPU, CUDA events on GPU)",
    backward_map.METHOD: backward_map.METHOD_TEXT,
}
NO_LAYERS = ("n/a — no layer figures were recorded for this session (they come from stack sampling in "
             "`wattlens attach`, or from the agent in `wattlens run`).")
CMP_NOTE = ("Estimate marks follow this session's methods; the other session's figures were obtained by its "
            "own sources: its report shows their methods.")
INCLUSIVE_NOTE = ("Time and Energy are inclusive: a module includes its children, so nested rows overlap. "
                  "Self figures exclude the children; self share is the module's part of all profiled time "
                  "(the top layers are listed, so the shares shown need not add up to 100 %).")
SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass(frozen=True)
class Line:
    """One plotted series, its time axis already in seconds since the session's start."""

    key: str
    label: str
    unit: str
    method: str
    t_s: np.ndarray
    value: np.ndarray
    color: str
    dashed: bool = False
    bold: bool = False

    @property
    def estimated(self) -> bool:
        return "estimated" in self.method


def time_origin_ns(report: dict, series_data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[int | None, str]:
    """(t0_ns, x-axis label): the session's start when the report carries ``session.start_ns``,
    else the earliest stored sample (and the label says so)."""
    start = (report.get("session") or {}).get("start_ns")
    if start is not None:
        return int(start), "time since session start (s)"
    firsts = [int(t[0]) for t, _ in series_data.values() if len(t)]
    if not firsts:
        return None, "time since session start (s)"
    return min(firsts), "time since first sample (s)"


def thin(t: np.ndarray, v: np.ndarray, max_points: int = MAX_PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points for drawing: each bucket keeps its min and max in time order, so
    peaks stay visible. Only the drawing is thinned; every figure is computed from all samples."""
    n = len(t)
    if n <= max_points:
        return t, v
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(int)
    keep: list[int] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        seg = v[a:b]
        i, j = a + int(np.argmin(seg)), a + int(np.argmax(seg))
        keep += sorted({i, j})
    idx = np.array(keep, dtype=int)
    return t[idx], v[idx]


def timelines(report: dict, series_data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, list[Line]], str]:
    """The lines of the three time plots — "power", "energy", "util" — and the x-axis label.

    Power: each source, the target's share of each source (dashed), and the target's total when it
    differs from a single share. Energy (cumulative): each source and the target's total.
    Utilisation: each source's busy percentage and the target's CPU (% of one core).
    """
    meta = {s["key"]: s for s in report.get("series") or []}
    t0, xlabel = time_origin_ns(report, series_data)
    sources = [s["id"] for s in report.get("sources") or []]
    colors = {sid: SERIES_COLORS[i % len(SERIES_COLORS)] for i, sid in enumerate(sources)}

    def line(key: str, color: str, *, dashed: bool = False, bold: bool = False) -> Line | None:
        if key not in series_data or key not in meta or t0 is None:
            return None
        t, v = series_data[key]
        if len(t) == 0:
            return None
        t, v = thin(np.asarray(t), np.asarray(v, dtype=float))
        m = meta[key]
        return Line(key, m.get("label") or key, m.get("unit") or "", m.get("method") or "",
                    (t - t0) / 1e9, v, color, dashed, bold)

    attributed_power = [f"target/{sid}/power_w" for sid in sources if f"target/{sid}/power_w" in series_data]
    power = [line(f"{sid}/power_w", colors[sid]) for sid in sources]
    power += [line(k, colors[k.split("/")[1]], dashed=True) for k in attributed_power]
    if len(attributed_power) != 1:
        power.append(line("target/power_w", "#000000", bold=True))
    energy = [line(f"{sid}/energy_j", colors[sid]) for sid in sources]
    energy.append(line("target/energy_j", "#000000", dashed=True, bold=True))
    util = [line(f"{sid}/util_pct", colors[sid]) for sid in sources]
    util.append(line("target/cpu_pct", "#000000", dashed=True))
    out = {"power": [x for x in power if x], "energy": [x for x in energy if x], "util": [x for x in util if x]}
    return out, xlabel


# ==== views: the content, as rows of cells, shared by both renderers ==============================
@dataclass(frozen=True)
class Fig:
    """A formatted figure; ``estimated`` adds the "estimated" marker next to it."""

    text: str
    estimated: bool = False


@dataclass(frozen=True)
class Method:
    """A method name, drawn as a labelled badge (counter / polled / estimated / attributed ...)."""

    name: str


Cell = str | Fig | Method


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    widths: list[float]  # fractions of the page width (PDF); HTML lets the browser decide
    numeric: set[int]  # columns aligned right


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def _signed_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f} %"


def _when(ts: float | None) -> str:
    if ts is None:
        return "n/a"
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")


def _is_est(method: str | None) -> bool:
    return "estimated" in (method or "")


def _method_kind(method: str | None) -> str:
    m = method or ""
    for name in ("attributed", "counter", "polled", "estimated"):
        if m.startswith(name):
            return name
    return m


def estimate_flags(report: dict) -> dict[str, bool]:
    """Which headline figures rest on the CPU model: totals, the target, and what derives from it
    (steps, layers, CO2 all use the target's energy when there is a target)."""
    summ = report.get("summary") or {}
    total = _is_est(summ.get("energy_method"))
    tgt = summ.get("target") or {}
    target = _is_est(tgt.get("method")) or (not tgt.get("method") and total)
    derived = target if summ.get("target") else total
    return {"total": total, "target": target, "derived": derived}


def overview_rows(report: dict) -> list[tuple[str, str]]:
    """What was measured, where, when and how (label, text)."""
    s = report.get("session") or {}
    hw = s.get("hardware") or {}
    mem = hw.get("memory_bytes")
    status = str(s.get("status") or "n/a") + (f" — {s['end_reason']}" if s.get("end_reason") else "")
    rows = [
        ("Session", f"#{s.get('id')} — {s.get('name') or ''} ({s.get('kind') or 'n/a'})"),
        ("Status", status),
        ("Started", _when(s.get("started_at"))),
        ("Ended", _when(s.get("ended_at"))),
        ("Duration", fmt(s.get("duration_s"), "s")),
        ("Sampling interval", fmt(s.get("interval_s"), "s")),
        ("Machine", f"{s.get('host') or hw.get('host') or 'n/a'} — {hw.get('os') or 'n/a'}"),
        ("CPU / memory", f"{hw.get('cpu_logical') or 'n/a'} logical CPUs, "
                         f"{fmt(mem / 2**30 if mem else None, 'GiB')} memory"),
        ("GPUs", ", ".join(hw.get("gpus") or []) or "none measured"),
        ("Python", str(hw.get("python") or "n/a")),
    ]
    if s.get("target_pid") is not None:
        rows.append(("Target", f"PID {s['target_pid']}"))
        rows.append(("Target command", " ".join(str(a) for a in s.get("target_cmdline") or []) or "n/a"))
    else:
        rows.append(("Target", "none (whole machine)"))
    return rows


def headline(report: dict) -> list[tuple[str, Fig, str]]:
    """The few numbers a reader looks for first: (label, figure, how it was obtained)."""
    summ = report.get("summary") or {}
    flags = estimate_flags(report)
    out = [("Energy, all sources", Fig(fmt(summ.get("energy_j"), "J"), flags["total"]),
            f"{fmt(summ.get('energy_wh'), 'Wh')}; method: {summ.get('energy_method') or 'n/a'}")]
    tgt = summ.get("target")
    if tgt:
        out.append(("Energy attributed to the target", Fig(fmt(tgt.get("energy_j"), "J"), flags["target"]),
                    tgt.get("method") or tgt.get("reason") or "n/a"))
        out.append(("Target mean power", Fig(fmt(tgt.get("mean_power_w"), "W"), flags["target"]),
                    f"mean CPU {fmt(tgt.get('mean_cpu_pct'), '%')} of one core"))
    if "co2_g" in summ:
        out.append(("CO2", Fig(fmt(summ.get("co2_g"), "g"), flags["derived"]), summ.get("co2_basis") or "n/a"))
    st = summ.get("steps")
    if st:
        basis = (f"{st.get('with_energy', 'n/a')} of {st.get('count', 'n/a')} "
                 f"{'job steps' if st.get('ranks') else 'steps'} with energy")
        out.append(("Energy per step", Fig(fmt(st.get("energy_per_step_j"), "J"), flags["derived"]), basis))
        out.append(("Energy per sample", Fig(fmt(st.get("energy_per_sample_j"), "J"), flags["derived"]),
                    f"{fmt(st.get('samples'))} samples"))
        out.append(("Energy per token", Fig(fmt(st.get("energy_per_token_j"), "J"), flags["derived"]),
                    f"{fmt(st.get('tokens'))} tokens"))
    return out


def sources_table(report: dict) -> Table:
    details = {s.get("id"): s.get("details") or {} for s in report.get("sources") or []}
    rows: list[list[Cell]] = []
    for src in (report.get("summary") or {}).get("sources") or []:
        est = src.get("method") == "estimated"
        d = details.get(src.get("id")) or {}
        note = src.get("reason") or src.get("attributed_reason") or ""
        if est:
            note = "; ".join(x for x in (d.get("tdp_source"), d.get("curve"), note) if x)
        rows.append([f"{src.get('label') or src.get('id')} ({src.get('id')}, {src.get('kind')})",
                     Method(src.get("method") or "n/a"),
                     Fig(fmt(src.get("energy_j"), "J"), est), Fig(fmt(src.get("mean_power_w"), "W"), est),
                     Fig(fmt(src.get("max_power_w"), "W"), est), fmt(src.get("mean_util_pct"), "%"),
                     Fig(fmt(src.get("attributed_energy_j"), "J"), est), note])
    return Table(["Source", "Method", "Energy", "Mean power", "Max power", "Mean util.", "Target's share", "Note"],
                 rows, [0.17, 0.09, 0.1, 0.1, 0.1, 0.08, 0.11, 0.25], {2, 3, 4, 5, 6})


def series_table(report: dict) -> Table:
    rows: list[list[Cell]] = [[s.get("key", ""), s.get("label", ""), s.get("unit", ""), Method(s.get("method") or "n/a"),
                               str(s.get("points", "n/a"))] for s in report.get("series") or []]
    return Table(["Series", "Label", "Unit", "Method", "Points"], rows, [0.26, 0.34, 0.06, 0.26, 0.08], {4})


def unavailable_sources(report: dict) -> list[str]:
    return [e.get("message", "") for e in report.get("events") or [] if e.get("kind") == "source-unavailable"]


def steps_table(report: dict) -> Table | None:
    st = (report.get("summary") or {}).get("steps")
    if not st:
        return None
    est = estimate_flags(report)["derived"]
    row: list[Cell] = [present.steps_count_text(st), fmt(st.get("with_energy")), fmt(st.get("mean_duration_s"), "s"),
                       Fig(fmt(st.get("energy_per_step_j"), "J"), est), Fig(fmt(st.get("energy_per_sample_j"), "J"), est),
                       Fig(fmt(st.get("energy_per_token_j"), "J"), est), fmt(st.get("samples")), fmt(st.get("tokens"))]
    return Table(["Steps", "With energy", "Mean step time", "J / step", "J / sample", "J / token", "Samples", "Tokens"],
                 [row], [0.1, 0.11, 0.14, 0.14, 0.14, 0.14, 0.11, 0.12], set(range(8)))


def ranks_table(report: dict) -> tuple[Table, list[str]] | None:
    """The per-rank table of a torch.distributed job (rows from ``app/report/ranks.py``, the same
    ``show`` prints) and the job lines under it; None for a single-process session."""
    from wattlens.app.report.ranks import HEADER, job_lines, rank_rows

    rows = rank_rows(report.get("ranks"))
    if not rows:
        return None
    return (Table(list(HEADER), [list(r) for r in rows], [0.07, 0.07, 0.11, 0.12, 0.11, 0.11, 0.41], {1, 2, 3, 4, 5}),
            job_lines(report.get("ranks")))


def costliest_layers(report: dict) -> list[dict]:
    """The layer rows the HTML/PDF show: the summary's 10 costliest (the JSON's ``layers`` holds
    every row; a 32-block model has hundreds)."""
    return list((report.get("summary") or {}).get("top_layers") or [])


def layer_bar_key(layers: Sequence[dict]) -> tuple[str, str, str]:
    """(key, unit, words) the layer bar chart shows: self energy when recorded (children excluded,
    so the bars add up to the target's energy and match the table's order), else inclusive
    energy, else self time, else inclusive time."""
    for key, unit, words in (("self_energy_j", "J", "self energy"), ("energy_j", "J", "inclusive energy"),
                             ("self_time_s", "s", "self time")):
        if any(lr.get(key) for lr in layers):
            return key, unit, words
    return "time_s", "s", "inclusive time"


def layer_coverage_text(report: dict) -> str | None:
    """What the layer rows add up to against the target's energy, and where the rest is (summary)."""
    return ((report.get("summary") or {}).get("layer_coverage") or {}).get("text")


def layers_table(report: dict) -> Table | None:
    layers = costliest_layers(report)
    if not layers:
        return None
    est = estimate_flags(report)["derived"]
    rows: list[list[Cell]] = []
    for lr in layers:
        rows.append([layer_label(lr.get("path")), str(lr.get("granularity") or "n/a"), str(lr.get("phase") or ""),
                     Method(lr.get("method") or "n/a"), fmt(lr.get("time_s"), "s"), fmt(lr.get("self_time_s"), "s"),
                     share_with_se(lr.get("self_share"), lr.get("self_share_se")), Fig(fmt(lr.get("energy_j"), "J"), est and lr.get("energy_j") is not None),
                     Fig(fmt(lr.get("self_energy_j"), "J"), est and lr.get("self_energy_j") is not None)])
    return Table(["Module", "Kind", "Phase", "Method", "Time", "Self time", "Self time share", "Energy", "Self energy"],
                 rows, [0.22, 0.07, 0.07, 0.13, 0.08, 0.08, 0.08, 0.135, 0.135], {4, 5, 6, 7, 8})


_UNITS = (("_wh", "Wh"), ("_j", "J"), ("_w", "W"), ("_s", "s"), ("_pct", "%"), ("_bytes", "B"), ("_g", "g"))


def value_text(value, key: str = "", depth: int = 0) -> str:
    """Any JSON value as short text: numbers through fmt with the unit named by the key's suffix,
    fractions as percent, dicts as "k: v" pairs, None as "n/a" (never 0)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        k = key.lower()
        if k.endswith("fraction") or k.endswith("_frac"):
            return _pct(float(value))
        unit = next((u for suffix, u in _UNITS if k.endswith(suffix)), "")
        return fmt(value, unit)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if depth >= 2:
            return "{…}"
        return ", ".join(f"{k}: {value_text(v, str(k), depth + 1)}" for k, v in value.items()) or "n/a"
    if isinstance(value, list | tuple):
        if len(value) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
            return f"[{value_text(value[0], key, depth + 1)}, {value_text(value[1], key, depth + 1)}]"
        items = [value_text(v, key, depth + 1) for v in value[:10]]
        return "; ".join(items) + (f"; … ({len(value) - 10} more)" if len(value) > 10 else "") if items else "n/a"
    return str(value)


_ENERGY_UNITS = {"J", "W", "Wh", "kWh", "g", "J/sample", "J/token", "J/step"}


@dataclass
class RecView:
    """One recommendation, ready to draw: the side-by-side figures and the rows that explain them.
    ``held`` says why it is "not worth it yet" (its predicted interval includes no change), else None;
    ``flagged`` is True when the measurement contradicts the prediction: the measured saving and its
    whole 95 % interval lie outside the predicted interval (present.outcome)."""

    title: str
    rule: str
    rationale: str
    risk: str
    predicted: str
    measured: str
    action: str
    evidence: list[list[Cell]]  # what | value | where it was read
    details: list[tuple[str, str]]  # confidence, command, how the saving was predicted, notes
    mono: frozenset[str] = frozenset({"Command", "Measure with"})
    held: str | None = None
    flagged: bool = False


def _evidence_rows(rec: present.Recommendation, estimated: bool) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for e in rec.evidence:
        text = present.value_text(e.value, e.unit)
        numeric = isinstance(e.value, int | float) and not isinstance(e.value, bool)
        rows.append([e.what, Fig(text, estimated and e.unit in _ENERGY_UNITS) if numeric and e.unit != "fraction"
                     else text, e.source])
    return rows


def _rec_details(r: present.Recommendation) -> list[tuple[str, str]]:
    ps = r.predicted_saving
    rows = [("Confidence", r.confidence), ("Predicted by", ps.method), ("Saving of", ps.basis)]
    if ps.text:
        rows.append(("Prediction", ps.text))
    if ps.measure_command:
        rows.append(("Measure with", ps.measure_command))
    if r.command:
        rows.append(("Command", r.command))
    return rows + [("Note", n) for n in r.notes]


def recommendation_views(report: dict) -> list[RecView]:
    """The stored recommendations, read back as Recommendation objects (present.py words them);
    each shows the measured result of the action applied from it, from ``report["applied"]``."""
    recs, bad = present.read_recommendations(report.get("recommendations") or [])
    applied = {o["action"]: o for o in report.get("applied") or []}
    estimated = estimate_flags(report)["derived"]
    out = []
    for r in recs:
        o = applied.get(r.action) if r.action else None
        measured = (o["measured"] + (f" — {o['flag_text']}" if o["flag_text"] else "") if o
                    else "n/a (not applied from this session)")
        out.append(RecView(
            title=r.title, rule=r.rule, rationale=r.rationale, risk=present.risk_text(r.risk),
            predicted=present.predicted_text(r.predicted_saving, with_method=False), measured=measured,
            action=r.action or "n/a (advice only)", evidence=_evidence_rows(r, estimated), details=_rec_details(r),
            held=present.not_worth_it_reason(r.predicted_saving), flagged=bool(o and o["flagged"])))
    out += [RecView("(unreadable recommendation)", "", line, "n/a", "n/a", "n/a", "n/a", [], []) for line in bad]
    return out


def applied_table(report: dict) -> Table | None:
    """recommended → applied → measured for the actions applied from this session: predicted and
    measured side by side, FLAGGED when the measurement (with its interval) misses the predicted one."""
    rows: list[list[Cell]] = [[o["recommended"], f"{o['action']} ({o.get('status_text') or o['status']}, session {o['optimize_session_id']})",
                               o["predicted"], o["measured"], o["flag_text"] or "n/a", o["fidelity"]]
                              for o in report.get("applied") or []]
    if not rows:
        return None
    return Table(["Recommended", "Applied", "Predicted", "Measured", "Check", "Fidelity"], rows,
                 [0.18, 0.14, 0.2, 0.2, 0.14, 0.14], set())


@dataclass
class ActionView:
    title: str
    status: str
    params: str
    predicted: str
    measured: str
    verification: list[tuple[str, str]]


def _arm_text(arm: Mapping) -> str:
    return (f"{fmt(arm.get('energy_per_sample_j'), 'J')} per sample ({arm.get('energy_method') or 'n/a'}), "
            f"{fmt(arm.get('latency_per_sample_s'), 's')} per sample, on {arm.get('device') or 'n/a'}")


def verification_rows(res: Mapping) -> list[tuple[str, str]]:
    """The A/B result of an action in words (not a dump of its stored keys)."""
    v = res.get("verification") if isinstance(res.get("verification"), Mapping) else {}
    rows: list[tuple[str, str]] = []
    if v:
        rows.append(("Baseline (original)", _arm_text(v.get("baseline") or {})))
        rows.append(("Candidate (optimized copy)", _arm_text(v.get("candidate") or {})))
        # the text optimize stored (its interval and "no difference" note); results stored
        # before latency_text existed fall back to the bare change
        rows.append(("Latency", str(res.get("latency_text") or
                                    present.saving_text(v.get("latency_saving_fraction"), "time per sample"))))
        rows.append(("A/B design", f"{v.get('n_rounds', 'n/a')} rounds × {v.get('batches_per_round', 'n/a')} batches "
                                   f"of {v.get('batch_size', 'n/a')}, {v.get('inputs') or 'n/a'}"))
        rows.append(("Rounds", present.rounds_text(v)))
        if v.get("notes"):  # rounds measured again, refused or disturbed: as the CLI prints them
            rows.append(("Notes", "; ".join(str(n) for n in v["notes"])))
    rows.append(("Fidelity", present.fidelity_text(res.get("fidelity"))))
    if isinstance(res.get("sizes"), Mapping):
        rows.append(("Sizes", present.sizes_text(res["sizes"])))
    if res.get("out_dir"):
        rows.append(("Optimized copy", str(res["out_dir"])))
    return rows


def action_views(report: dict) -> list[ActionView]:
    """Actions this session recorded (an optimize session): the A/B result, predicted beside measured."""
    out = []
    for a in report.get("actions") or []:
        if not isinstance(a, Mapping):
            continue
        res = a.get("result") if isinstance(a.get("result"), Mapping) else {}
        o = present.outcome(a, None)
        params = a.get("params") if isinstance(a.get("params"), Mapping) else {}
        shown = {k: v for k, v in params.items() if k not in ("recommendation", "recommendation_index")}
        out.append(ActionView(
            title=f"{a.get('kind') or '(unnamed action)'}" + (f" (#{a['id']})" if a.get("id") is not None else ""),
            status=o.status_text, params=value_text(shown) if shown else "none",
            predicted=o.predicted if res.get("predicted") else str(res.get("predicted_text") or "n/a"),
            measured=o.measured if res.get("verification") else str(res.get("measured_text") or "n/a"),
            verification=verification_rows(res) if res else []))
    return out


_CMP_LABELS = {
    "duration_s": ("Duration", "s"), "energy_j": ("Energy, all sources", "J"),
    "mean_power_w": ("Energy per second (mean power), all sources", "W"),
    "target_energy_j": ("Target energy", "J"), "target_mean_power_w": ("Target mean power", "W"),
    "energy_per_step_j": ("Energy per step", "J"), "energy_per_sample_j": ("Energy per sample", "J"),
    "energy_per_token_j": ("Energy per token", "J"),
}


def comparison_table(report: dict) -> tuple[str, Table] | None:
    cmp_ = report.get("comparison")
    if not cmp_:
        return None
    other = cmp_.get("other_session") or {}
    flags = estimate_flags(report)
    rows: list[list[Cell]] = []
    for key, d in cmp_.items():
        if key == "other_session" or not isinstance(d, Mapping):
            continue
        label, unit = _CMP_LABELS.get(key, (key, ""))
        # energy figures carry this session's estimate mark; the delta contains them, so it does too
        est = unit in ("J", "W") and (flags["total"] if key == "energy_j" else flags["derived"])
        rows.append([label, Fig(fmt(d.get("this"), unit), est), fmt(d.get("other"), unit),
                     Fig(fmt(d.get("delta"), unit), est), _signed_pct(d.get("delta_pct"))])
    title = (f"Compared with session #{other.get('id', 'n/a')} ({other.get('name') or 'unnamed'}); "
             f"normalised figure to read first: {cmp_.get('basis') or 'n/a'}")
    return title, Table(["Figure", "This session", f"Session #{other.get('id', 'n/a')}", "Δ (this − other)", "Δ %"],
                        rows, [0.28, 0.18, 0.18, 0.2, 0.16], {1, 2, 3, 4})


def comparison_warnings(report: dict) -> list[str]:
    return list((report.get("comparison") or {}).get("warnings") or [])


def events_table(report: dict) -> Table:
    rows: list[list[Cell]] = [[fmt(e.get("t_s"), "s"), str(e.get("kind") or ""), str(e.get("message") or "")]
                              for e in report.get("events") or []]
    return Table(["Time", "Kind", "Message"], rows, [0.1, 0.19, 0.71], {0})


def methods_glossary(report: dict) -> list[tuple[str, str]]:
    used = {_method_kind(s.get("method")) for s in report.get("series") or []}
    used |= {lr.get("method") for lr in report.get("layers") or []}
    return [(k, v) for k, v in METHOD_TEXT.items() if k in used or k in ("counter", "polled", "estimated")]


