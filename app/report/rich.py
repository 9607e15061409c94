"""HTML and PDF reports: the report dict (data.py) plus the stored series, rendered with plots.

Both formats show the same content, built once as plain "views" (rows of cells) and then drawn by
one HTML renderer and one PDF renderer, so the two never disagree on a number:

* HTML is one self-contained file: inline CSS, plots as inline SVG (matplotlib, text kept as text),
  no script, no external URL. It opens offline and can be mailed to a colleague.
* PDF is drawn with matplotlib's own PDF backend (``PdfPages``): no extra dependency and no system
  library. Text pages are laid out by a small flow writer (:class:`_PdfFlow`).

matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` (never pyplot), so a
report written from the Qt GUI does not touch the GUI's backend or global figure state.

Every figure is formatted with :func:`wattlens.app.report.formats.fmt` (None → "n/a", never 0), and
every figure that rests on the estimated CPU model is marked "estimated" wherever it appears.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wattlens.app.report.formats import fmt
from wattlens.profiler.errors import BadInputError

MAX_PLOT_POINTS = 2000  # per line; longer series keep each bucket's min and max (peaks survive)
LEGEND_OFFSET_PT = 30.0  # legend's top, below the x axis (clears tick labels and the axis label)
LEGEND_ROW_IN = 0.16  # height of one legend entry at the legend font size

METHOD_TEXT = {
    "counter": "hardware energy counter (NVML total energy, RAPL energy_uj): measured",
    "polled": "power readings integrated over time (trapezoid): measured",
    "estimated": "CPU power model (idle + (TDP − idle) × busy fraction): an estimate, not a measurement",
    "attributed": "the target's share: CPU-time share of CPU/DRAM energy, SM share × dynamic power of GPU energy",
    "stack-sampling": "CPU-side time share by module class, from sampled Python stacks (py-spy)",
    "agent-timing": "per-module timings from the in-process agent (perf_counter on CPU, CUDA events on GPU)",
}

NO_STEPS = ("n/a — no training or inference steps were reported for this session (steps come from the "
            "in-process agent: use `wattlens run`).")
NO_LAYERS = ("n/a — no layer figures were recorded for this session (they come from stack sampling in "
             "`wattlens attach`, or from the agent in `wattlens run`).")
CMP_NOTE = ("Estimate marks follow this session's methods; the other session's figures were obtained by its "
            "own sources: its report shows their methods.")
INCLUSIVE_NOTE = ("Time and Energy are inclusive: a module includes its children, so nested rows overlap. "
                  "Self figures exclude the children; self share is the module's part of all profiled time "
                  "(the top layers are listed, so the shares shown need not add up to 100 %).")

SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")

_RC = {
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, small, crisp
    "svg.hashsalt": "wattlens",  # stable element ids: the same report renders the same bytes
    "pdf.fonttype": 42,
    "text.parse_math": False,  # a '$' in a module or source name is text, not mathtext
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def write(fmt_name: str, report: dict, series_data: Mapping[str, tuple[np.ndarray, np.ndarray]],
          path: str | Path) -> None:
    """Write ``report`` as ``fmt_name`` ("html" or "pdf") to ``path`` (the caller makes it atomic)."""
    path = Path(path)
    if fmt_name == "html":
        path.write_text(render_html(report, series_data), encoding="utf-8")
    elif fmt_name == "pdf":
        write_pdf(report, series_data, path)
    else:
        raise BadInputError(f"the rich renderer writes html or pdf, not '{fmt_name}'",
                            hint="use --format html or --format pdf")


# ==== data preparation (pure) =====================================================================
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
        basis = f"{st.get('with_energy', 'n/a')} of {st.get('count', 'n/a')} steps with energy"
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
    row: list[Cell] = [fmt(st.get("count")), fmt(st.get("with_energy")), fmt(st.get("mean_duration_s"), "s"),
                       Fig(fmt(st.get("energy_per_step_j"), "J"), est), Fig(fmt(st.get("energy_per_sample_j"), "J"), est),
                       Fig(fmt(st.get("energy_per_token_j"), "J"), est), fmt(st.get("samples")), fmt(st.get("tokens"))]
    return Table(["Steps", "With energy", "Mean step time", "J / step", "J / sample", "J / token", "Samples", "Tokens"],
                 [row], [0.1, 0.11, 0.14, 0.14, 0.14, 0.14, 0.11, 0.12], set(range(8)))


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


def layers_table(report: dict) -> Table | None:
    layers = costliest_layers(report)
    if not layers:
        return None
    est = estimate_flags(report)["derived"]
    rows: list[list[Cell]] = []
    for lr in layers:
        rows.append([lr.get("path") or "(model root)", str(lr.get("granularity") or "n/a"), str(lr.get("phase") or ""),
                     Method(lr.get("method") or "n/a"), fmt(lr.get("time_s"), "s"), fmt(lr.get("self_time_s"), "s"),
                     _pct(lr.get("self_share")), Fig(fmt(lr.get("energy_j"), "J"), est and lr.get("energy_j") is not None),
                     Fig(fmt(lr.get("self_energy_j"), "J"), est and lr.get("self_energy_j") is not None)])
    return Table(["Module", "Kind", "Phase", "Method", "Time", "Self time", "Self share", "Energy", "Self energy"],
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


def saving_text(value) -> str:
    """A predicted or measured saving, whatever shape it has, in a few words: the fraction (as %)
    with its interval when it has one, else its own text (e.g. "measure first: ..."), else its
    fields. None → "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return fmt(value)
    if not isinstance(value, Mapping):
        return value_text(value)
    frac = next((value[k] for k in ("fraction", "saving_fraction", "mean", "value") if value.get(k) is not None), None)
    lo = next((value[k] for k in ("low", "lo", "lower") if value.get(k) is not None), None)
    hi = next((value[k] for k in ("high", "hi", "upper") if value.get(k) is not None), None)
    if lo is None and isinstance(value.get("interval"), list | tuple) and len(value["interval"]) == 2:
        lo, hi = value["interval"]
    if isinstance(frac, int | float) and not isinstance(frac, bool):
        text = _pct(frac)
        if isinstance(lo, int | float) and isinstance(hi, int | float):
            text += f" ({lo * 100:.1f} – {hi * 100:.1f} %)"
        return text
    if value.get("method") == "measure first":
        return "measure first" + (f" — {value['text']}" if value.get("text") else "")
    if value.get("text"):
        return str(value["text"])
    if value.get("method"):
        return str(value["method"])
    return value_text(value)


def _action_name(rec: Mapping) -> str | None:
    a = rec.get("action")
    if isinstance(a, str):
        return a
    if isinstance(a, Mapping):
        for k in ("kind", "name", "spec"):
            if a.get(k):
                return str(a[k])
    return None


def _action_result(a: Mapping) -> Mapping:
    r = a.get("result")
    return r if isinstance(r, Mapping) else {}


def _measured_for(rec: Mapping, actions: Sequence[Mapping]) -> str:
    for k in ("measured_saving", "measured"):
        if rec.get(k) is not None:
            return saving_text(rec[k])
    name = _action_name(rec)
    for a in actions:
        params = a.get("params") if isinstance(a.get("params"), Mapping) else {}
        kind = str(a.get("kind") or "")
        linked = ((rec.get("id") is not None and params.get("recommendation_id") == rec.get("id"))
                  or (rec.get("rule") and params.get("rule") == rec.get("rule"))
                  or (name is not None and name in (kind, params.get("action"), params.get("spec")))
                  or (name is not None and ":" in name and name.split(":")[0] == kind))
        if linked:
            res = _action_result(a)
            for k in ("measured_text", "measured_saving", "measured"):
                if res.get(k) is not None:
                    return saving_text(res[k])
    return "n/a (not applied yet)"


_REC_SHOWN = {"title", "rule", "rationale", "risk", "predicted_saving", "measured_saving", "measured",
              "evidence", "action", "id", "confidence", "command", "notes"}
_ENERGY_UNITS = {"J", "W", "Wh", "kWh", "g", "J/sample", "J/token", "J/step"}


@dataclass
class RecView:
    """One recommendation, ready to draw: the side-by-side figures and the rows that explain them."""

    title: str
    rule: str
    rationale: str
    risk: str
    predicted: str
    measured: str
    action: str
    evidence: list[list[Cell]]  # what | value | where it was read
    details: list[tuple[str, str]]  # confidence, command, how the saving was predicted, notes, other keys
    mono: frozenset[str] = frozenset({"Command", "Measure with"})


def _risk_text(risk) -> str:
    if risk is None:
        return "n/a"
    if isinstance(risk, Mapping) and ("level" in risk or "text" in risk):
        return " — ".join(str(risk[k]) for k in ("level", "text") if risk.get(k)) or "n/a"
    return value_text(risk)


def _evidence_rows(ev, estimated: bool) -> list[list[Cell]]:
    """Evidence as (what, value, source) rows: the advisor's list of {what, value, unit, source},
    a plain {name: value} mapping, or anything else as text."""
    if ev is None:
        return []
    if isinstance(ev, Mapping):
        return [[str(k), value_text(v, str(k)), ""] for k, v in ev.items()]
    rows: list[list[Cell]] = []
    for e in ev if isinstance(ev, list | tuple) else [ev]:
        if isinstance(e, Mapping) and "what" in e:
            value, unit = e.get("value"), str(e.get("unit") or "")
            if isinstance(value, int | float) and not isinstance(value, bool) and unit == "fraction":
                cell: Cell = _pct(float(value))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cell = Fig(fmt(value, unit), estimated and unit in _ENERGY_UNITS)
            else:
                cell = "n/a" if value is None else f"{value} {unit}".strip()
            rows.append([str(e["what"]), cell, str(e.get("source") or "")])
        else:
            rows.append([value_text(e), "", ""])
    return rows


def _rec_details(r: Mapping) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if r.get("confidence") is not None:
        rows.append(("Confidence", value_text(r["confidence"])))
    ps = r.get("predicted_saving")
    if isinstance(ps, Mapping):
        for key, label in (("text", "Prediction"), ("method", "Predicted by"), ("basis", "Saving of"),
                           ("measure_command", "Measure with")):
            if ps.get(key):
                rows.append((label, str(ps[key])))
    if r.get("command"):
        rows.append(("Command", str(r["command"])))
    notes = r.get("notes")
    for n in notes if isinstance(notes, list | tuple) else ([notes] if notes else []):
        rows.append(("Note", value_text(n)))
    rows += [(str(k), value_text(v, str(k))) for k, v in r.items() if k not in _REC_SHOWN]
    return rows


def recommendation_views(report: dict) -> list[RecView]:
    actions = [a for a in report.get("actions") or [] if isinstance(a, Mapping)]
    estimated = estimate_flags(report)["derived"]
    out = []
    for r in report.get("recommendations") or []:
        if not isinstance(r, Mapping):
            out.append(RecView(value_text(r), "", "", "n/a", "n/a", "n/a", "n/a", [], []))
            continue
        action = r.get("action")
        out.append(RecView(
            title=str(r.get("title") or "(untitled recommendation)"), rule=str(r.get("rule") or ""),
            rationale=str(r.get("rationale") or ""), risk=_risk_text(r.get("risk")),
            predicted=saving_text(r.get("predicted_saving")), measured=_measured_for(r, actions),
            action=value_text(action) if action is not None else "n/a (advice only)",
            evidence=_evidence_rows(r.get("evidence"), estimated), details=_rec_details(r)))
    return out


@dataclass
class ActionView:
    title: str
    status: str
    params: str
    predicted: str
    measured: str
    verification: list[tuple[str, str]]


def _flatten(d: Mapping, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and depth < 2:
            out += _flatten(v, key + ".", depth + 1)
        else:
            out.append((key, value_text(v, str(k))))
    return out


def action_views(report: dict) -> list[ActionView]:
    out = []
    for a in report.get("actions") or []:
        if not isinstance(a, Mapping):
            continue
        res = _action_result(a)
        params = a.get("params")
        pred = next((res[k] for k in ("predicted_text", "predicted_saving", "predicted") if res.get(k) is not None), None)
        meas = next((res[k] for k in ("measured_text", "measured_saving", "measured") if res.get(k) is not None), None)
        shown = {"predicted_text", "predicted_saving", "predicted", "measured_text", "measured_saving", "measured"}
        out.append(ActionView(
            title=f"{a.get('kind') or '(unnamed action)'}" + (f" (#{a['id']})" if a.get("id") is not None else ""),
            status=str(a.get("status") or "n/a"),
            params=value_text(params) if isinstance(params, Mapping) and params else "none",
            predicted=saving_text(pred), measured=saving_text(meas),
            verification=_flatten({k: v for k, v in res.items() if k not in shown})))
    return out


_CMP_LABELS = {
    "duration_s": ("Duration", "s"), "energy_j": ("Energy, all sources", "J"),
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
    title = f"Compared with session #{other.get('id', 'n/a')} ({other.get('name') or 'unnamed'})"
    return title, Table(["Figure", "This session", f"Session #{other.get('id', 'n/a')}", "Δ (this − other)", "Δ %"],
                        rows, [0.28, 0.18, 0.18, 0.2, 0.16], {1, 2, 3, 4})


def events_table(report: dict) -> Table:
    rows: list[list[Cell]] = [[fmt(e.get("t_s"), "s"), str(e.get("kind") or ""), str(e.get("message") or "")]
                              for e in report.get("events") or []]
    return Table(["Time", "Kind", "Message"], rows, [0.1, 0.19, 0.71], {0})


def methods_glossary(report: dict) -> list[tuple[str, str]]:
    used = {_method_kind(s.get("method")) for s in report.get("series") or []}
    used |= {lr.get("method") for lr in report.get("layers") or []}
    return [(k, v) for k, v in METHOD_TEXT.items() if k in used or k in ("counter", "polled", "estimated")]


# ==== plots (shared by both renderers) ============================================================
def _draw_lines(ax, lines: Sequence[Line], title: str, ylabel: str, xlabel: str) -> None:
    for ln in lines:
        label = f"{ln.label} ({ln.unit})" + (" — estimated" if ln.estimated else "")
        ax.plot(ln.t_s, ln.value, color=ln.color, lw=2.2 if ln.bold else 1.3,
                ls="--" if ln.dashed else "-", label=label, drawstyle="default")
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if lines:
        from matplotlib.transforms import offset_copy

        ax.set_xlim(left=min(0.0, min(float(ln.t_s[0]) for ln in lines)))
        ax.set_ylim(bottom=0)
        # below the x label, one entry a row: every plot keeps the full width and no label is cut
        below = offset_copy(ax.transAxes, fig=ax.figure, y=-LEGEND_OFFSET_PT, units="points")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.0), bbox_transform=below, frameon=False,
                  borderaxespad=0.0, handlelength=2.5)
    else:
        ax.text(0.5, 0.5, "no samples were recorded", transform=ax.transAxes, ha="center", va="center")


def _short_path(path: str, limit: int = 42) -> str:
    parts = path.split("/")
    text = "/".join(parts[-2:]) if len(parts) > 2 else path
    if len(parts) > 2:
        text = "…/" + text
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _draw_layers(ax, layers: Sequence[dict], estimated: bool) -> None:
    """Bars of each layer's own cost (children excluded) in the table's order. Each bar is labelled
    with its figure and its self share of the profiled time (``self_share``, as `wattlens show`
    prints it): the report lists the top layers only, so a share of energy would need a total
    that it does not carry."""
    key, unit, words = layer_bar_key(layers)
    rows = [lr for lr in layers if lr.get(key) is not None][::-1]
    values = [float(lr[key]) for lr in rows]
    labels = [_short_path(str(lr.get("path") or "(model root)")) for lr in rows]
    ax.barh(range(len(rows)), values, color="#1f77b4")
    ax.set_yticks(range(len(rows)), labels)
    ax.grid(axis="y", visible=False)
    for i, (v, lr) in enumerate(zip(values, rows, strict=True)):
        share = f" ({_pct(lr['self_share'])} of time)" if lr.get("self_share") is not None else ""
        ax.text(v, i, f" {fmt(v, unit)}{share}", va="center", fontsize=7)
    if values:
        ax.set_xlim(0, max(values) * 1.45)
    methods = sorted({str(lr.get("method")) for lr in rows})
    ax.set_xlabel(f"{words} ({unit})" + (" — estimated" if estimated and unit == "J" else "")
                  + "; in brackets: self share of the profiled time")
    ax.set_title(f"Costliest layers by {words} — {', '.join(methods) or 'n/a'}", loc="left")


def _draw_steps(ax, steps: Sequence[dict], estimated: bool) -> None:
    rows = [s for s in steps if s.get("energy_j") is not None]
    from matplotlib.ticker import MaxNLocator

    x, y = [s.get("step") for s in rows], [s["energy_j"] for s in rows]
    if len(rows) <= 60:
        ax.bar(x, y, color="#2ca02c", width=0.8)
    else:  # hundreds of bars turn into noise: a thin line shows the same, and its spikes
        ax.plot(x, y, color="#2ca02c", lw=0.8)
        ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("energy per step (J)")
    ax.grid(axis="x", visible=False)
    ax.set_title("Energy per step" + (" — estimated" if estimated else ""), loc="left")


@dataclass(frozen=True)
class PlotSpec:
    """One plot: its drawing function and the room it needs around the axes (inches)."""

    name: str
    axes_h: float  # height of the data area
    left: float  # room for y tick labels and the y label
    below: float  # room for x tick labels, the x label and a legend below
    draw: Callable

    @property
    def height(self) -> float:
        return self.axes_h + 0.35 + self.below  # 0.35: the title


def plot_specs(report: dict, series_data) -> dict[str, PlotSpec]:
    """The plots this report has, by name; the same specs feed both formats."""
    lines, xlabel = timelines(report, series_data)
    flags = estimate_flags(report)

    def time_plot(name: str, title: str, ylabel: str, h: float) -> PlotSpec:
        rows = len(lines[name])
        return PlotSpec(name, h, 0.75, 0.5 + (LEGEND_ROW_IN * rows + 0.05 if rows else 0.0),
                        lambda ax: _draw_lines(ax, lines[name], title, ylabel, xlabel))

    specs = {"power": time_plot("power", "Power over time", "power (W)", 2.2),
             "energy": time_plot("energy", "Cumulative energy", "energy (J)", 1.9)}
    if lines["util"]:
        specs["util"] = time_plot("util", "Utilisation", "utilisation (%)", 1.5)
    if any(s.get("energy_j") is not None for s in report.get("steps") or []):
        specs["steps"] = PlotSpec("steps", 1.25, 0.75, 0.5, lambda ax: _draw_steps(ax, report["steps"], flags["derived"]))
    layers = costliest_layers(report)
    if layers:
        specs["layers"] = PlotSpec("layers", 0.2 * len(layers) + 0.2, 2.6, 0.5,
                                   lambda ax: _draw_layers(ax, layers, flags["derived"]))
    return specs


def fit_heights(specs: Sequence[PlotSpec], room_in: float, min_axes_in: float = 1.0) -> list[PlotSpec]:
    """Shrink the data areas (never below ``min_axes_in``) so the plots fit ``room_in`` together:
    the time plots stay on one PDF page even when many sources make the legends tall."""
    specs = list(specs)
    need = sum(sp.height + 0.1 for sp in specs)
    spare = sum(max(0.0, sp.axes_h - min_axes_in) for sp in specs)
    if need <= room_in or spare <= 0:
        return specs
    cut = min(1.0, (need - room_in) / spare)
    return [replace(sp, axes_h=sp.axes_h - cut * max(0.0, sp.axes_h - min_axes_in)) for sp in specs]


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _svg(spec: PlotSpec, width_in: float = 9.5) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(width_in, spec.height)
        spec.draw(fig.add_subplot())
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


# ==== HTML ========================================================================================
_CSS = """
:root { --fg:#1d2329; --muted:#5b6670; --line:#d8dee4; --bg:#ffffff; --soft:#f5f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
td:first-child { min-width: 150px; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { width: 190px; background: none; font-weight: 600; color: var(--muted); }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 10px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--soft); }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 20px; font-weight: 650; }
.card .how { color: var(--muted); font-size: 11.5px; }
.badge { display: inline-block; border-radius: 3px; padding: 0 5px; font-size: 11px; font-weight: 600;
         border: 1px solid; white-space: nowrap; }
.m-counter { color: #17663a; border-color: #8fcca6; background: #eaf7ee; }
.m-polled { color: #1c4f8a; border-color: #98bde6; background: #eaf2fb; }
.m-estimated, .est { color: #8a4b00; border-color: #f0b46a; background: #fff3e0; }
.m-attributed { color: #5b3a8a; border-color: #c1a9e6; background: #f4eefc; }
.m-other { color: var(--muted); border-color: var(--line); }
.est { display: inline-block; border: 1px solid; border-radius: 3px; padding: 0 4px; font-size: 10.5px;
       font-weight: 600; margin-left: 4px; vertical-align: 1px; }
figure { margin: 8px 0 16px; } figure svg { width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; }
.rec { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.rec h3 { margin-top: 4px; }
.pm { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; margin: 6px 0; }
.pm div { background: var(--soft); border-radius: 4px; padding: 6px 10px; }
.pm .label { color: var(--muted); font-size: 12px; display: block; }
.note { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { main { max-width: none; padding: 0; } h2 { break-after: avoid; } figure, .rec, tr { break-inside: avoid; } }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _cell_html(c: Cell) -> str:
    if isinstance(c, Fig):
        return _e(c.text) + ('<span class="est" title="from the CPU power model, not a meter">estimated</span>'
                             if c.estimated and c.text != "n/a" else "")
    if isinstance(c, Method):
        kind = _method_kind(c.name)
        css = f"m-{kind}" if kind in ("counter", "polled", "estimated", "attributed") else "m-other"
        return f'<span class="badge {css}" title="{_e(METHOD_TEXT.get(kind, c.name))}">{_e(c.name)}</span>'
    return _e(c)


def _table_html(t: Table, cls: str = "") -> str:
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in t.numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(t.headers))
    body = "".join("<tr>" + "".join(f'<td class="num">{_cell_html(c)}</td>' if i in t.numeric
                                    else f"<td>{_cell_html(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in t.rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_html(rows: Iterable[tuple[str, str]], mono: Iterable[str] = ()) -> str:
    mono = set(mono)
    body = "".join(f"<tr><th>{_e(k)}</th><td>{f'<code>{_e(v)}</code>' if k in mono else _e(v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def render_html(report: dict, series_data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The whole report as one self-contained HTML document (inline CSS and SVG, no script, no URL)."""
    s = report.get("session") or {}
    summ = report.get("summary") or {}
    flags = estimate_flags(report)
    title = f"wattlens energy report — {s.get('name') or 'session'} (session {s.get('id')})"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f'<meta name="generator" content="wattlens"><title>{_e(title)}</title><style>{_CSS}</style></head>'
           f"<body><main>",
           f"<h1>Energy report — {_e(s.get('name') or 'session')}</h1>",
           f'<p class="sub">Session #{_e(s.get("id"))} · {_e(s.get("status"))} · {_e(fmt(s.get("duration_s"), "s"))} '
           f"· started {_e(_when(s.get('started_at')))} · report generated {_e(_when(report.get('generated_at')))}</p>"]
    if flags["total"]:
        out.append('<p class="note"><span class="est">estimated</span> Some figures come from a CPU power model '
                   "(TDP × load), not a meter: each one is marked like this.</p>")

    out.append('<section id="summary"><h2>Summary</h2><div class="cards">')
    for label, fig, how in headline(report):
        out.append(f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_cell_html(fig)}</div>'
                   f'<div class="how">{_e(how)}</div></div>')
    out.append("</div></section>")

    out.append('<section id="measured"><h2>What was measured and how</h2>')
    out.append(_kv_html(overview_rows(report), mono=("Target command",)))
    out.append("<h3>Power sources</h3>" + _table_html(sources_table(report)))
    out.append(f"<p>Total energy of all sources: <b>{_cell_html(Fig(fmt(summ.get('energy_j'), 'J'), flags['total']))}</b> "
               f"({_e(fmt(summ.get('energy_wh'), 'Wh'))}), method: {_e(summ.get('energy_method') or 'n/a')}.</p>")
    missing = unavailable_sources(report)
    if missing:
        out.append("<h3>Not measured</h3><ul>" + "".join(f"<li>{_e(m)}</li>" for m in missing) + "</ul>")
    out.append("<details><summary>Series recorded</summary>" + _table_html(series_table(report)) + "</details>")
    out.append("</section>")

    specs = plot_specs(report, series_data)
    out.append('<section id="timeline"><h2>Power and energy over time</h2>')
    for name, caption in (("power", "Solid: whole source; dashed: the target's attributed share; black: the target's total."),
                          ("energy", "Cumulative energy from the first sample on."),
                          ("util", "Source utilisation and the target's CPU use (100 % = one core).")):
        if name in specs:
            out.append(f"<figure>{_svg(specs[name])}<figcaption>{_e(caption)}</figcaption></figure>")
    out.append("</section>")

    steps = steps_table(report)
    out.append('<section id="steps"><h2>Energy per step, sample and token</h2>')
    if steps:
        out.append(_table_html(steps))
        st = summ.get("steps") or {}
        if st.get("reason"):
            out.append(f'<p class="note">{_e(st["reason"])}</p>')
        if "steps" in specs:
            out.append(f"<figure>{_svg(specs['steps'])}</figure>")
    else:
        out.append(f'<p class="note">{_e(NO_STEPS)}</p>')
    out.append("</section>")

    layers = layers_table(report)
    out.append('<section id="layers"><h2>Costliest layers</h2>')
    if layers:
        methods = sorted({str(lr.get("method")) for lr in costliest_layers(report)})
        out.append("<p>" + "; ".join(f"<b>{_e(m)}</b>: {_e(METHOD_TEXT.get(m, m))}" for m in methods) + ".</p>")
        out.append(_table_html(layers))
        out.append(f"<figure>{_svg(specs['layers'])}<figcaption>{_e(INCLUSIVE_NOTE)}</figcaption></figure>")
    else:
        out.append(f'<p class="note">{_e(NO_LAYERS)}</p>')
    out.append("</section>")

    recs, acts = recommendation_views(report), action_views(report)
    out.append('<section id="recommendations"><h2>Recommendations</h2>')
    if recs:
        out.append(_table_html(Table(["Recommendation", "Predicted saving", "Measured saving", "Risk"],
                                     [[r.title, r.predicted, r.measured, r.risk] for r in recs], [], set())))
        for r in recs:
            out.append('<div class="rec">' + f"<h3>{_e(r.title)}</h3>"
                       + (f'<p class="note">rule: <code>{_e(r.rule)}</code></p>' if r.rule else "")
                       + (f"<p>{_e(r.rationale)}</p>" if r.rationale else "")
                       + f'<div class="pm"><div><span class="label">Predicted saving</span>{_e(r.predicted)}</div>'
                         f'<div><span class="label">Measured saving</span>{_e(r.measured)}</div></div>'
                       + _kv_html([("Risk", r.risk), ("Action", r.action)] + r.details, mono=r.mono)
                       + (_table_html(Table(["Evidence", "Value", "Read from"], r.evidence, [], {1}))
                          if r.evidence else "")
                       + "</div>")
    else:
        out.append('<p class="note">none — run <code>wattlens advise ID</code> to get recommendations.</p>')
    out.append("</section>")

    out.append('<section id="actions"><h2>Actions applied and their verification</h2>')
    if acts:
        out.append(_table_html(Table(["Action", "Status", "Parameters", "Predicted saving", "Measured saving"],
                                     [[a.title, a.status, a.params, a.predicted, a.measured] for a in acts], [], set())))
        for a in acts:
            if a.verification:
                out.append(f"<h3>Verification — {_e(a.title)}</h3>" + _kv_html(a.verification))
    else:
        out.append('<p class="note">none applied.</p>')
    out.append("</section>")

    cmp_ = comparison_table(report)
    if cmp_:
        ctitle, ctable = cmp_
        out.append(f'<section id="comparison"><h2>{_e(ctitle)}</h2>{_table_html(ctable)}'
                   f'<p class="note">{_e(CMP_NOTE)}</p></section>')

    out.append('<section id="events"><h2>Events and notes</h2>')
    notes = summ.get("notes") or []
    if notes:
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    ev = events_table(report)
    out.append(_table_html(ev) if ev.rows else '<p class="note">no events.</p>')
    out.append("</section>")

    out.append('<section id="methods"><h2>Methods</h2><dl>' + "".join(
        f"<dt>{_cell_html(Method(k))}</dt><dd>{_e(v)}</dd>" for k, v in methods_glossary(report)) + "</dl></section>")
    out.append(f"<footer>wattlens report schema {_e(report.get('schema_version'))} · numbers with 3 significant "
               "digits · n/a = not available (never counted as 0).</footer></main></body></html>")
    return "\n".join(out)


# ==== PDF =========================================================================================
class _PdfFlow:
    """Lays text, tables and plots top to bottom on A4 pages drawn with matplotlib, starting a new
    page when the next item does not fit. Coordinates are inches from the page's top-left."""

    W, H, M = 8.27, 11.69, 0.6
    FOOTER = 0.45
    CHAR_EM = 0.58  # average glyph width of DejaVu Sans in em: sets the wrap width

    def __init__(self, pdf, footer: str):
        self.pdf = pdf
        self.footer = footer
        self.fig = None
        self.y = 0.0
        self.pages: list[str] = []  # each page's section title; "... (continued)" for overflow pages
        self.section = ""

    @property
    def width(self) -> float:
        return self.W - 2 * self.M

    def _chars(self, width_in: float, size: float) -> int:
        return max(8, int(width_in * 72 / (size * self.CHAR_EM)))

    def new_page(self, section: str | None = None) -> None:
        self._flush()
        self.fig = _figure(self.W, self.H)
        self.fig.set_layout_engine("none")
        self.y = self.M
        if section is not None:
            self.section = section
        self.pages.append(self.section if section is not None else f"{self.section} (continued)")
        self.fig.text(self.M / self.W, 0.35 / self.H, self.footer, fontsize=7, color="#5b6670")
        self.fig.text(1 - self.M / self.W, 0.35 / self.H, f"page {len(self.pages)}", fontsize=7, color="#5b6670", ha="right")

    def _flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

    def close(self) -> None:
        self._flush()

    def _fits(self, h: float) -> bool:
        return self.y + h <= self.H - self.M - self.FOOTER

    def room(self) -> float:
        """Height left on the current page (inches)."""
        return self.H - self.M - self.FOOTER - self.y

    def ensure(self, h: float) -> None:
        if self.fig is None or not self._fits(h):
            cont = self.section
            self.new_page()
            if cont:
                self._text_line(f"{cont} (continued)", 9, color="#5b6670")
                self.y += 0.05

    def _text_line(self, line: str, size: float, x: float = 0.0, weight: str = "normal", color: str = "#1d2329",
                   ha: str = "left") -> None:
        self.fig.text((self.M + x) / self.W, 1 - self.y / self.H, line, fontsize=size, weight=weight, color=color,
                      va="top", ha=ha)
        self.y += size * 1.4 / 72

    def heading(self, text: str, size: float = 13) -> None:
        self.ensure(size * 1.4 / 72 + 0.6)  # keep a heading with what follows it
        self.y += 0.08
        self._text_line(text, size, weight="bold")
        self.y += 0.04

    def section_page(self, title: str) -> None:
        self.new_page(title)
        self._text_line(title, 15, weight="bold")
        self.y += 0.08

    def para(self, text: str, size: float = 9, indent: float = 0.0, color: str = "#1d2329", weight: str = "normal") -> None:
        for line in _wrap(text, self._chars(self.width - indent, size)):
            self.ensure(size * 1.4 / 72)
            self._text_line(line, size, x=indent, color=color, weight=weight)

    def gap(self, h: float = 0.1) -> None:
        self.y += h

    def _hline(self, color: str = "#d8dee4", lw: float = 0.5) -> None:
        from matplotlib.lines import Line2D

        y = 1 - self.y / self.H
        self.fig.add_artist(Line2D([self.M / self.W, 1 - self.M / self.W], [y, y], transform=self.fig.transFigure,
                                   color=color, lw=lw))

    def table(self, t: Table, size: float = 7.5, kv: bool = False) -> None:
        if not kv and len(t.rows) > 1:
            t = _marks_in_header(t)
        widths = t.widths or [1.0 / len(t.headers)] * len(t.headers)
        col_in = [w * self.width for w in widths]
        xs = np.concatenate([[0.0], np.cumsum(col_in)[:-1]])
        lh = size * 1.35 / 72

        def cells(row: Sequence[Cell]) -> list[list[str]]:
            return [_wrap(_cell_text(c), self._chars(w - 0.08, size)) for c, w in zip(row, col_in, strict=True)]

        def draw(row_lines: list[list[str]], weight: str) -> None:
            n = max(len(c) for c in row_lines)
            y0 = self.y
            for i, lines in enumerate(row_lines):
                self.y = y0 + 0.03
                num = i in t.numeric
                for ln in lines:
                    x = xs[i] + col_in[i] - 0.04 if num else xs[i] + 0.02
                    self._text_line(ln, size, x=x, weight=weight, ha="right" if num else "left")
            self.y = y0 + n * lh + 0.06
            self._hline()

        header = cells(t.headers) if not kv else None

        def start() -> None:
            if header:
                draw(header, "bold")

        first = True
        for row in t.rows:
            lines = cells(row)
            h = max(len(c) for c in lines) * lh + 0.06
            if first:
                self.ensure(h + (lh + 0.06 if header else 0))
                start()
                first = False
            elif not self._fits(h):
                self.ensure(h + lh + 0.06)
                start()
            draw(lines, "normal")
        self.gap(0.08)

    def kv(self, rows: Sequence[tuple[str, str]], size: float = 8.5) -> None:
        self.table(Table(["", ""], [[k, v] for k, v in rows], [0.34, 0.66], set()), size=size, kv=True)

    def plot(self, spec: PlotSpec) -> None:
        self.ensure(spec.height + 0.1)
        top = self.y + 0.35  # the axes title sits above the data area
        bottom = top + spec.axes_h
        ax = self.fig.add_axes([(self.M + spec.left) / self.W, 1 - bottom / self.H,
                                (self.width - spec.left - 0.1) / self.W, spec.axes_h / self.H])
        spec.draw(ax)
        self.y += spec.height + 0.1


def _marks_in_header(t: Table) -> Table:
    """A column whose figures are all estimated says so once, in its header ("Energy (estimated)"),
    instead of on every row: narrow PDF columns stay one line high."""
    headers, rows = list(t.headers), [list(r) for r in t.rows]
    for i in range(len(headers)):
        col = [r[i] for r in rows if not (isinstance(r[i], Fig) and r[i].text == "n/a")]
        if col and all(isinstance(c, Fig) and c.estimated for c in col):
            headers[i] += " (estimated)"
            for r in rows:
                if isinstance(r[i], Fig):
                    r[i] = Fig(r[i].text, False)
    return Table(headers, rows, t.widths, t.numeric)


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters: words stay whole ("(estimated)" never splits) unless
    one alone is longer than a line (a long module path), which is then cut."""
    lines: list[str] = []
    for para in str(text).splitlines() or [""]:
        for line in textwrap.wrap(para, width, break_long_words=False, break_on_hyphens=False) or [""]:
            lines += [line[i:i + width] for i in range(0, len(line), width)] or [""]
    return lines or [""]


def _cell_text(c: Cell) -> str:
    if isinstance(c, Fig):
        return c.text + (" (estimated)" if c.estimated and c.text != "n/a" else "")
    if isinstance(c, Method):
        return c.name
    return str(c)


def write_pdf(report: dict, series_data: Mapping[str, tuple[np.ndarray, np.ndarray]],
              path: str | Path) -> list[str]:
    """Write the PDF; returns the section title of each page (its length is the page count).

    Each section starts on a new page, and a section longer than a page goes on over pages titled
    "<section> (continued)": 1 summary and how it was measured; 2 power and energy over time;
    3 energy per step and per layer; 4 recommendations and actions (only when there are any);
    5 comparison, events, notes and methods."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    s = report.get("session") or {}
    summ = report.get("summary") or {}
    flags = estimate_flags(report)
    specs = plot_specs(report, series_data)
    meta = {"Title": f"wattlens energy report — {s.get('name') or 'session'} (session {s.get('id')})",
            "Creator": "wattlens", "Producer": "wattlens (matplotlib)", "CreationDate": None}
    with matplotlib.rc_context(_RC), PdfPages(path, metadata=meta) as pdf:
        doc = _PdfFlow(pdf, f"wattlens · session {s.get('id')} · {_when(report.get('generated_at'))}")
        # 1. summary and how it was measured
        doc.new_page("Summary")
        doc.para(f"Energy report — {s.get('name') or 'session'}", size=16, weight="bold")
        doc.para(f"Session #{s.get('id')} · {s.get('status')} · {fmt(s.get('duration_s'), 's')} · "
                 f"started {_when(s.get('started_at'))}", color="#5b6670")
        if flags["total"]:
            doc.para("Figures marked (estimated) come from a CPU power model (TDP × load), not a meter.",
                     color="#8a4b00")
        doc.heading("Summary")
        doc.table(Table(["Figure", "Value", "How"], [[lbl, fig, how] for lbl, fig, how in headline(report)],
                        [0.3, 0.22, 0.48], {1}), size=8.5)
        doc.heading("What was measured and how")
        doc.kv(overview_rows(report))
        doc.heading("Power sources", size=11)
        doc.table(sources_table(report), size=7)
        doc.para(f"Total energy of all sources: {_cell_text(Fig(fmt(summ.get('energy_j'), 'J'), flags['total']))} "
                 f"({fmt(summ.get('energy_wh'), 'Wh')}), method: {summ.get('energy_method') or 'n/a'}.")
        missing = unavailable_sources(report)
        if missing:
            doc.heading("Not measured", size=11)
            for m in missing:
                doc.para(f"• {m}", size=8)

        # 2. over time
        doc.section_page("Power and energy over time")
        for spec in fit_heights([specs[n] for n in ("power", "energy", "util") if n in specs], doc.room()):
            doc.plot(spec)

        # 3. where the energy goes: per step, per layer
        doc.section_page("Energy per step and per layer")
        doc.heading("Energy per step, sample and token", size=11)
        steps = steps_table(report)
        if steps:
            doc.table(steps)
            if (summ.get("steps") or {}).get("reason"):
                doc.para(summ["steps"]["reason"], size=8.5, color="#5b6670")
            if "steps" in specs:
                doc.plot(specs["steps"])
        else:
            doc.para(NO_STEPS, color="#5b6670")
        doc.heading("Costliest layers", size=11)
        layers = layers_table(report)
        if layers:
            for m in sorted({str(lr.get("method")) for lr in costliest_layers(report)}):
                doc.para(f"{m}: {METHOD_TEXT.get(m, m)}.", size=8.5)
            doc.plot(specs["layers"])
            doc.table(layers, size=7)
            doc.para(INCLUSIVE_NOTE, size=8, color="#5b6670")
        else:
            doc.para(NO_LAYERS, color="#5b6670")

        # 4. recommendations and actions
        recs, acts = recommendation_views(report), action_views(report)
        if recs or acts:
            doc.section_page("Recommendations and actions")
            if recs:
                doc.table(Table(["Recommendation", "Predicted saving", "Measured saving", "Risk"],
                                [[r.title, r.predicted, r.measured, r.risk] for r in recs], [0.34, 0.22, 0.22, 0.22], set()))
                for r in recs:
                    doc.heading(r.title, size=10.5)
                    if r.rationale:
                        doc.para(r.rationale, size=8.5)
                    doc.kv([("Rule", r.rule or "n/a"), ("Predicted saving", r.predicted), ("Measured saving", r.measured),
                            ("Risk", r.risk), ("Action", r.action)] + r.details, size=8)
                    if r.evidence:
                        doc.table(Table(["Evidence", "Value", "Read from"], r.evidence, [0.4, 0.2, 0.4], {1}), size=7.5)
            if acts:
                doc.heading("Actions applied and their verification", size=11)
                doc.table(Table(["Action", "Status", "Parameters", "Predicted saving", "Measured saving"],
                                [[a.title, a.status, a.params, a.predicted, a.measured] for a in acts],
                                [0.2, 0.12, 0.24, 0.22, 0.22], set()))
                for a in acts:
                    if a.verification:
                        doc.heading(f"Verification — {a.title}", size=10)
                        doc.kv(a.verification, size=8)

        # 5. comparison, events, notes, methods
        doc.section_page("Comparison, events and methods" if report.get("comparison") else "Events and methods")
        cmp_ = comparison_table(report)
        if cmp_:
            doc.heading(cmp_[0], size=11)
            doc.table(cmp_[1], size=8)
            doc.para(CMP_NOTE, size=8, color="#5b6670")
        notes = summ.get("notes") or []
        if notes:
            doc.heading("Notes", size=11)
            for n in notes:
                doc.para(f"• {n}", size=8.5)
        doc.heading("Events", size=11)
        ev = events_table(report)
        if ev.rows:
            doc.table(ev, size=7.5)
        else:
            doc.para("no events.", color="#5b6670")
        doc.heading("Methods", size=11)
        for k, v in methods_glossary(report):
            doc.para(f"{k}: {v}", size=8.5)
        doc.para("Numbers with 3 significant digits; n/a = not available (never counted as 0).", size=8,
                 color="#5b6670")
        doc.close()
        return list(doc.pages)


def pdf_page_count(data: bytes) -> int:
    """Pages in a PDF written by matplotlib (its page objects are plain, uncompressed dictionaries)."""
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", data))
