"""Run mode: launch a command with the in-process agent and profile it as one session.

``RunSession`` ties together the launcher, the AgentServer (steps, per-instance layer costs,
knobs) and a ProfilingSession (power, attribution, store). Used by ``wattlens run``, the app's
Launch dialog and ``wattlens demo``.

Order on the way out matters: the agent link is stopped first, so steps still waiting for their
energy get it from the sampler that is still running; then the session stops and the writer
drains everything into the store.

Signals (``run_until_end``): SIGTERM or SIGHUP sent to wattlens is passed on to the command
(:meth:`RunSession.forward_signal`), which gets up to ``signal_grace_s`` to exit while it is
still measured; then the session stops cleanly with its summary. Ctrl-C (SIGINT) is not passed
on — a terminal already sends it to the command too — but the command gets the same grace to
end; a second Ctrl-C does not cut that grace short (the command's end is what `wattlens run`
exits with). A command that outlives the grace keeps running (the end reason says so, with its
PID).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wattlens.profiler.agentlink import AgentServer
from wattlens.profiler.errors import BadInputError
from wattlens.profiler.figures import (
    UNPROVEN,
    change_pct,
    direction,
    includes_no_change,
    saving_interval,
)
from wattlens.profiler.launch import launch
from wattlens.profiler.process import Target, exit_text
from wattlens.profiler.rank_energy import RankSplit, series_key
from wattlens.profiler.records import EventRecord, LayerCost, StepRecord
from wattlens.profiler.session import (
    END_STATUSES,
    ProfilingSession,
    StopSignals,
    command_name,
    run_until_end,
)
from wattlens.profiler.sources import Discovery


class RunSession:
    def __init__(self, store, command: Sequence[str], *, cwd: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None, name: str | None = None, interval_s: float = 0.1,
                 duration_s: float | None = None, discovery: Discovery | None = None,
                 stdout=None, stderr=None, grid_g_per_kwh: float | None = None, signal_grace_s: float = 5.0):
        self.store = store
        self.command = [str(c) for c in command]
        self.cwd, self.env = cwd, env
        self.name = name or command_name(self.command)
        self.interval_s, self.duration_s = interval_s, duration_s
        self.discovery = discovery
        self.stdout, self.stderr = stdout, stderr
        self.grid_g_per_kwh = grid_g_per_kwh
        self.signal_grace_s = signal_grace_s
        self.session: ProfilingSession | None = None
        self.server: AgentServer | None = None
        self.proc: subprocess.Popen | None = None
        self.agent_info: dict[str, Any] = {}
        self.agent_hellos: dict[Any, dict[str, Any]] = {}  # pid -> the latest hello info of each agent
        self._early: list[Any] = []  # records that arrive before the session exists
        self.steps_seen = 0  # steps reported by the agent so far (all processes)
        # live changes (apply / revert / batch_size): id -> what we know, filled from the agent's
        # answers on the listener thread; store rows are written from the caller's thread only
        self.actions: dict[str, dict[str, Any]] = {}
        # each rank's energy from its own process (rank_energy.py); fed by the sampler once it runs
        self.rank_split = RankSplit()
        # processes of the command that ended by an uncaught exception or without a goodbye
        self.ended_early: list[str] = []

    # ---- agent callbacks (listener thread) ----------------------------------------------------
    def _on_step(self, step: StepRecord) -> None:
        self.steps_seen += 1
        self._deliver(step)

    def _on_layers(self, rows: list[LayerCost]) -> None:
        self._deliver(rows)

    def _on_event(self, ev: EventRecord) -> None:
        if ev.kind == "agent-disconnected" and ev.data.get("early"):
            self.ended_early.append(ev.message)  # a session note at the end: show and the reports say it
        a = self.actions.get(str(ev.data.get("id"))) if ev.kind.startswith("action-") else None
        if a is not None:
            if ev.kind == "action-applied":
                a.update(status="applied", t_applied_ns=ev.t_ns, step_applied=ev.data.get("step"))
            elif ev.kind == "action-reverted":
                a.update(status="reverted", t_reverted_ns=ev.t_ns, step_reverted=ev.data.get("step"))
            elif ev.kind == "action-refused":
                if ev.data.get("action") == "revert":
                    a["revert_refused"] = ev.data.get("reason")
                else:
                    a.update(status="refused", reason=ev.data.get("reason"))
        if ev.kind == "knob-set":
            for a in list(self.actions.values()):  # the target's own time for a batch_size change (listener thread)
                if (a.get("knob") == ev.data.get("name") and a.get("value") == ev.data.get("value")
                        and a.get("t_applied_ns") is None):
                    a.update(status="applied", t_applied_ns=ev.t_ns)
                    break
        self._deliver(ev)

    def _on_hello(self, info: dict[str, Any]) -> None:
        if isinstance(info.get("rank"), int) and isinstance(info.get("pid"), int):
            self.rank_split.register(info["pid"], info["rank"], _rank_device(info))
        self.agent_info = dict(info)
        self.agent_hellos[info.get("pid")] = self.agent_info
        self._deliver(EventRecord(time.monotonic_ns(), "agent-hello", "agent reported its process and models",
                                 dict(info)))

    def _deliver(self, item) -> None:
        s = self.session
        if s is None or s.writer is None:
            self._early.append(item)
            return
        if isinstance(item, StepRecord):
            s.add_step(item)
        elif isinstance(item, list):
            s.add_layer_costs(item)
        else:
            s.writer.put(item)

    def _energy_between(self, t0_ns: int, t1_ns: int) -> float | None:
        return self.session.attributed_energy_between(t0_ns, t1_ns) if self.session else None

    def _rank_energy_between(self, rank: int, t0_ns: int, t1_ns: int) -> float | None:
        """The rank's own energy in [t0, t1]; LookupError when it has none (equal split then)."""
        if self.session is None or self.session.target is None or not self.rank_split.has(rank):
            raise LookupError(rank)
        return self.session.attributed_energy_between(t0_ns, t1_ns, key=series_key(rank))

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> int:
        # the store must take the session before the command is launched: a name it cannot hold
        # or a database that may not be written is one line, and nothing runs unmeasured
        self.store.check_session_fields(self.name)
        self.store.check_can_write()
        self.server = AgentServer(on_step=self._on_step, on_layer_costs=self._on_layers,
                                  on_event=self._on_event, on_hello=self._on_hello,
                                  energy_between=self._energy_between,
                                  rank_energy_between=self._rank_energy_between)
        try:
            self.proc = launch(self.command, cwd=self.cwd, env=self.env, server=self.server,
                               stdout=self.stdout, stderr=self.stderr)
            target = Target(self.proc.pid, exited_ok=True)  # a command may end before this
            if not target.cmdline:  # read straight after exec: /proc may not have it yet, or it ended
                target.cmdline = list(self.command)
            self.session = ProfilingSession(
                self.store, target=target, kind="run", name=self.name, interval_s=self.interval_s,
                duration_s=self.duration_s, discovery=self.discovery, stacks=False,
                settings={"command": self.command, "cwd": str(self.cwd) if self.cwd else None},
                grid_g_per_kwh=self.grid_g_per_kwh)
            sid = self.session.start()
            self.rank_split.declare = self.session.writer.put
            self.rank_split.on_event = self.session.writer.put
            self.session.sampler.rank_split = self.rank_split
        except BaseException as exc:
            self.server.stop()
            if self.session is not None and self.session.status == "running":
                with contextlib.suppress(Exception):
                    self.session.stop("failed", f"wattlens could not start measuring: {exc}")
            if self.proc is not None:
                _end_command(self.proc)  # launched but not measured: never left running as an orphan
            raise
        early, self._early = self._early, []
        for item in early:
            self._deliver(item)
        return sid

    def end_condition(self) -> tuple[str, str] | None:
        return self.session.end_condition() if self.session else None

    def set_knob(self, name: str, value) -> None:
        previous = self.server.knobs.get(name)
        entry = None
        if name == "batch_size":  # a live change whose before/after is worth recording
            # registered before the command goes out: the target may answer before we return
            entry = {"row": None, "action": f"knob:{name}={value}", "knob": name, "value": value,
                     "status": "requested", "t_requested_ns": time.monotonic_ns()}
            self.actions[f"knob-{len(self.actions)}-{time.monotonic_ns()}"] = entry
        self.server.set_knob(name, value)
        self.session.event("knob", f"set {name} = {value!r}", name=name, value=value)
        if entry is not None:
            entry["row"] = self.store.add_action(session_id=self.session.session_id, kind=entry["action"],
                                                 status="requested", result={},
                                                 params={"name": name, "value": value, "previous": previous})

    # ---- live apply / revert (issue 5) -----------------------------------------------------------
    def apply(self, action: str) -> str:
        """Apply ``action`` to the running model at its next step boundary; returns the action id.

        An action the agent cannot run live is recorded as refused and raises BadInputError.
        The agent's answer ("action-applied" / "action-refused") arrives as an event; the
        before/after energy per sample is computed at :meth:`stop`.
        """
        action_id = secrets.token_hex(8)
        # registered before the command goes out: the target may answer before we return
        entry = {"row": None, "action": action, "status": "requested", "t_requested_ns": time.monotonic_ns()}
        self.actions[action_id] = entry
        try:
            self.server.apply(action, id=action_id)
        except BadInputError as exc:
            del self.actions[action_id]
            self.session.event("action-refused", f"refused {action!r}: {exc}", action=action,
                               reason=str(exc), step=None, t_ns=time.monotonic_ns())
            self.store.add_action(session_id=self.session.session_id, kind=str(action),
                                  status="refused", params={"action": action, "live": True},
                                  result={"reason": str(exc)})
            raise
        entry["row"] = self.store.add_action(session_id=self.session.session_id, kind=action, status="requested",
                                             params={"action": action, "id": action_id, "live": True}, result={})
        self.session.event("action-requested", f"asked the target to apply {action} live",
                           id=action_id, action=action, t_ns=time.monotonic_ns())
        return action_id

    def revert(self, action_id: str | None = None) -> str:
        """Undo a live action (default: the latest applied one) at the next step boundary."""
        if action_id is None:
            live = [k for k, a in self.actions.items() if "knob" not in a and a["status"] == "applied"]
            if not live:
                raise BadInputError("nothing applied to revert", hint="apply an action first")
            action_id = live[-1]
        if action_id not in self.actions:
            raise BadInputError(f"no live action with id {action_id!r}",
                                hint="use the id RunSession.apply returned")
        self.server.revert(action_id)
        self.session.event("action-revert-requested", f"asked the target to revert {action_id}",
                           id=action_id, t_ns=time.monotonic_ns())
        return action_id

    def _action_results(self, sid: int, energy_method: str | None = None) -> list[dict[str, Any]]:
        """Before/after energy per sample for each live change, from the stored steps."""
        if not self.actions:
            return []
        steps = self.store.steps(sid)
        changes = sorted(t for a in self.actions.values()
                         for t in (a.get("t_applied_ns"), a.get("t_reverted_ns")) if t is not None)
        out = []
        for action_id, a in self.actions.items():
            t_on = a.get("t_applied_ns")
            status = a["status"] if a["status"] != "requested" else "not-applied"
            result: dict[str, Any] = {"id": action_id, "action": a["action"], "status": status,
                                      "step_applied": a.get("step_applied"),
                                      "step_reverted": a.get("step_reverted"),
                                      "predicted_text": "no prediction (live apply)"}
            if a.get("reason"):
                result["reason"] = a["reason"]
            if a.get("revert_refused"):
                result["revert_refused"] = a["revert_refused"]
            if t_on is None:
                result.update(before_j_per_sample=None, after_j_per_sample=None,
                              measured_text=("not measured: the target refused it"
                                             if status == "refused" else
                                             "not measured: the target never applied it (it ended first)"))
            else:
                t_prev = max((t for t in changes if t < t_on), default=None)
                t_next = a.get("t_reverted_ns") or min((t for t in changes if t > t_on), default=None)
                before = [s for s in steps if s.t_end_ns <= t_on and (t_prev is None or s.t_start_ns >= t_prev)]
                # the step during which the change was made is in neither set
                after = [s for s in steps if s.t_start_ns >= t_on and (t_next is None or s.t_end_ns <= t_next)]
                b, nb = _j_per_sample(before)
                f, nf = _j_per_sample(after)
                saving, interval = _saving_interval(before, after, b, f)
                result.update(before_j_per_sample=b, after_j_per_sample=f, before_steps=nb, after_steps=nf,
                              energy_method=energy_method, saving_fraction=saving, saving_interval=interval,
                              measured_text=_measured_text(b, nb, f, nf, energy_method, saving, interval))
            self.store.update_action(a["row"], status=status, result=result)
            out.append(result)
        return out

    def _stop_actions(self, summary: dict) -> None:
        if self.session is not None and self.session.session_id is not None and self.actions:
            method = (summary.get("target") or {}).get("method") or summary.get("energy_method")
            summary["actions"] = self._action_results(self.session.session_id, method)

    def forward_signal(self, signum: int) -> str | None:
        """Pass SIGTERM/SIGHUP on to the command (not SIGINT: see the module doc) and give it
        ``signal_grace_s`` to exit (still measured); returns what happened, for the end reason."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        name = signal.Signals(signum).name
        if signum != signal.SIGINT:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                return None
        deadline = time.monotonic() + self.signal_grace_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        code = self.proc.poll()
        if code is None:
            if signum == signal.SIGINT:  # not passed on: a terminal's Ctrl-C reaches the command itself
                return (f"the command was still running {self.signal_grace_s:g} s after SIGINT and keeps "
                        f"running as PID {self.proc.pid} (wattlens does not pass SIGINT on: Ctrl-C in a "
                        f"terminal reaches the command itself; `kill {self.proc.pid}` stops it)")
            return (f"the command was still running {self.signal_grace_s:g} s after {name} and keeps running "
                    f"as PID {self.proc.pid}")
        if self.session is not None and self.session.exit_code is None:
            self.session.exit_code = code
        return f"after {name}, the command {exit_text(code)}"

    def agent_note(self) -> str | None:
        """One line on why there are no per-layer figures from the agent; None when a model was seen."""
        hellos = list(self.agent_hellos.values())
        if not hellos:
            return ("no layer figures: no wattlens agent reported from the command — it is not a Python "
                    "program, it ended before Python started, it started no Python that reads PYTHONPATH "
                    "(python -I, -E or -S skip it), or that Python could not load the agent (its stderr "
                    "says why); power and energy are measured as usual")
        if any(h.get("models") for h in hellos):
            return None
        h = hellos[0]
        where = f"Python {h.get('python') or '?'}" + (f", {h['executable']}" if h.get("executable") else "")
        return (f"no layer figures: the agent connected to the target ({where}) but saw no torch "
                "model run while measured — did it import torch (is torch installed for that "
                "interpreter) and call a model?")

    def hurry(self) -> None:
        """Asked again to stop while stopping: do not wait for a lost database (ProfilingSession)."""
        if self.session is not None:
            self.session.hurry()

    def stop(self, status: str = "stopped", reason: str | None = "stopped by the user") -> dict:
        if self.server is not None:
            self.server.stop()
        if self.session is not None and self.session.status not in END_STATUSES:
            note = self.agent_note()
            if note is not None:
                self.session.note(note)
            # a note, not a second event: its agent-disconnected event already stands in the
            # event list, at the moment it happened
            self.session.notes.extend(self.ended_early)
        summary = self.session.stop(status, reason) if self.session else {}
        self._stop_actions(summary)
        if self.proc is not None:
            # Target.exit_code() may have reaped the child already (then Popen reports 0): prefer it
            code = self.session.exit_code if self.session and self.session.exit_code is not None else self.proc.poll()
            summary.setdefault("exit_code", code)
        return summary

    def run(self, poll_s: float = 0.1, on_tick: Callable[[RunSession], None] | None = None,
            signals: StopSignals | None = None) -> dict:
        """Block until the command exits or the duration passes (Ctrl-C or SIGTERM stop measuring)."""
        return run_until_end(self, poll_s, on_tick, signals)


def _end_command(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a command that wattlens launched but could not measure: SIGTERM, then SIGKILL after
    ``grace_s``; reaped either way."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except ProcessLookupError:
        pass


def _rank_device(info: Mapping[str, Any]) -> int | None:
    """The GPU index a rank uses: its main model's ``cuda:N``, else (device not reported yet, or
    bare ``cuda``) its LOCAL_RANK, the usual one-device-per-rank mapping; None on CPU."""
    device = info.get("device")
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    if device is None or device == "cuda":
        local = info.get("local_rank")
        return local if isinstance(local, int) else None
    return None


def _j_per_sample(steps: Sequence[StepRecord]) -> tuple[float | None, int]:
    """Energy per sample over the steps that have both energy and a sample count."""
    usable = [s for s in steps if s.energy_j is not None and s.samples]
    samples = sum(s.samples or 0 for s in usable)
    return (sum(s.energy_j or 0.0 for s in usable) / samples if samples else None), len(usable)


def _saving_interval(before: Sequence[StepRecord], after: Sequence[StepRecord], b: float | None,
                     f: float | None) -> tuple[float | None, list[float] | None]:
    """The saving in energy per sample (before − after) / before, as the totals give it, and its
    95 % interval from the spread of the steps' own J/sample: the ratio R = after/before on the
    log scale, SE(log R)² = Σ_sides var/(n·mean²) (both sides' errors; steps taken as
    independent, so a drifting job reads narrower than it is), as the A/B run does
    (``figures.saving_interval``). ``b``, ``f``: the sides' J/sample (``_j_per_sample``), read
    once by the caller. The interval is None with fewer than 2 usable steps on a side."""
    if not b or f is None:
        return None, None
    saving = (b - f) / b
    per = [[s.energy_j / s.samples for s in side if s.energy_j is not None and s.samples]
           for side in (before, after)]
    if min(len(p) for p in per) < 2 or f <= 0:
        return saving, None
    se_log = math.sqrt(sum(statistics.variance(p) / (len(p) * m * m) for p, m in zip(per, (b, f), strict=True)))
    return saving, list(saving_interval(f / b, se_log, 1.96))


def _measured_text(before: float | None, n_before: int, after: float | None, n_after: int,
                   energy_method: str | None = None, saving: float | None = None,
                   interval: Sequence[float] | None = None) -> str:
    if before is None or after is None:
        missing = "before" if before is None else "after"
        return (f"not measured: no {missing} steps with energy and a sample count "
                f"({n_before} before, {n_after} after)")
    ci = (f", 95 % CI {change_pct(max(interval))} … {change_pct(min(interval))}" if interval
          else ", no interval (fewer than 2 steps on a side)")
    if includes_no_change(interval):
        ci += f" — {UNPROVEN}"
    return (f"{before:.4g} J/sample over {n_before} steps before -> {after:.4g} J/sample over "
            f"{n_after} steps after: {change_pct(saving)} energy per sample ({direction(saving)}){ci}; "
            f"step energy {energy_method or 'of unknown method'}")
