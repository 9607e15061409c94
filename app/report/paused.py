"""Where wattlens itself stopped the target: the spans of its native stack reads (``py-spy
--native`` stops the target while it reads it), as the stack sampler stores them with its
``backward-ops`` (or ``native-runs``) event. The app's plots and the rich report shade them and
say what the runs cost the target, with the figure the backward note states."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from wattlens.profiler.stacks.native import native_cost_phrase

NOTE = "shaded: native stack reads (py-spy --native), which stop the target to read it"


def native_pauses(events_data: Iterable[Mapping], start_ns: int) -> tuple[list[tuple[float, float]], str]:
    """(spans in seconds since ``start_ns``, the legend's line) from the events' data; no spans,
    no line."""
    runs = [r for data in events_data for r in (data.get("native_runs") or ())
            if isinstance(r, Mapping) and isinstance(r.get("t_start_ns"), int) and isinstance(r.get("t_end_ns"), int)]
    if not runs:
        return [], ""
    spans = [((r["t_start_ns"] - start_ns) / 1e9, (r["t_end_ns"] - start_ns) / 1e9) for r in runs]
    costs = [float(r["target_cost_s"]) for r in runs if isinstance(r.get("target_cost_s"), (int, float))]
    cost = f": {native_cost_phrase(len(costs), sum(costs))} (estimated)" if costs else ""
    return spans, NOTE + cost
