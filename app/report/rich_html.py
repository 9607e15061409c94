"""The HTML report: one self-contained file (inline CSS, plots as inline SVG, no script, no
external URL) drawn from the views in ``rich_view``."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping

import numpy as np

from wattlens.app.report.formats import fmt, no_steps
from wattlens.app.report.rich_charts import _svg, plot_specs
from wattlens.app.report.rich_view import (
    CMP_NOTE,
    INCLUSIVE_NOTE,
    METHOD_TEXT,
    NO_LAYERS,
    Cell,
    Fig,
    Method,
    Table,
    _method_kind,
    _when,
    action_views,
    applied_table,
    comparison_table,
    comparison_warnings,
    costliest_layers,
    estimate_flags,
    events_table,
    headline,
    layer_coverage_text,
    layers_table,
    methods_glossary,
    overview_rows,
    ranks_table,
    recommendation_views,
    series_table,
    sources_table,
    steps_table,
    unavailable_sources,
)

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

    out.append('<section id="headline"><h2>Headline</h2>'
               + _kv_html([(h["label"], h["text"]) for h in report.get("headline") or []]) + "</section>")
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

    ranks = ranks_table(report)
    if ranks:
        out.append('<section id="ranks"><h2>Per rank</h2>' + _table_html(ranks[0]))
        out += [f'<p class="note">{_e(line)}</p>' for line in ranks[1]]
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
        out.append(f'<p class="note">{_e(no_steps(report))}</p>')
    out.append("</section>")

    layers = layers_table(report)
    out.append('<section id="layers"><h2>Costliest layers</h2>')
    if layers:
        methods = sorted({str(lr.get("method")) for lr in costliest_layers(report)})
        out.append("<p>" + "; ".join(f"<b>{_e(m)}</b>: {_e(METHOD_TEXT.get(m, m))}" for m in methods) + ".</p>")
        if layer_coverage_text(report):
            out.append(f"<p>{_e(layer_coverage_text(report))}.</p>")
        out.append(_table_html(layers))
        out.append(f"<figure>{_svg(specs['layers'])}<figcaption>{_e(INCLUSIVE_NOTE)}</figcaption></figure>")
    else:
        out.append(f'<p class="note">{_e(NO_LAYERS)}</p>')
    out.append("</section>")

    recs, acts = recommendation_views(report), action_views(report)
    out.append('<section id="recommendations"><h2>Recommendations</h2>')
    if recs:
        out.append(_table_html(Table(["Recommendation", "Predicted saving", "Measured saving", "Risk"],
                                     [[r.title + (" — not worth it yet" if r.held else ""), r.predicted,
                                       r.measured + (" (FLAGGED)" if r.flagged else ""), r.risk] for r in recs],
                                     [], set())))
        for r in recs:
            out.append('<div class="rec">' + f"<h3>{_e(r.title)}</h3>"
                       + (f'<p class="note"><strong>{_e(r.held)}</strong></p>' if r.held else "")
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
    applied = applied_table(report)
    if applied:
        out.append("<h3>Applied from this session: recommended → applied → measured</h3>" + _table_html(applied))
    if acts:
        out.append(_table_html(Table(["Action", "Status", "Parameters", "Predicted saving", "Measured saving"],
                                     [[a.title, a.status, a.params, a.predicted, a.measured] for a in acts], [], set())))
        for a in acts:
            if a.verification:
                out.append(f"<h3>Verification — {_e(a.title)}</h3>" + _kv_html(a.verification))
    elif not applied:
        out.append('<p class="note">none applied.</p>')
    out.append("</section>")

    cmp_ = comparison_table(report)
    if cmp_:
        ctitle, ctable = cmp_
        warn = "".join(f'<p class="note"><strong>Warning:</strong> {_e(w)}</p>' for w in comparison_warnings(report))
        out.append(f'<section id="comparison"><h2>{_e(ctitle)}</h2>{warn}{_table_html(ctable)}'
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


