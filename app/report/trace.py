"""A session as Chrome trace-event JSON (opens in Perfetto and chrome://tracing).

Format: https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU — the
JSON object form ``{"traceEvents": [...], "displayTimeUnit": "ms"}``, times in microseconds
since the session start. What goes where:

- one process, "wattlens session N"; each track is a named thread (``"M"`` metadata events);
- track 1 "steps": one complete event (``"ph": "X"``) per step, its energy in ``args``; a
  multi-process job has one steps track per rank ("steps, rank N"), the rank in ``args``;
- one track per module (path, granularity, phase, rank): one ``"X"`` event per layer window, starting at
  the window's start and as long as the module's inclusive time in it (the window's edges and the
  module's energy in ``args``: the agent and py-spy measure time per window, not each call);
- every power series as a counter track (``"ph": "C"``), the target's power among them;
- session events (warnings, applied actions, invariant failures) as instant events (``"ph": "i"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from wattlens.profiler.records import LayerCost, StepRecord

PID = 1
STEPS_TID = 1
EVENTS_TID = 2
FIRST_LAYER_TID = 10


def _us(t_ns: int, start_ns: int) -> float:
    return (t_ns - start_ns) / 1e3


def _track(events: list[dict], tid: int, name: str, sort_index: int) -> None:
    events.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": tid, "args": {"name": name}})
    events.append({"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": tid,
                   "args": {"sort_index": sort_index}})


def trace_events(session: Mapping, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 steps: Sequence[StepRecord], layers: Sequence[LayerCost], events: Sequence) -> dict:
    """The trace document for one stored session."""
    start = int(session["start_ns"])
    out: list[dict] = [{"ph": "M", "name": "process_name", "pid": PID, "tid": 0,
                        "args": {"name": f"wattlens session {session['id']}: {session.get('name', '')}"}}]
    _track(out, EVENTS_TID, "events", 1)
    # one steps track per rank of a multi-process job (their steps overlap in time); a
    # single-process session's steps on the one "steps" track, as before
    ranks = sorted({s.rank for s in steps if s.rank is not None})
    next_tid = FIRST_LAYER_TID
    step_tids: dict[int | None, int] = {}
    for i, r in enumerate(ranks or [None]):
        if i == 0:
            step_tids[r] = STEPS_TID
        else:
            step_tids[r], next_tid = next_tid, next_tid + 1
        _track(out, step_tids[r], "steps" if r is None else f"steps, rank {r}", 0)
    for s in steps:
        out.append({"ph": "X", "name": f"step {s.step}", "cat": "step", "pid": PID,
                    "tid": step_tids.get(s.rank, STEPS_TID),
                    "ts": _us(s.t_start_ns, start), "dur": max(s.t_end_ns - s.t_start_ns, 0) / 1e3,
                    "args": {"step": s.step, "energy_j": s.energy_j, "samples": s.samples,
                             "tokens": s.tokens, "rank": s.rank}})
    tids: dict[tuple[str, str, str, int | None], int] = {}
    for lc in sorted(layers, key=lambda r: (r.granularity, r.path, r.phase, r.rank if r.rank is not None else -1,
                                            r.window_start_ns)):
        key = (lc.path, lc.granularity, lc.phase, lc.rank)
        if key not in tids:
            tids[key], next_tid = next_tid, next_tid + 1
            phase = f" ({lc.phase})" if lc.phase else ""
            rank = f", rank {lc.rank}" if lc.rank is not None else ""
            _track(out, tids[key], f"{lc.granularity}: {lc.path}{phase}{rank}", tids[key])
        window_us = max(lc.window_end_ns - lc.window_start_ns, 0) / 1e3
        out.append({"ph": "X", "name": lc.path, "cat": f"layer,{lc.granularity}", "pid": PID,
                    "tid": tids[key], "ts": _us(lc.window_start_ns, start),
                    "dur": min(lc.time_s * 1e6, window_us),
                    "args": {"window_start_us": _us(lc.window_start_ns, start),
                             "window_end_us": _us(lc.window_end_ns, start), "method": lc.method,
                             "time_s": lc.time_s, "self_time_s": lc.self_time_s, "share": lc.share,
                             "energy_j": lc.energy_j, "self_energy_j": lc.self_energy_j,
                             "phase": lc.phase, "rank": lc.rank}})
    for key in sorted(k for k in series if k.endswith("/power_w")):
        t, v = series[key]
        name = f"{key} (W)"
        out += [{"ph": "C", "name": name, "pid": PID, "ts": _us(int(ti), start), "args": {"W": float(vi)}}
                for ti, vi in zip(t.tolist(), v.tolist(), strict=True)]
    for e in events:
        out.append({"ph": "i", "s": "p", "name": e.kind, "cat": "event", "pid": PID, "tid": EVENTS_TID,
                    "ts": _us(e.t_ns, start), "args": {"message": e.message}})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"producer": "wattlens", "session_id": session["id"],
                          "time_origin": "session start (CLOCK_MONOTONIC start_ns)",
                          "start_ns": start}}


def render_trace(session: Mapping, series, steps, layers, events) -> str:
    return json.dumps(trace_events(session, series, steps, layers, events), allow_nan=False)
