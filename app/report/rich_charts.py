"""The rich report's plots, shared by HTML (inline SVG) and PDF: matplotlib through
``matplotlib.figure.Figure`` (never pyplot), imported lazily."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from wattlens.app.gui.models.format import ROOT_NAME, layer_label
from wattlens.app.report.formats import fmt
from wattlens.app.report.rich_view import (
    Line,
    _pct,
    costliest_layers,
    estimate_flags,
    layer_bar_key,
    timelines,
)

LEGEND_OFFSET_PT = 30.0  # legend's top, below the x axis (clears tick labels and the axis label)
LEGEND_ROW_IN = 0.16  # height of one legend entry at the legend font size
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


def _draw_lines(ax, lines: Sequence[Line], title: str, ylabel: str, xlabel: str,
                paused: dict | None = None) -> None:
    """``paused``: the report's spans where wattlens stopped the target, shaded (the app's plots
    shade them too), with their line in the legend."""
    t_last = max((float(ln.t_s[-1]) for ln in lines if len(ln.t_s)), default=None)
    for i, (x0, x1) in enumerate((paused or {}).get("spans_s") or ()):
        if t_last is not None:  # a run the stop cut short ends after the last sample: not past the curves
            x1 = min(x1, t_last)
        ax.axvspan(x0, x1, color="#888888", alpha=0.22, lw=0, zorder=0,
                   label=paused["note"] if i == 0 else None)
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
    # a backward row has its forward row's path: the label says which it is, as `show` does
    labels = [layer_label(_short_path(str(lr.get("path") or ROOT_NAME)), lr.get("phase")) for lr in rows]
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

    paused = report.get("paused") or {}

    def time_plot(name: str, title: str, ylabel: str, h: float) -> PlotSpec:
        shade = paused if name == "power" and paused.get("spans_s") and lines[name] else None
        rows = len(lines[name]) + (1 if shade else 0)
        return PlotSpec(name, h, 0.75, 0.5 + (LEGEND_ROW_IN * rows + 0.05 if rows else 0.0),
                        lambda ax: _draw_lines(ax, lines[name], title, ylabel, xlabel, shade))

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


