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

One module per job: ``rich_view`` (the content as views), ``rich_charts`` (plots),
``rich_html`` and ``rich_pdf`` (the two renderers); this module is their entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wattlens.app.report.formats import no_steps
from wattlens.app.report.rich_charts import PlotSpec, fit_heights
from wattlens.app.report.rich_html import render_html
from wattlens.app.report.rich_pdf import _wrap, pdf_page_count, write_pdf
from wattlens.app.report.rich_view import (
    MAX_PLOT_POINTS,
    NO_LAYERS,
    Fig,
    Line,
    Method,
    Table,
    action_views,
    costliest_layers,
    estimate_flags,
    recommendation_views,
    thin,
    time_origin_ns,
    timelines,
    value_text,
)
from wattlens.profiler.errors import BadInputError

__all__ = ['Fig', 'Line', 'MAX_PLOT_POINTS', 'Method', 'NO_LAYERS', 'no_steps', 'PlotSpec', 'Table', '_wrap', 'action_views', 'costliest_layers', 'estimate_flags', 'fit_heights', 'pdf_page_count', 'recommendation_views', 'render_html', 'thin', 'time_origin_ns', 'timelines', 'value_text', 'write', 'write_pdf']


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
