"""The PDF report, drawn with matplotlib's own PDF backend (``PdfPages``): text pages laid out by
a small flow writer (:class:`_PdfFlow`), plots from ``rich_charts``."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wattlens.app.report.formats import fmt, no_steps
from wattlens.app.report.rich_charts import _RC, PlotSpec, _figure, fit_heights, plot_specs
from wattlens.app.report.rich_view import (
    CMP_NOTE,
    INCLUSIVE_NOTE,
    METHOD_TEXT,
    NO_LAYERS,
    Cell,
    Fig,
    Method,
    Table,
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
    sources_table,
    steps_table,
    unavailable_sources,
)


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
        if report.get("headline"):
            doc.heading("Headline")
            doc.kv([(h["label"], h["text"]) for h in report["headline"]], size=7.5)
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
            doc.para(no_steps(report), color="#5b6670")
        ranks = ranks_table(report)
        if ranks:
            doc.heading("Per rank", size=11)
            doc.table(ranks[0])
            for line in ranks[1]:
                doc.para(line, size=8.5, color="#5b6670")
        doc.heading("Costliest layers", size=11)
        layers = layers_table(report)
        if layers:
            for m in sorted({str(lr.get("method")) for lr in costliest_layers(report)}):
                doc.para(f"{m}: {METHOD_TEXT.get(m, m)}.", size=8.5)
            if layer_coverage_text(report):
                doc.para(f"{layer_coverage_text(report)}.", size=8.5)
            doc.plot(specs["layers"])
            doc.table(layers, size=7)
            doc.para(INCLUSIVE_NOTE, size=8, color="#5b6670")
        else:
            doc.para(NO_LAYERS, color="#5b6670")

        # 4. recommendations and actions
        recs, acts, applied = recommendation_views(report), action_views(report), applied_table(report)
        if recs or acts or applied:
            doc.section_page("Recommendations and actions")
            if recs:
                doc.table(Table(["Recommendation", "Predicted saving", "Measured saving", "Risk"],
                                [[r.title, r.predicted, r.measured, r.risk] for r in recs], [0.34, 0.22, 0.22, 0.22], set()))
                for r in recs:
                    doc.heading(r.title, size=10.5)
                    if r.rationale:
                        doc.para(r.rationale, size=8.5)
                    doc.kv(([("Not advice", r.held)] if r.held else [])
                           + [("Rule", r.rule or "n/a"), ("Predicted saving", r.predicted),
                              ("Measured saving", r.measured + (" (FLAGGED)" if r.flagged else "")),
                              ("Risk", r.risk), ("Action", r.action)] + r.details, size=8)
                    if r.evidence:
                        doc.table(Table(["Evidence", "Value", "Read from"], r.evidence, [0.4, 0.2, 0.4], {1}), size=7.5)
            if applied:
                doc.heading("Applied from this session: recommended → applied → measured", size=11)
                doc.table(applied, size=7.5)
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
            for w in comparison_warnings(report):
                doc.para(f"Warning: {w}", size=8, color="#8a4b00")
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
