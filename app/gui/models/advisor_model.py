"""The advisor panel's plain-Python side: recommendation documents turned into the lines a person
reads, the state of one session's advice, and the `wattlens optimize` child that applies an action
to a model copy.

Applying runs in a separate interpreter (``python -m wattlens.app optimize … --json``): torch,
transformers and the A/B measurement stay out of the GUI process, and a crash there is one line
here. No Qt in this module (the view is ``qt_advisor.py``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wattlens.app.gui.models.format import one_line
from wattlens.app.gui.models.signal import Signal
from wattlens.profiler.errors import ActionError


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"


def _value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class RecommendationView:
    """One recommendation as the panel shows it (every field already in words)."""

    rule: str
    title: str
    rationale: str
    evidence: tuple[str, ...]
    saving_text: str
    method_text: str
    saving_detail: str
    confidence_text: str
    risk_text: str
    action: str | None
    command: str | None
    notes: tuple[str, ...] = ()

    @classmethod
    def from_doc(cls, doc: dict) -> RecommendationView:
        ps = doc.get("predicted_saving") or {}
        basis = ps.get("basis") or "energy per sample"
        if ps.get("fraction") is None:
            what = ps.get("measure_command") or doc.get("command")
            saving = f"measure first: {what}" if what else "measure first"
        else:
            saving = (f"predicted saving: {_pct(ps['fraction'])} less {basis} "
                      f"(interval {_pct(ps.get('low'))} … {_pct(ps.get('high'))})")
        evidence = tuple(
            f"{e.get('what')}: {_value(e.get('value'))} {e.get('unit') or ''}".rstrip()
            + (f"  [{e['source']}]" if e.get("source") else "")
            for e in doc.get("evidence") or [])
        risk = doc.get("risk") or {}
        return cls(
            rule=str(doc.get("rule", "")), title=str(doc.get("title", "")),
            rationale=str(doc.get("rationale", "")), evidence=evidence, saving_text=saving,
            method_text=f"method: {ps.get('method') or 'n/a'}",
            saving_detail=str(ps.get("text") or ""),
            confidence_text=f"confidence: {doc.get('confidence', 'n/a')}",
            risk_text=f"risk to quality: {risk.get('level', 'n/a')} — {risk.get('text', '')}".rstrip(" —"),
            action=doc.get("action"), command=doc.get("command"), notes=tuple(doc.get("notes") or ()))


@dataclass
class ApplyState:
    """One `wattlens optimize` run for one recommendation's action."""

    action: str
    model_dir: str
    out_dir: str
    lines: list[str] = field(default_factory=list)
    running: bool = True
    status: str | None = None
    measured_text: str | None = None
    predicted_text: str | None = None
    error: str | None = None
    session_id: int | None = None


class AdvisorModel:
    """The advice shown for one stored session; views subscribe to ``changed``."""

    def __init__(self) -> None:
        self.changed = Signal()
        self.session_id: int | None = None
        self.recommendations: list[RecommendationView] = []
        self.silent_rules: list[dict] = []
        self.analysed = False  # False: only what was stored before (or nothing)
        self.busy = False
        self.status = ""
        self.error = ""
        self.applies: dict[str, ApplyState] = {}

    def set_session(self, session_id: int, stored: list[dict]) -> None:
        self.session_id = session_id
        self.recommendations = [RecommendationView.from_doc(d) for d in stored]
        self.silent_rules = []
        self.analysed = False
        self.busy = False
        self.error = ""
        self.applies = {}
        self.status = (f"{len(stored)} stored recommendation(s) — press Analyse to compute them anew"
                       if stored else "no advice stored for this session — press Analyse")
        self.changed.emit()

    def start_analysis(self) -> None:
        self.busy, self.error, self.status = True, "", "analysing the session…"
        self.changed.emit()

    def set_advice(self, doc: dict) -> None:
        if doc.get("session_id") != self.session_id:
            return  # another session was opened meanwhile
        self.recommendations = [RecommendationView.from_doc(d) for d in doc.get("recommendations") or []]
        self.silent_rules = list(doc.get("silent_rules") or [])
        self.analysed, self.busy = True, False
        n = len(self.recommendations)
        self.status = (f"{n} recommendation(s); predictions are not promises — Apply measures the real effect"
                       if n else "no recommendation: every rule lacked its evidence (see below)")
        self.changed.emit()

    def set_error(self, text: str) -> None:
        self.busy, self.error = False, one_line(text)
        self.changed.emit()

    # ---- apply ---------------------------------------------------------------------------------
    def start_apply(self, action: str, model_dir: str, out_dir: str) -> ApplyState:
        state = ApplyState(action, model_dir, out_dir)
        self.applies[action] = state
        self.changed.emit()
        return state

    def apply_line(self, action: str, line: str) -> None:
        state = self.applies.get(action)
        if state is not None:
            state.lines.append(one_line(line))
            self.changed.emit()

    def apply_done(self, action: str, doc: dict) -> None:
        state = self.applies.get(action)
        if state is None:
            return
        state.running = False
        state.status = doc.get("status")
        state.measured_text = doc.get("measured_text")
        state.predicted_text = doc.get("predicted_text")
        state.session_id = doc.get("session_id")
        self.changed.emit()

    def apply_failed(self, action: str, text: str) -> None:
        state = self.applies.get(action)
        if state is not None:
            state.running, state.error = False, one_line(text)
            self.changed.emit()


def optimize_argv(model_dir: str, action: str, out_dir: str, db: str, *, rounds: int | None = None) -> list[str]:
    """The child command line: the same CLI a user would type, in this interpreter."""
    argv = [sys.executable, "-m", "wattlens.app", "optimize", str(model_dir), "--action", action,
            "--out", str(out_dir), "--json", "--db", str(db)]
    if rounds is not None:
        argv += ["--rounds", str(int(rounds))]
    return argv


def store_db_arg(store) -> str:
    """What ``--db`` needs to reach the same database as the window's store."""
    path = getattr(store, "path", None)
    return str(path) if path is not None else str(store.url)


def run_optimize(argv: list[str], *, on_line: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, poll_s: float = 0.1) -> dict:
    """Run the optimize child to its end; its stderr lines go to ``on_line`` as they come, its one
    JSON document (stdout) is returned. ``should_stop`` ending true kills the child (the window
    closes). A failure raises :class:`ActionError` with the child's own last message."""
    tail: list[str] = []

    def pump(stream) -> None:
        for raw in stream:
            line = raw.rstrip()
            if line:
                tail.append(line)
                del tail[:-20]
                if on_line is not None:
                    on_line(line)

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        reader = threading.Thread(target=pump, args=(proc.stderr,), name="wattlens-optimize-stderr", daemon=True)
        reader.start()
        stopped = False
        while proc.poll() is None:
            if should_stop is not None and should_stop() and not stopped:
                stopped = True
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the child closes its session as failed
                try:
                    proc.wait(timeout=3.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
            time.sleep(poll_s)
        reader.join(timeout=5)
        proc.stderr.close()
        out.seek(0)
        text = out.read()
    if stopped:
        raise ActionError("optimize stopped: the window closed before it finished",
                          hint="apply again; the model copy was not completed")
    if proc.returncode != 0:
        last = next((t for t in reversed(tail) if t.startswith("wattlens:")), tail[-1] if tail else "")
        last = last.removeprefix("wattlens:").strip() or f"exit code {proc.returncode}"
        raise ActionError(f"optimize failed: {last}")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ActionError("optimize printed no JSON result", hint="run the same command in a terminal to see why") from None
