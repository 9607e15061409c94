"""The advisor panel's plain-Python side: recommendation documents turned into the lines a person
reads, the state of one session's advice, and the `wattlens optimize` child that applies an action
to a model copy.

Applying runs in a separate interpreter (``python -m wattlens.app optimize … --json``): torch,
transformers and the A/B measurement stay out of the GUI process, and a crash there is one line
here. No Qt in this module (the view is ``qt_advisor.py``).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wattlens.advisor.recommend import MODEL_PLACEHOLDER, Recommendation
from wattlens.app import present
from wattlens.app.gui.models.format import one_line
from wattlens.app.gui.models.signal import Signal
from wattlens.app.present import Outcome
from wattlens.profiler.errors import ActionError
from wattlens.profiler.process import exit_text

#: How long a Ctrl-C'd optimize child may take to close its session as failed before it is
#: killed. A CI run of the GUI test next to another test suite (four jobs on two cores) took
#: more than the 3 s this was; a killed child's session is not lost either: it stays 'running'
#: until the database is next opened, which marks it 'interrupted' (Store.recover_interrupted).
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class RecommendationView:
    """One recommendation as the panel shows it (every field already in words, by app/present.py).

    ``held``: why it is "not worth it yet" (its predicted interval includes no change), else None.
    ``outcome``: the action applied from it, predicted and measured side by side (None: not applied)."""

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
    held: str | None = None
    outcome: Outcome | None = None

    @property
    def model_folder(self) -> str | None:
        """The model folder the card's command names (the session knew it), where it is a folder
        here; None for the MODEL placeholder."""
        try:
            argv = shlex.split(self.command or "")
        except ValueError:
            return None
        if argv[:2] != ["wattlens", "optimize"] or len(argv) < 3 or argv[2] == MODEL_PLACEHOLDER:
            return None
        return argv[2] if Path(argv[2]).is_dir() else None

    @classmethod
    def from_rec(cls, rec: Recommendation, outcome: Outcome | None = None) -> RecommendationView:
        ps = rec.predicted_saving
        if ps.is_measure_first:
            what = ps.measure_command or rec.command
            saving = f"measure first: {what}" if what else "measure first"
        else:
            saving = f"predicted: {present.predicted_text(ps, with_method=False)}"
        return cls(
            rule=rec.rule, title=rec.title, rationale=rec.rationale,
            evidence=tuple(present.evidence_text(e) for e in rec.evidence), saving_text=saving,
            method_text=f"method: {ps.method}", saving_detail=ps.text,
            confidence_text=f"confidence: {rec.confidence}", risk_text=f"risk to quality: {present.risk_text(rec.risk)}",
            action=rec.action, command=rec.command, notes=rec.notes,
            held=present.not_worth_it_reason(ps), outcome=outcome)

    @classmethod
    def from_doc(cls, doc: dict) -> RecommendationView:
        return cls.from_rec(Recommendation.from_dict(doc))

    @property
    def outcome_lines(self) -> tuple[str, ...]:
        """recommended → applied → measured, predicted beside measured, the flag and fidelity."""
        o = self.outcome
        if o is None:
            return ()
        return (f"applied: {o.action} ({o.status_text}, action #{o.action_id}, session {o.optimize_session_id})",
                f"predicted: {o.predicted}", f"measured: {o.measured}",
                o.flag_text or "no interval to check against", f"fidelity: {o.fidelity}")


def stored_advice(store, session_id: int) -> dict:
    """A session's stored recommendations and the outcomes of actions applied from them (one read);
    for an optimize session, the A/B results it recorded (``recorded``): what its advisor tab shows
    in place of advice on the optimizer's own process."""
    docs = store.recommendations(session_id)
    recs, _bad = present.read_recommendations(docs)
    done = present.outcomes(recs, store.actions(source_session_id=session_id), session_id)
    optimizer = store.session(session_id).get("kind") == "optimize"
    recorded = [present.outcome(a, None) for a in store.actions(session_id)] if optimizer else []
    return {"session_id": session_id, "recommendations": docs, "outcomes": done, "recorded": recorded,
            "optimizer": optimizer}


def recorded_lines(o: Outcome) -> tuple[str, ...]:
    """One A/B result an optimize session recorded, as its advisor tab lists it."""
    return (f"{o.action} ({o.status_text}, action #{o.action_id})", f"measured: {o.measured}",
            f"predicted before this run: {o.predicted}", o.flag_text or "no predicted interval to check against",
            f"fidelity: {o.fidelity}")


def _views(docs: list[dict], done: list[Outcome]) -> list[RecommendationView]:
    recs, _bad = present.read_recommendations(docs)
    by_action = {o.action: o for o in done}
    return [RecommendationView.from_rec(r, by_action.get(r.action) if r.action else None) for r in recs]


@dataclass
class ApplyState:
    """One `wattlens optimize` run for one recommendation's action."""

    action: str
    model_dir: str
    out_dir: str
    lines: list[str] = field(default_factory=list)
    running: bool = True
    status: str | None = None  # as stored; the card shows ``status_text``
    measured_text: str | None = None
    predicted_text: str | None = None
    error: str | None = None
    session_id: int | None = None
    status_text: str | None = None  # present.action_status_text: the word agrees with the interval
    note: str | None = None  # why a stored outcome was not accepted (refused, unverified): its one line


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
        self.outcomes: list[Outcome] = []
        #: an optimize session's own A/B results (it is the optimizer's process: no advice on it)
        self.recorded: list[Outcome] = []
        self.optimizer = False  # an optimize session: no Analyse, whatever it recorded

    def set_session(self, session_id: int, stored: list[dict], outcomes: list[Outcome] | None = None,
                    recorded: list[Outcome] | None = None, *, optimizer: bool = False) -> None:
        self.session_id = session_id
        self.outcomes = list(outcomes or [])
        self.recorded = list(recorded or [])
        self.optimizer = optimizer
        self.recommendations = _views(stored, self.outcomes)
        self.silent_rules = []
        self.analysed = False
        self.busy = False
        self.error = ""
        self.applies = {}
        if self.recorded:
            self.status = ("an optimize run: below is the A/B result it recorded; advice comes from the "
                           "session it measured the model for, not from the optimizer's own process")
        elif optimizer:  # a batch-size sweep, or a run stopped before its result was stored
            self.status = ("an optimize run: it recorded no A/B result (a batch-size sweep, or stopped "
                           "first: see its end); advice comes from measured sessions, not the optimizer's own process")
        else:
            self.status = (f"{len(stored)} stored recommendation(s) — press Analyse to compute them anew"
                           if stored else "no recommendation stored for this session (not analysed yet, or "
                                          "the last analysis found none) — press Analyse")
        self.changed.emit()

    def start_analysis(self) -> None:
        self.busy, self.error, self.status = True, "", "analysing the session…"
        self.changed.emit()

    def set_advice(self, doc: dict) -> None:
        if doc.get("session_id") != self.session_id:
            return  # another session was opened meanwhile
        self.recommendations = _views(doc.get("recommendations") or [], self.outcomes)
        self.silent_rules = list(doc.get("silent_rules") or [])
        self.analysed, self.busy = True, False
        n = sum(1 for r in self.recommendations if r.held is None)
        held = len(self.recommendations) - n
        self.status = (f"{n} recommendation(s)" + (f", {held} {present.NOT_WORTH_IT}" if held else "")
                       + "; predictions are not promises — Apply measures the real effect"
                       if n or held else "no recommendation: every rule lacked its evidence (see below)")
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
        interval = (((doc.get("result") or {}).get("verification") or {}).get("saving_interval"))
        state.status_text = present.action_status_text(state.status, interval)
        state.measured_text = doc.get("measured_text")
        state.predicted_text = doc.get("predicted_text")
        state.session_id = doc.get("session_id")
        state.note = one_line(doc["error"]) if doc.get("error") else None
        self.changed.emit()

    def set_outcomes(self, session_id: int, outcomes: list[Outcome]) -> None:
        """Outcomes read anew (after an apply finished): each card shows predicted beside measured."""
        if session_id != self.session_id:
            return
        self.outcomes = list(outcomes)
        by_action = {o.action: o for o in self.outcomes}
        self.recommendations = [dataclasses.replace(r, outcome=by_action.get(r.action) if r.action else None)
                                for r in self.recommendations]
        self.changed.emit()

    def apply_failed(self, action: str, text: str) -> None:
        state = self.applies.get(action)
        if state is not None:
            state.running, state.error = False, one_line(text)
            self.changed.emit()


def optimize_argv(model_dir: str, action: str, out_dir: str, db: str, *, rounds: int | None = None,
                  from_session: int | None = None) -> list[str]:
    """The child command line: the same CLI a user would type, in this interpreter. ``from_session``
    links the result to that session's recommendation (its reports show predicted vs measured)."""
    argv = [sys.executable, "-m", "wattlens.app", "optimize", str(model_dir), "--action", action,
            "--out", str(out_dir), "--json", "--db", str(db)]
    if from_session is not None:
        argv += ["--from-session", str(int(from_session))]
    if rounds is not None:
        argv += ["--rounds", str(int(rounds))]
    return argv


#: statuses an optimize run that exits 1 still stores and documents (its JSON says why in "error")
STORED_FAILURES = ("refused", "unverified")


def _outcome_doc(text: str) -> dict | None:
    """The optimize child's JSON document when it ended in a stored outcome it could not accept
    (refused by --max-quality-loss, or no sound energy figure); None for any other failure."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and doc.get("status") in STORED_FAILURES else None


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
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the child closes its session as stopped
                try:
                    proc.wait(timeout=STOP_GRACE_S)
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
        doc = _outcome_doc(text)
        if doc is not None:  # the work ended in a stored outcome it could not accept: the card says it
            return doc
        last = next((t for t in reversed(tail) if t.startswith("wattlens:")), tail[-1] if tail else "")
        last = last.removeprefix("wattlens:").strip() or f"it {exit_text(proc.returncode)}"
        raise ActionError(f"optimize failed: {last}")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ActionError("optimize printed no JSON result", hint="run the same command in a terminal to see why") from None
