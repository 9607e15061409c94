"""Report formats: each registered once in ``FORMATS`` (name, what the app's export list says, how
it writes); the CLI's ``--format`` choices, its help and the app's labels are derived from it.
``write_report`` picks the format and hands its writer to the one function that writes files."""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wattlens.app.gui.models.format import layer_label, share_with_se
from wattlens.app.report.output import check_output_path, write_output
from wattlens.app.report.rank_layers import HEADER as RANK_LAYER_HEADER
from wattlens.app.report.rank_layers import rank_layer_lines, rank_layer_rows
from wattlens.app.report.ranks import HEADER as RANK_HEADER
from wattlens.app.report.ranks import job_lines, rank_rows
from wattlens.profiler.errors import BadInputError

COMPARE_FORMATS = ("html", "pdf", "md", "json")  # the formats whose report holds a comparison
CSV_WHAT = ("samples", "steps", "layers")  # what `--format csv --what ...` exports
#: what each CSV table holds, as the app's Export screen offers it
CSV_WHAT_TEXT = {"samples": "power samples: every stored sample (series, unit, method, time, value)",
                 "steps": "steps: one row per step with its energy",
                 "layers": "layers: one row per module, phase and window"}


def fmt(value, unit: str = "", digits: int = 3, missing: str = "n/a") -> str:
    """A number for people: 3 significant digits, the unit, 'n/a' for None (never 0)."""
    if value is None:
        return missing
    if isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str)


def write_csv(store, session_id: int, path: Path, what: str = "samples") -> None:
    """CSV, times in seconds since the session start. ``samples``: every stored sample, long
    format (series, unit, method, t_s, value); ``steps``: every step with its energy (as in the
    summary); ``layers``: every stored layer row (class and instance, forward and backward, per
    window)."""
    from wattlens.profiler.figures import fill_step_energy
    from wattlens.profiler.summary import target_energy_between

    session = store.session(session_id)
    start = session["start_ns"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if what == "steps":
            # rank: the process of a multi-process job (empty for a single-process session)
            w.writerow(["session_id", "rank", "step", "t_start_s", "t_end_s", "duration_s", "samples", "tokens",
                        "energy_j"])
            steps = fill_step_energy(store.steps(session_id),
                                     target_energy_between(store.series_data(session_id, ["target/energy_j"])))
            for s in steps:
                w.writerow([session_id, _cell(s.rank), s.step, f"{(s.t_start_ns - start) / 1e9:.6f}",
                            f"{(s.t_end_ns - start) / 1e9:.6f}", f"{(s.t_end_ns - s.t_start_ns) / 1e9:.6f}",
                            _cell(s.samples), _cell(s.tokens), _cell(s.energy_j)])
            return
        if what == "layers":
            # path: as stored (the model root's is empty); name: as every view prints it
            w.writerow(["session_id", "rank", "window_start_s", "window_end_s", "path", "name", "granularity", "phase",
                        "method", "time_s", "self_time_s", "share", "energy_j", "self_energy_j",
                        "n_samples", "flops", "params", "split_se_s"])
            for lc in store.layer_costs(session_id):
                w.writerow([session_id, _cell(lc.rank), f"{(lc.window_start_ns - start) / 1e9:.6f}",
                            f"{(lc.window_end_ns - start) / 1e9:.6f}", lc.path, layer_label(lc.path),
                            lc.granularity, lc.phase,
                            lc.method, _cell(lc.time_s), _cell(lc.self_time_s), _cell(lc.share),
                            _cell(lc.energy_j), _cell(lc.self_energy_j), _cell(lc.n_samples),
                            _cell(lc.flops), _cell(lc.params), _cell(lc.split_se_s)])
            return
        meta = {s["key"]: s for s in session["series"]}
        data = store.series_data(session_id)
        w.writerow(["session_id", "series", "unit", "method", "t_s", "value"])
        for key in sorted(data):
            t, v = data[key]
            unit, method = meta.get(key, {}).get("unit", ""), meta.get(key, {}).get("method", "")
            t_s = (t - start) / 1e9
            for ts, val in zip(t_s.tolist(), v.tolist(), strict=True):
                w.writerow([session_id, key, unit, method, f"{ts:.4f}", repr(val)])


def _cell(value) -> str:
    """A CSV cell: empty for None (not available — never 0), repr for floats (no rounding)."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def no_steps(report: dict) -> str:
    """The line in place of a report's steps: why there are none, for how it was recorded."""
    from wattlens.app.present import no_steps_text  # not at the top: `wattlens --help` stays light

    return f"n/a — {no_steps_text((report.get('session') or {}).get('kind'))}."


def md_text(value) -> str:
    """User text in Markdown: HTML and table-breaking characters escaped."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("`", "\\`").replace("\n", " ")


def render_markdown(report: dict) -> str:
    s, summ = report["session"], report["summary"]
    lines = [f"# wattlens report — {md_text(s['name'])} (session {s['id']})", ""]
    lines += [f"- Status: **{s['status']}**" + (f" ({md_text(s['end_reason'])})" if s.get("end_reason") else ""),
              f"- Duration: {fmt(s.get('duration_s'), 's')}",
              f"- Host: {s['host']} — {s['hardware'].get('os', '')}"]
    if s.get("target_pid"):
        cmd = " ".join(s.get("target_cmdline") or [])
        lines.append(f"- Target: PID {s['target_pid']}: {md_text(cmd[:200])}")
    if report.get("headline"):
        lines += ["", "## Headline", ""] + [f"- **{md_text(h['label'])}**: {md_text(h['text'])}" for h in report["headline"]]
    lines += ["", "## Energy by source", "", "| Source | Method | Energy | Mean power | Target's share | Note |",
              "|---|---|---|---|---|---|"]
    for src in summ["sources"]:
        lines.append(f"| {md_text(src['label'])} | {src['method']} | {fmt(src['energy_j'], 'J')} | "
                     f"{fmt(src['mean_power_w'], 'W')} | {fmt(src['attributed_energy_j'], 'J')} | "
                     f"{md_text(src.get('reason') or src.get('attributed_reason') or '')} |")
    lines += ["", f"Total measured energy: **{fmt(summ.get('energy_j'), 'J')}** "
                  f"({fmt(summ.get('energy_wh'), 'Wh')}), method: {summ.get('energy_method') or 'n/a'}."]
    tgt = summ.get("target")
    if tgt:
        lines += [f"Energy attributed to the target: **{fmt(tgt.get('energy_j'), 'J')}**, mean "
                  f"{fmt(tgt.get('mean_power_w'), 'W')} — {tgt.get('method') or tgt.get('reason')}."]
    if summ.get("co2_g") is not None:
        lines.append(f"CO2: {fmt(summ['co2_g'], 'g')} ({summ['co2_basis']}).")
    from wattlens.app.present import steps_count_text

    st = summ.get("steps")
    if st:
        lines += ["", "## Per step", "", "| Steps | Mean step time | J/step | J/sample | J/token |", "|---|---|---|---|---|",
                  f"| {md_text(steps_count_text(st))} | {fmt(st['mean_duration_s'], 's')} | "
                  f"{fmt(st['energy_per_step_j'], 'J')} | "
                  f"{fmt(st['energy_per_sample_j'], 'J')} | {fmt(st['energy_per_token_j'], 'J')} |"]
    else:
        lines += ["", "## Per step", "", md_text(no_steps(report))]
    rows = rank_rows(report.get("ranks"))
    if rows:
        lines += ["", "## Per rank", "", "| " + " | ".join(RANK_HEADER) + " |",
                  "|" + "---|" * len(RANK_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += [""] + job_lines(report.get("ranks"))
    rows = rank_layer_rows(report.get("rank_layers"))
    if rows:
        lines += ["", "## Layers per rank", "", "| " + " | ".join(RANK_LAYER_HEADER) + " |",
                  "|" + "---|" * len(RANK_LAYER_HEADER)]
        lines += ["| " + " | ".join(md_text(x) for x in r) + " |" for r in rows]
        lines += [""] + rank_layer_lines(report.get("rank_layers"))
    if report.get("layers"):
        # the HTML/PDF table's columns: a backward row beside its forward row of the same path,
        # and the self energy that `wattlens show` prints beside the share
        lines += ["", "## Costliest layers", ""]
        if summ.get("layer_coverage"):
            lines += [md_text(summ["layer_coverage"]["text"]), ""]
        lines += ["| Module | Kind | Phase | Method | Time | Self time share | Energy | Self energy |",
                  "|---|---|---|---|---|---|---|---|"]
        for lr in report["layers"]:
            share = share_with_se(lr.get("self_share"), lr.get("self_share_se"))
            lines.append(f"| `{layer_label(lr['path'])}` | {lr['granularity']} | {lr.get('phase') or ''} | "
                         f"{lr['method']} | {fmt(lr['time_s'], 's')} | {share} | {fmt(lr['energy_j'], 'J')} | "
                         f"{fmt(lr.get('self_energy_j'), 'J')} |")
    lines += _markdown_advice(report)
    lines += _markdown_comparison(report)
    if summ.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {md_text(n)}" for n in summ["notes"]]
    lines += ["", "Methods: *counter* = hardware energy counter; *polled* = power readings integrated "
                  "(trapezoid); *estimated* = CPU power model (TDP × load), not a measurement; "
                  "*attributed* = the target's share (CPU time share, GPU SM share of dynamic power).", ""]
    return "\n".join(lines)


def _markdown_comparison(report: dict) -> list[str]:
    """The comparison with labels and units (rich_view's table), its warnings and normalised basis."""
    from wattlens.app.report.rich_view import CMP_NOTE, Fig, comparison_table, comparison_warnings

    cmp_ = comparison_table(report)
    if not cmp_:
        return []
    _title, table = cmp_
    other, basis = report["comparison"]["other_session"], report["comparison"].get("basis")
    lines = ["", f"## Compared with session {other['id']} ({md_text(other['name'])})", "",
             f"Normalised figure to read first: {md_text(basis or 'n/a')}.", ""] + [f"- **Warning:** {md_text(w)}" for w in comparison_warnings(report)]
    lines += ["", "| " + " | ".join(md_text(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(md_text(c.text + (" (estimated)" if c.estimated else "") if isinstance(c, Fig) else c) for c in row) + " |" for row in table.rows]
    # as the HTML says: the marks are this session's; the other column's methods are in its own report
    return lines + ["", md_text(CMP_NOTE)]


def _markdown_advice(report: dict) -> list[str]:
    """Recommendations (read back typed, worded by app/present.py), what was applied from them with
    predicted and measured side by side, and the actions this session recorded."""
    from wattlens.app.report.rich_view import action_views, applied_table, recommendation_views

    lines: list[str] = []
    recs = recommendation_views(report)
    if recs:
        lines += ["", "## Recommendations", ""]
        for r in recs:
            held = f" — **{md_text(r.held)}**" if r.held else ""
            lines.append(f"- **{md_text(r.title)}**{held} — {md_text(r.rationale)} "
                         f"(predicted: {md_text(r.predicted)}; measured: {md_text(r.measured)}"
                         f"{' — FLAGGED' if r.flagged else ''}; risk to quality: {md_text(r.risk)})")
    applied = applied_table(report)
    if applied:
        lines += ["", "## Applied from this session: recommended → applied → measured", "",
                  "| " + " | ".join(applied.headers) + " |", "|" + "---|" * len(applied.headers)]
        lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in applied.rows]
    acts = action_views(report)
    if acts:
        lines += ["", "## Actions applied", ""]
        for a in acts:
            lines.append(f"- {md_text(a.title)} — {a.status}: measured {md_text(a.measured)}; "
                         f"predicted {md_text(a.predicted)}")
            lines += [f"  - {md_text(k)}: {md_text(v)}" for k, v in a.verification]
    return lines


@dataclass(frozen=True)
class ReportJob:
    """What to export: a stored session (optionally compared with another)."""

    store: object
    session_id: int
    compare_id: int | None = None
    grid_g_per_kwh: float | None = None
    what: str = "samples"  # csv only

    def report(self) -> dict:
        from wattlens.app.report.data import build_report

        return build_report(self.store, self.session_id, compare_id=self.compare_id,
                            grid_g_per_kwh=self.grid_g_per_kwh)


Writer = Callable[[Path], None]


@dataclass(frozen=True)
class ReportFormat:
    name: str  # --format NAME and the file extension
    text: str  # what the app's export list and the CLI's help say
    prepare: Callable[[ReportJob], Writer]  # reads the store, returns what writes the file
    needs_rich: bool = False  # HTML/PDF: the rich renderer (matplotlib)


def _prepare_json(job: ReportJob) -> Writer:
    text = render_json(job.report())
    return lambda p: p.write_text(text)


def _prepare_md(job: ReportJob) -> Writer:
    text = render_markdown(job.report())
    return lambda p: p.write_text(text)


def _prepare_rich(name: str) -> Callable[[ReportJob], Writer]:
    def prepare(job: ReportJob) -> Writer:
        from wattlens.app.report import rich

        report = job.report()
        data = job.store.series_data(job.session_id)
        return lambda p: rich.write(name, report, data, p)
    return prepare


def _prepare_csv(job: ReportJob) -> Writer:
    if job.what not in CSV_WHAT:
        raise BadInputError(f"unknown CSV content '{job.what}'", hint=f"use --what {' or '.join(CSV_WHAT)}")
    job.store.session(job.session_id)  # an unknown session fails before any file is made
    return lambda p: write_csv(job.store, job.session_id, p, job.what)


def _prepare_trace(job: ReportJob) -> Writer:
    from wattlens.app.report.trace import render_trace
    from wattlens.profiler.figures import fill_step_energy
    from wattlens.profiler.summary import target_energy_between

    st, sid = job.store, job.session_id
    session, series = st.session(sid), st.series_data(sid)
    steps = fill_step_energy(st.steps(sid), target_energy_between(series))
    text = render_trace(session, series, steps, st.layer_costs(sid), st.events(sid))
    return lambda p: p.write_text(text)


FORMATS: dict[str, ReportFormat] = {f.name: f for f in (
    ReportFormat("html", "HTML report (self-contained, plots embedded)", _prepare_rich("html"), needs_rich=True),
    ReportFormat("pdf", "PDF report", _prepare_rich("pdf"), needs_rich=True),
    ReportFormat("md", "Markdown summary", _prepare_md),
    ReportFormat("json", "JSON (the full report document: every step and layer row)", _prepare_json),
    ReportFormat("csv", "CSV tables: power samples, steps or layers (one per file)", _prepare_csv),
    ReportFormat("trace", "Chrome trace JSON (Perfetto, chrome://tracing): steps, layers, power",
                 _prepare_trace),
)}


def write_report(store, session_id: int, fmt_name: str, path: str | os.PathLike, *,
                 compare_id: int | None = None, grid_g_per_kwh: float | None = None,
                 progress: Callable[[str, float], None] | None = None, what: str = "samples") -> Path:
    spec = FORMATS.get(fmt_name)
    if spec is None:
        raise BadInputError(f"unknown report format '{fmt_name}'", hint=f"use one of: {', '.join(FORMATS)}")
    path = check_output_path(path)  # refuse a device, FIFO, link... before any work
    if progress:
        progress("reading the session", 0.1)
    writer = spec.prepare(ReportJob(store, session_id, compare_id, grid_g_per_kwh, what))
    if progress:
        progress("rendering", 0.5)
    write_output(path, writer)
    if progress:
        progress("done", 1.0)
    return path
