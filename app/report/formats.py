"""Render a report dict (see data.py) to a file. One function per format; `write_report` picks."""

from __future__ import annotations

import csv
import html
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from wattlens.app.report.ranks import HEADER as RANK_HEADER
from wattlens.app.report.ranks import job_lines, rank_rows
from wattlens.profiler.errors import BadInputError, WattlensError

FORMATS = ("html", "pdf", "md", "json", "csv")


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


def write_csv(store, session_id: int, path: Path) -> None:
    """Every stored sample, long format: series, unit, method, t_s (since start), value."""
    session = store.session(session_id)
    meta = {s["key"]: s for s in session["series"]}
    data = store.series_data(session_id)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["session_id", "series", "unit", "method", "t_s", "value"])
        for key in sorted(data):
            t, v = data[key]
            unit, method = meta.get(key, {}).get("unit", ""), meta.get(key, {}).get("method", "")
            t_s = (t - session["start_ns"]) / 1e9
            for ts, val in zip(t_s.tolist(), v.tolist(), strict=True):
                w.writerow([session_id, key, unit, method, f"{ts:.4f}", repr(val)])


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
    st = summ.get("steps")
    if st:
        lines += ["", "## Per step", "", "| Steps | Mean step time | J/step | J/sample | J/token |", "|---|---|---|---|---|",
                  f"| {st['count']} | {fmt(st['mean_duration_s'], 's')} | {fmt(st['energy_per_step_j'], 'J')} | "
                  f"{fmt(st['energy_per_sample_j'], 'J')} | {fmt(st['energy_per_token_j'], 'J')} |"]
    rows = rank_rows(report.get("ranks"))
    if rows:
        lines += ["", "## Per rank", "", "| " + " | ".join(RANK_HEADER) + " |",
                  "|" + "---|" * len(RANK_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += [""] + job_lines(report.get("ranks"))
    if report.get("layers"):
        lines += ["", "## Costliest layers", "", "| Module | Kind | Method | Time | Self share | Energy |",
                  "|---|---|---|---|---|---|"]
        for lr in report["layers"]:
            share = f"{lr['self_share'] * 100:.1f} %" if lr.get("self_share") is not None else "n/a"
            lines.append(f"| `{lr['path']}` | {lr['granularity']} | {lr['method']} | {fmt(lr['time_s'], 's')} | "
                         f"{share} | {fmt(lr['energy_j'], 'J')} |")
    if report.get("recommendations"):
        lines += ["", "## Recommendations", ""]
        for r in report["recommendations"]:
            pred = r.get("predicted_saving") or {}
            lines.append(f"- **{md_text(r.get('title'))}** — {md_text(r.get('rationale', ''))} "
                         f"(predicted saving: {pred.get('text', 'n/a')}; risk: {r.get('risk', 'n/a')})")
    if report.get("actions"):
        lines += ["", "## Actions applied", ""]
        for a in report["actions"]:
            res = a.get("result") or {}
            lines.append(f"- {a['kind']} — {a['status']}: measured saving {res.get('measured_text', 'n/a')}, "
                         f"predicted {res.get('predicted_text', 'n/a')}")
    cmp_ = report.get("comparison")
    if cmp_:
        lines += ["", f"## Compared with session {cmp_['other_session']['id']} ({md_text(cmp_['other_session']['name'])})",
                  "", "| Figure | This | Other | Δ | Δ % |", "|---|---|---|---|---|"]
        for key, d in cmp_.items():
            if key == "other_session":
                continue
            pct = f"{d['delta_pct']:+.1f} %" if d["delta_pct"] is not None else "n/a"
            lines.append(f"| {key} | {fmt(d['this'])} | {fmt(d['other'])} | {fmt(d['delta'])} | {pct} |")
    if summ.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {md_text(n)}" for n in summ["notes"]]
    lines += ["", "Methods: *counter* = hardware energy counter; *polled* = power readings integrated "
                  "(trapezoid); *estimated* = CPU power model (TDP × load), not a measurement; "
                  "*attributed* = the target's share (CPU time share, GPU SM share of dynamic power).", ""]
    return "\n".join(lines)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside the destination, then rename: a failed export never leaves half a file."""
    path = path.expanduser()
    if path.is_dir():
        raise BadInputError(f"{path} is a folder", hint="give a file path to -o, e.g. -o report.html")
    if not path.parent.exists():
        raise BadInputError(f"folder {path.parent} does not exist", hint="create it or choose another -o path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise WattlensError(f"cannot write {path}: {exc.strerror or exc}",
                            hint="check free space and permissions, or choose another -o path") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_report(store, session_id: int, fmt_name: str, path: str | os.PathLike, *,
                 compare_id: int | None = None, grid_g_per_kwh: float | None = None,
                 progress: Callable[[str, float], None] | None = None) -> Path:
    from wattlens.app.report.data import build_report

    if fmt_name not in FORMATS:
        raise BadInputError(f"unknown report format '{fmt_name}'", hint=f"use one of: {', '.join(FORMATS)}")
    path = Path(path)
    if progress:
        progress("reading the session", 0.1)
    if fmt_name == "csv":
        store.session(session_id)
        _atomic_write(path, lambda p: write_csv(store, session_id, p))
        return path
    report = build_report(store, session_id, compare_id=compare_id, grid_g_per_kwh=grid_g_per_kwh)
    if progress:
        progress("rendering", 0.5)
    if fmt_name == "json":
        _atomic_write(path, lambda p: p.write_text(render_json(report)))
    elif fmt_name == "md":
        _atomic_write(path, lambda p: p.write_text(render_markdown(report)))
    else:
        from wattlens.app.report import rich  # HTML/PDF with embedded plots (issue 6)

        data = store.series_data(session_id)
        _atomic_write(path, lambda p: rich.write(fmt_name, report, data, p))
    if progress:
        progress("done", 1.0)
    return path
