"""The `wattlens` command. Argparse only at import time: no torch, Qt or SQLAlchemy until a
subcommand needs them, so `wattlens --help` starts fast.

Contract (docs/architecture.md): `--json` prints one JSON document on stdout and nothing else
there; human text goes to stderr (progress) or stdout (results) without --json. Exit codes:
0 ok, 1 the work failed, 2 bad usage or bad input — always with one line that says what to do;
`run` exits with its command's code when that failed (128+N for signal N). Numeric arguments are
checked (finite, in range) at parse time. Ctrl-C, SIGTERM and SIGHUP stop a measuring command
cleanly (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C: as a tool that SIGINT ended
INTERRUPTED_LINE = "wattlens: interrupted"
EXIT_BROKEN_PIPE = 128 + 13  # the reader of our output left: as a tool that SIGPIPE ended


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line + what to do, exit 2
        self.exit(EXIT_USAGE, f"wattlens: error: {message} — see `{self.prog} --help`\n")


def _number(kind, *, low: float, high: float, low_open: bool = False, what: str = ""):
    """An argparse type: a finite ``kind`` (int or float) in [low, high] ((low, high] when
    ``low_open``); anything else is a one-line usage error (exit 2) at parse time (issue 9)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            shown = (lambda x: str(int(x))) if kind is int else (lambda x: f"{x:g}")  # 2147483647, not 2.14748e+09
            bound = f"{'more than' if low_open else 'at least'} {shown(low)} and at most {shown(high)}"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: {what or 'it'} must be {bound}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


_DAY_S = 86400.0
SECONDS = _number(float, low=0.0, high=365 * _DAY_S, low_open=True, what="a duration in seconds")
INTERVAL = _number(float, low=0.001, high=3600.0, what="the interval in seconds")
STACK_RATE = _number(float, low=0.0, high=1000.0, low_open=True, what="the rate in samples per second")
GRID = _number(float, low=0.0, high=10000.0, what="the grid intensity in g CO2 per kWh")
FRACTION = _number(float, low=0.0, high=1.0, what="the fraction")
def ID(text: str) -> int:  # noqa: N802 - an argparse type, named as the others
    """A stored session's id (show, report and its --compare, advise, optimize --from-session):
    ids are whole numbers from 1, and anything else is one usage line that says so and where the
    ids are listed (exit 2); `show 0` said "at most 9.22337e+18"."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= 2**63 - 1:  # SQLite's largest integer
        raise argparse.ArgumentTypeError(f"{text!r} is not a session id: ids start at 1 "
                                         "(`wattlens sessions` lists them)")
    return value

PID = _number(int, low=1, high=2**31 - 1, what="the PID")
STEPS = _number(int, low=0, high=10**12, what="the number of steps")
ROUNDS = _number(int, low=1, high=1000, what="the number of rounds")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="database file or SQLAlchemy URL (default: WATTLENS_DB, "
                   "else wattlens.db in your user data folder)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics at "
                   "http://ADDR:PORT/metrics while measuring (0 picks a free port)")
    p.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                   help="address the metrics server listens on (default 127.0.0.1)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wattlens", description="Energy profiler and advisor for PyTorch and LLM workloads.")
    from wattlens.app._version import __version__

    p.add_argument("--version", action="version", version=f"wattlens {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("gui", help="open the desktop app (the default)")
    _add_db(g)

    a = sub.add_parser("attach", help="measure a running process (and its children) by PID",
                       description="Measure a running process by PID until --duration, its exit, Ctrl-C, "
                       "SIGTERM or SIGHUP; each stops cleanly with the summary saved (exit 0).")
    a.add_argument("pid", type=PID, metavar="PID")
    a.add_argument("--duration", type=SECONDS, metavar="S", help="stop after S seconds (default: until "
                   "Ctrl-C or the target exits)")
    a.add_argument("--interval", type=INTERVAL, default=0.1, metavar="S", help="sampling interval (default 0.1 s)")
    a.add_argument("--no-stacks", action="store_true", help="do not sample Python stacks (no layer figures)")
    a.add_argument("--stack-rate", type=STACK_RATE, metavar="HZ", help="stack samples per second")
    a.add_argument("--name", metavar="N", help="session name")
    a.add_argument("--no-gpu", action="store_true", help="do not query NVIDIA GPUs")
    _add_metrics(a)
    _add_db(a)
    _add_json(a)

    r = sub.add_parser("run", help="launch a command under wattlens with the in-process agent",
                       description="Launch COMMAND with the in-process agent and store the session. Exit "
                       "status: the command's own when it fails (128+N when signal N killed it), else 0; "
                       "1 or 2 for wattlens's own errors. SIGTERM/SIGHUP stop measuring cleanly and are "
                       "passed on to the command.")
    r.add_argument("--name", metavar="N")
    r.add_argument("--interval", type=INTERVAL, default=0.1, metavar="S")
    r.add_argument("--duration", type=SECONDS, metavar="S", help="stop measuring after S seconds "
                   "(the command keeps running)")
    r.add_argument("--no-gpu", action="store_true")
    r.add_argument("--apply", metavar="ACTION", help="apply ACTION live to the running model "
                   "(quantize-int8, prune-unstructured:F, bf16 on CUDA) and report energy per "
                   "sample before/after")
    r.add_argument("--after-steps", type=STEPS, metavar="N",
                   help="apply once N steps have been reported (default 10)")
    r.add_argument("--revert-after-steps", type=STEPS, metavar="M",
                   help="revert the applied action once M steps have been reported")
    _add_metrics(r)
    _add_db(r)
    _add_json(r)
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")

    s = sub.add_parser("sessions", help="list stored sessions")
    s.add_argument("--host", metavar="NAME", help="only the sessions recorded on host NAME (a shared store)")
    s.add_argument("--limit", type=_number(int, low=0, high=10**12, what="the number of sessions"), metavar="N",
                   help=f"the newest N (default {SESSIONS_SHOWN} in the table, all with --json; 0: all)")
    _add_db(s)
    _add_json(s)

    sh = sub.add_parser("show", help="show one stored session")
    sh.add_argument("id", type=ID, metavar="ID")
    _add_db(sh)
    _add_json(sh)

    from wattlens.app.report.formats import CSV_WHAT, FORMATS

    rp = sub.add_parser("report", help=f"export a session as {', '.join(FORMATS)}")
    rp.add_argument("id", type=ID, metavar="ID")
    rp.add_argument("--format", required=True, choices=list(FORMATS),
                    help="; ".join(f"{f.name}: {f.text}" for f in FORMATS.values()))
    rp.add_argument("--what", choices=CSV_WHAT, help="csv only: samples (default), steps or layers")
    rp.add_argument("-o", "--output", required=True, metavar="PATH", help="the file to write; - for stdout")
    rp.add_argument("--compare", type=ID, metavar="ID", help="compare with another session")
    rp.add_argument("--grid", type=GRID, metavar="G_PER_KWH", help="grid carbon intensity for CO2")
    _add_db(rp)

    ad = sub.add_parser("advise", help="recommendations for a stored session")
    ad.add_argument("id", type=ID, metavar="ID")
    ad.add_argument("--calibration", metavar="FILE",
                    help="text like what the model serves: static int8 is then recommended calibrated on it")
    ad.add_argument("--heal-text", metavar="FILE", dest="heal_text",
                    help="text in the model's language: pruning results over --max-quality-loss get a healing command")
    _add_db(ad)
    _add_json(ad)

    op = sub.add_parser("optimize", help="apply actions to a model copy and verify them by measurement")
    op.add_argument("model", metavar="MODEL", help="Hugging Face model folder or a saved torch module")
    op.add_argument("--action", metavar="ACTION[,ACTION]",
                    help="e.g. quantize-int8, quantize-int8-weight-only, quantize-int8-static, bf16, "
                    "prune-mlp:0.25, prune-layers:0.34 (a bad name lists them all)")
    op.add_argument("--batch-sizes", metavar="1,2,4", help="measure energy per sample for these batch sizes")
    op.add_argument("--out", metavar="DIR", help="where the optimized copy is written")
    op.add_argument("--max-quality-loss", type=FRACTION, metavar="X",
                    help="refuse a result whose top-1 disagreement (LMs) or 1 - cosine (encoders) exceeds X")
    op.add_argument("--eval-text", metavar="FILE", help="text for a perplexity check")
    op.add_argument("--rounds", type=ROUNDS, default=6, metavar="N", help="A/B rounds (default 6)")
    op.add_argument("--calibration", metavar="FILE",
                    help="text for quantize-int8-static scales and prune-layers scores (default: seeded random ids)")
    op.add_argument("--heal-steps", type=STEPS, default=0, metavar="N",
                    help="after pruning, distil the original into the pruned model for N steps (needs --heal-text)")
    op.add_argument("--heal-text", metavar="FILE", help="text to heal on (its last fifth is held out for the before/after KL)")
    op.add_argument("--tokenizer", metavar="DIR",
                    help="for a torch module file: the folder whose tokenizer reads --calibration/--eval-text")
    op.add_argument("--trust-pickle", action="store_true",
                    help="allow MODEL to be a pickled module file (.pt/.pkl); unpickling runs code from the file")
    op.add_argument("--from-session", type=ID, metavar="ID", dest="from_session",
                    help="the session whose recommendation this applies: its reports show predicted vs measured")
    _add_db(op)
    _add_json(op)

    d = sub.add_parser("demo", help="profile a bundled GPT-2-style workload")
    d.add_argument("--headless", action="store_true", help="no window; write a report and print its path")
    d.add_argument("--duration", type=SECONDS, default=20.0, metavar="S")
    d.add_argument("-o", "--output", metavar="PATH", help="report path (headless; default: demo-report-ID.html)")
    _add_db(d)
    _add_json(d)

    dr = sub.add_parser("doctor", help="what can be measured here, what cannot, and the fix for each")
    _add_json(dr)
    _add_db(dr)
    return p


# ---- output helpers ---------------------------------------------------------------------------
def _emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _info(args, text: str) -> None:
    """Progress/human notes: stderr under --json, else stdout."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def _fmt(value, unit="", digits=3):
    from wattlens.app.report.formats import fmt

    return fmt(value, unit, digits)


def _open_store(args, create: bool = True):
    """``create=False`` for commands that only read: a missing database is NoDatabaseError."""
    from wattlens.profiler.store import Store

    return Store(getattr(args, "db", None), create=create)


def print_summary(summary: dict, kind: str | None) -> None:
    """``kind``: the session's (attach, run, optimize...), for why it has no steps, if none."""
    from wattlens.app.gui.models.format import layer_label, share_with_se

    print(f"session {summary['session_id']} — {summary.get('name')}: {summary['status']}, "
          f"{_fmt(summary.get('duration_s'), 's')}")
    for s in summary["sources"]:
        line = (f"  {s['id']:<18} {s['method']:<10} {_fmt(s['energy_j'], 'J'):>10}  "
                f"mean {_fmt(s['mean_power_w'], 'W'):>8}")
        if s.get("attributed_energy_j") is not None:
            line += f"   target {_fmt(s['attributed_energy_j'], 'J')}"
        if s.get("reason"):
            line += f"   ({s['reason']})"
        print(line)
    t = summary.get("target")
    if t:
        print(f"  target energy: {_fmt(t.get('energy_j'), 'J')} (mean {_fmt(t.get('mean_power_w'), 'W')}) — "
              f"{t.get('method') or t.get('reason')}")
    st = summary.get("steps")
    if st:
        from wattlens.app.present import steps_count_text

        per = ", ".join(f"{_fmt(st[f'energy_per_{what}_j'], 'J')}/{what}" if st.get(f"energy_per_{what}_j")
                        is not None else f"n/a per {what}" for what in ("step", "sample", "token"))
        print(f"  steps: {steps_count_text(st)}, {per}")  # "n/a per token", never "n/a/token"
    else:  # said, as the app and the reports say it
        from wattlens.app.present import no_steps_text

        print(f"  steps: n/a — {no_steps_text(kind)}")
    layers = (summary.get("top_layers") or [])[:5]
    if layers:
        print(f"  costliest layers ({layers[0]['method']}; self = without the modules inside it; % = self time share):")
        if summary.get("layer_coverage"):
            print(f"  {summary['layer_coverage']['text']}")
    for lr in layers:
        # sampled: ± one standard error (between windows, and a split's pooled native reads)
        share = share_with_se(lr.get("self_share"), lr.get("self_share_se")).rjust(7)
        print(f"    {share}  self {_fmt(lr['self_energy_j'], 'J'):>9}  {layer_label(lr['path'], lr.get('phase'))}")
    if any(s["method"] == "estimated" for s in summary["sources"]):
        print("  note: 'estimated' figures come from a CPU power model (TDP × load), not a meter.")
    for n in summary.get("notes") or []:
        print(f"  note: {n}")


# ---- commands -----------------------------------------------------------------------------------
def cmd_attach(args) -> int:
    from wattlens.profiler.process import Target, refuse_self
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover

    refuse_self(args.pid)
    target = Target(args.pid)
    store = _open_store(args)
    exporter = _start_metrics(args)
    session = ProfilingSession(store, target=target, kind="attach", name=args.name,
                               interval_s=args.interval, duration_s=args.duration,
                               discovery=discover(gpu=not args.no_gpu), stacks=not args.no_stacks,
                               stack_rate_hz=args.stack_rate)
    _line_buffered_stdout()
    # from before the start (no signal is lost) to the last line (a signal during the summary is
    # the stop already under way: it never cuts the output short)
    with stop_signals() as signals:
        try:
            sid = session.start()
            _info(args, f"wattlens: measuring PID {target.pid} ({target.name}) as session {sid} into "
                        f"{store.display_name} every {args.interval:g} s — Ctrl-C to stop")
            _serve_metrics(args, exporter, session)
            for n in session.notes:
                _info(args, f"wattlens: {n}")
            summary = session.run(signals=signals)
        finally:
            if exporter is not None:
                exporter.stop()
        return _finish(args, summary, session.end_reason, kind="attach")


def stop_signals():
    """Ctrl-C, SIGTERM and SIGHUP stop a measuring command cleanly (summary saved, temp folders
    removed) and it exits 0, as on Ctrl-C; `run` passes SIGTERM/SIGHUP on to its command and
    exits with the command's code when that failed (128+15 when SIGTERM ended it). Held until
    the command's last line is printed: a further signal (Ctrl-C twice, a second SIGTERM) changes
    nothing, so the output and the exit status are those of the first."""
    import signal

    from wattlens.profiler.session import STOP_SIGNALS, StopSignals

    return StopSignals((*STOP_SIGNALS, signal.SIGINT))


def _start_metrics(args):
    """The Prometheus exporter, bound before measuring starts (a taken port costs nothing)."""
    if args.metrics_port is None:
        return None
    from wattlens.profiler.metrics import MetricsExporter

    exporter = MetricsExporter(args.metrics_port, args.metrics_addr)
    exporter.start()
    return exporter


def _serve_metrics(args, exporter, session) -> None:
    if exporter is not None:
        exporter.attach(session)
        _info(args, f"wattlens: serving Prometheus metrics at {exporter.url}")


def _line_buffered_stdout() -> None:
    """Each line of a measuring command's output reaches a redirected stdout (`> file`) as it is
    printed, not when the process ends: a wattlens killed later keeps what it said."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # not on a test's StringIO
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(line_buffering=True)


def _finish(args, summary: dict, reason: str | None = None, *, kind: str) -> int:
    if args.json:
        _emit_json(summary)
    else:
        print_summary(summary, kind)
    if summary.get("status") == "failed":  # e.g. the sampler stopped early: not a success
        print(f"wattlens: error: session {summary.get('session_id')} failed: {reason} — "
              "what was measured is stored; see `wattlens show ID`", file=sys.stderr)
        return EXIT_FAILED
    if summary.get("status") == "partial":  # stored, but not all of it: say what was lost, exit 1
        print(f"wattlens: error: session {summary.get('session_id')} is stored as partial: "
              f"{(summary.get('notes') or ['some records could not be written'])[-1]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def command_exit_code(code: int | None) -> int:
    """The shell's convention for a launched command's exit status: its own code, or 128 + N when
    signal N ended it (Popen reports -N)."""
    if code is None:
        return EXIT_OK
    return 128 - code if code < 0 else min(code, 255)


def cmd_run(args) -> int:
    from wattlens.profiler.runmode import RunSession
    from wattlens.profiler.sources import discover

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise _usage("no command given: use `wattlens run -- python train.py ...`")
    if args.apply is not None:
        from wattlens.profiler.agent.live import LIVE_ACTIONS, Refused, parse_action

        if args.after_steps is None:
            args.after_steps = 10  # the documented default

        try:
            parse_action(args.apply)
        except Refused:
            raise _usage(f"--apply {args.apply}: not a live action; live actions are: "
                         f"{', '.join(LIVE_ACTIONS)}") from None
        if args.after_steps < 0 or (args.revert_after_steps is not None
                                    and args.revert_after_steps <= args.after_steps):
            raise _usage("--after-steps must be >= 0 and --revert-after-steps larger than it")
    elif args.revert_after_steps is not None or args.after_steps is not None:
        raise _usage(f"{'--revert-after-steps' if args.revert_after_steps is not None else '--after-steps'} "
                     "needs --apply ACTION")
    store = _open_store(args)
    exporter = _start_metrics(args)
    # under --json, stdout carries only our JSON: the command's output goes to stderr
    run = RunSession(store, cmd, name=args.name, interval_s=args.interval, duration_s=args.duration,
                     discovery=discover(gpu=not args.no_gpu), stdout=sys.stderr if args.json else None)
    _line_buffered_stdout()
    with stop_signals() as signals:  # from before the start to the last line, as attach
        try:
            sid = run.start()
            _info(args, f"wattlens: running `{' '.join(cmd)}` (PID {run.proc.pid}) as session {sid} into "
                        f"{store.display_name} — Ctrl-C stops it")
            _serve_metrics(args, exporter, run.session)
            summary = _run_loop(args, run, signals)
        finally:
            if exporter is not None:
                exporter.stop()
        return _run_output(args, run, summary)


def _run_output(args, run, summary: dict) -> int:
    """`run`'s closing lines and its exit status (the command's own when it failed)."""
    from wattlens.profiler.process import exit_text

    if run.proc.poll() is None and args.duration is not None:
        _info(args, f"wattlens: stopped measuring after {args.duration:g} s; PID {run.proc.pid} keeps running")
    code = _finish(args, summary, run.session.end_reason if run.session else None, kind="run")
    if not args.json:
        for a in summary.get("actions", []):
            print(f"  live {a['action']}: {a['status']}"
                  + (f" ({a['reason']})" if a.get("reason") else "") + f" — {a['measured_text']}")
    child = command_exit_code(summary.get("exit_code"))
    if code == EXIT_OK and child != EXIT_OK:  # scripts see the command's own failure
        _info(args, f"wattlens: the command {exit_text(summary.get('exit_code'))}; wattlens exits with "
                    f"{child} (its session {summary.get('session_id')} is stored)")
        return child
    return code


def _run_loop(args, run, signals) -> dict:
    live: dict = {}

    def on_tick(r) -> None:  # the live change, once enough steps were reported
        if args.apply is None:
            return
        if "id" not in live and r.steps_seen >= args.after_steps:
            live["id"] = r.apply(args.apply)
            _info(args, f"wattlens: applying {args.apply} live after {r.steps_seen} steps")
        elif ("id" in live and "reverted" not in live and args.revert_after_steps is not None
              and r.steps_seen >= args.revert_after_steps
              and r.actions[live["id"]]["status"] == "applied"):
            live["reverted"] = r.revert(live["id"])
            _info(args, f"wattlens: reverting {args.apply} after {r.steps_seen} steps")

    return run.run(on_tick=on_tick, signals=signals)


SESSIONS_SHOWN = 50  # the table's newest sessions, unless --limit says otherwise


def cmd_sessions(args) -> int:
    from wattlens.profiler.errors import NoDatabaseError

    try:
        store = _open_store(args, create=False)
    except NoDatabaseError as exc:  # nothing recorded yet: an empty listing, and nothing created
        if args.json:
            _emit_json([])
        else:
            print(f"no sessions yet ({exc.message.split(': ', 1)[-1]}) — try `wattlens attach PID` or `wattlens demo`")
        return EXIT_OK
    limit = args.limit if args.limit is not None else (0 if args.json else SESSIONS_SHOWN)
    rows = store.sessions(host=args.host, limit=limit or None)
    if args.json:
        _emit_json([{k: r[k] for k in ("id", "name", "kind", "status", "host", "target_pid", "started_at",
                                        "duration_s")}
                    | {"energy_j": (r["summary"] or {}).get("energy_j"),
                       "energy_method": (r["summary"] or {}).get("energy_method"),
                       "target_energy_j": ((r["summary"] or {}).get("target") or {}).get("energy_j"),
                       "target_energy_method": ((r["summary"] or {}).get("target") or {}).get("method")}
                    for r in rows])
        return EXIT_OK
    if not rows and args.host is not None:
        print(f"no sessions of host {args.host} in {store.display_name}")
        return EXIT_OK
    if not rows:
        print(f"no sessions in {store.display_name} yet — try `wattlens attach PID` or `wattlens demo`")
        return EXIT_OK
    import datetime as dt

    hosts = len({r["host"] for r in rows}) > 1  # a shared store: say which host recorded each
    # both energies with their method, as the app's list and `show` give them: the machine's (its
    # sources' method) and the target's (its attributed share of that)
    print(f"{'ID':>4}  {'started':<19}  {'duration':>9}  {'status':<14} {'target':>10} {'machine':>10}  "
          f"{'method':<10} " + ("host / name" if hosts else "name"))
    for r in rows:
        started = dt.datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        summary = r["summary"] or {}
        print(f"{r['id']:>4}  {started:<19}  {_fmt(r['duration_s'], 's'):>9}  {r['status']:<14} "
              f"{_fmt((summary.get('target') or {}).get('energy_j'), 'J'):>10} {_fmt(summary.get('energy_j'), 'J'):>10}  "
              f"{summary.get('energy_method') or 'n/a':<10} " + (f"{r['host']} / {r['name']}" if hosts else r["name"]))
    if limit and len(rows) == limit:
        older = store.session_count(host=args.host) - len(rows)
        if older > 0:
            print(f"… and {older:,} older session{'s' if older != 1 else ''}: `{_all_sessions_command(args, store.display_name)}` "
                  "lists them all")
    if any(r["status"] == "running" for r in rows):  # n/a above: its summary is written at its end
        print("running: still being recorded, no final figures yet — `wattlens show ID` gives them so far")
    if any("estimated" in ((r["summary"] or {}).get("energy_method") or "") for r in rows):
        print("estimated: a CPU power model (TDP × load), not a meter; target: its attributed share "
              "of the machine's energy (`wattlens show ID` says how)")
    return EXIT_OK


def _all_sessions_command(args, db_shown: str) -> str:
    """The listing the user asked for (its --db, as ``db_shown`` with any password hidden, and its
    --host kept), without the limit."""
    import shlex

    words = ["wattlens", "sessions"]
    if getattr(args, "db", None):
        words += ["--db", db_shown]
    if args.host is not None:
        words += ["--host", args.host]
    return shlex.join([*words, "--limit", "0"])


def _open_store_with(args, session_id: int):
    """The store of a command about one stored session; no database yet: no such session (exit 2)."""
    from wattlens.profiler.errors import NoDatabaseError, SessionNotFoundError

    try:
        return _open_store(args, create=False)
    except NoDatabaseError as exc:
        raise SessionNotFoundError(f"no session {session_id}: {exc.message}", hint=exc.hint) from None


def cmd_show(args) -> int:
    from wattlens.app.report.data import build_report

    store = _open_store_with(args, args.id)
    report = build_report(store, args.id)
    if args.json:
        _emit_json(report)
        return EXIT_OK
    s = report["session"]
    summary = report["summary"]
    summary["status"] = s["status"]
    print_summary(summary, s.get("kind"))
    for h in report.get("headline") or []:
        print(f"  {h['label']}: {h['text']}")
    if s.get("end_reason"):
        print(f"  ended: {s['end_reason']}")
    from wattlens.app.report.ranks import HEADER, job_lines, rank_rows

    rows = rank_rows(report.get("ranks"))
    if rows:
        widths = [max(len(x) for x in col) for col in zip(HEADER, *rows, strict=True)]
        print("  per rank:")
        for row in (HEADER, *rows):
            print("    " + "  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
        for line in job_lines(report.get("ranks")):
            print(f"  {line}")
    _print_rank_layers(report.get("rank_layers"))
    for o in report.get("applied") or []:  # recommended → applied → measured, predicted beside measured
        print(f"  {o['chain']}")
        print(f"    predicted: {o['predicted']}")
        print(f"    measured:  {o['measured']}" + (f" — {o['flag_text']}" if o["flag_text"] else ""))
        print(f"    fidelity:  {o['fidelity']}")
    return EXIT_OK


def _print_rank_layers(rank_layers: dict | None) -> None:
    from wattlens.app.report.rank_layers import HEADER, rank_layer_lines, rank_layer_rows

    rows = rank_layer_rows(rank_layers)
    if rows:
        widths = [max(len(x) for x in col) for col in zip(HEADER, *rows, strict=True)]
        print("  layers per rank:")
        for row in (HEADER, *rows):
            print("    " + "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
        for line in rank_layer_lines(rank_layers):
            print(f"  {line}")


def cmd_report(args) -> int:
    from wattlens.app.report.formats import COMPARE_FORMATS, write_report

    if args.what is not None and args.format != "csv":
        raise _usage("--what goes with --format csv")
    if args.compare is not None and args.format not in COMPARE_FORMATS:
        raise _usage(f"--compare goes with --format {', '.join(COMPARE_FORMATS)} "
                     f"(a {args.format} export holds one session)")
    if args.compare is not None and args.compare == args.id:
        raise _usage(f"--compare {args.compare} is the session itself: compare with another session")
    store = _open_store_with(args, args.id)
    if args.output == "-":  # the report on stdout (`-o -`), written whole first: never half a file
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="wattlens-report-") as tmp:
            path = write_report(store, args.id, args.format, os.path.join(tmp, f"report.{args.format}"),
                                compare_id=args.compare, grid_g_per_kwh=args.grid, what=args.what or "samples")
            with open(path, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        return EXIT_OK
    path = write_report(store, args.id, args.format, args.output, compare_id=args.compare,
                        grid_g_per_kwh=args.grid, what=args.what or "samples")
    print(path)
    return EXIT_OK


def cmd_doctor(args) -> int:
    from wattlens.app.doctor import doctor

    doc = doctor(db=args.db)
    if args.json:
        _emit_json(doc)
        return EXIT_OK
    print("Can measure:")
    for s in doc["usable"]:
        print(f"  ✓ {s['id']:<16} {s['kind']:<5} {s['method']:<10} {s['label']}")
        if s["method"] == "estimated":
            print(f"      estimate: {s.get('tdp_source', '')}")
    print("Cannot measure:")
    for u in doc["unavailable"]:
        print(f"  ✗ {u['id']:<16} {u['reason']}\n      fix: {u['fix']}")
    for c in doc["checks"]:
        mark = "✓" if c["ok"] else "✗"
        print(f"  {mark} {c['name']}: {c['detail']}" + (f"\n      fix: {c['fix']}" if c.get("fix") and not c["ok"] else ""))
    return EXIT_OK


def cmd_gui(args) -> int:
    try:
        from wattlens.app.gui.main import run_gui
    except ImportError as exc:
        raise _failed(f"the GUI cannot start: {exc}", "install the GUI dependencies: pip install 'wattlens'") from None
    return run_gui(db=getattr(args, "db", None))


def cmd_advise(args) -> int:
    from wattlens.app.advise import advise_command

    return advise_command(args)


# Modules of the `advisor` extra (pyproject.toml): the core install has none of them.
ADVISOR_EXTRA_MODULES = ("torch", "transformers", "torchao")
ADVISOR_INSTALL = "pip install 'wattlens[advisor]'"


def _missing_extra(command: str, module: str):
    from wattlens.profiler.errors import MissingExtraError

    return MissingExtraError(f"`wattlens {command}` needs {module}, which is not installed here",
                             hint=f"install the advisor extra: {ADVISOR_INSTALL}")


def _require_advisor(command: str, modules: Sequence[str] = ("torch",)) -> None:
    """optimize and demo need PyTorch (and the demo transformers): the `advisor` extra."""
    import importlib.util

    for module in modules:
        try:
            missing = importlib.util.find_spec(module) is None
        except ImportError:  # the bundle's runtime hook
            missing = True
        if missing:
            raise _missing_extra(command, module)


def cmd_optimize(args) -> int:
    _require_advisor("optimize")
    from wattlens.app.optimize_cmd import optimize_command

    return optimize_command(args)


def cmd_demo(args) -> int:
    _require_advisor("demo", ("torch", "transformers"))
    from wattlens.app.demo import demo_command

    return demo_command(args)


def _usage(message: str):
    from wattlens.profiler.errors import BadInputError

    return BadInputError(message)


def _failed(message: str, hint: str | None = None):
    from wattlens.profiler.errors import WattlensError

    return WattlensError(message, hint=hint)


COMMANDS = {
    "gui": cmd_gui, "attach": cmd_attach, "run": cmd_run, "sessions": cmd_sessions, "show": cmd_show,
    "report": cmd_report, "advise": cmd_advise, "optimize": cmd_optimize, "demo": cmd_demo,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The `wattlens` command. A Ctrl-C at any point of it — while the parser's modules load, in
    a command, while saying so — ends in one line, "wattlens: interrupted", and exit 130 (a
    measuring command takes Ctrl-C as its clean stop instead: `stop_signals`). ``argv`` None: the
    process's own entry (the console script, ``python -m wattlens.app``), so a Ctrl-C from here to
    the process's end (its exit joins threads, runs atexit) ends the same way; tests pass a list.
    Before this runs, the interpreter's start and the import of this module are outside its reach
    (``__main__`` covers that import under ``-m``)."""
    try:
        try:
            return _main(argv)
        except KeyboardInterrupt:
            print(INTERRUPTED_LINE, file=sys.stderr)
            return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C again while saying so
        return EXIT_INTERRUPTED
    finally:
        if argv is None:
            _interrupt_ends_the_process()


def _interrupt_ends_the_process() -> None:
    """From here to the process's exit, Ctrl-C prints the one line and exits 130 at once: a
    KeyboardInterrupt raised while the interpreter exits is a traceback nobody can catch."""
    import signal

    def quit_now(_signum, _frame) -> None:
        with contextlib.suppress(Exception):  # what was printed stays printed (a reentrant flush fails)
            sys.stdout.flush()
        with contextlib.suppress(OSError):
            os.write(2, (INTERRUPTED_LINE + "\n").encode())
        os._exit(EXIT_INTERRUPTED)

    with contextlib.suppress(ValueError):  # not the main thread: nothing to guard
        signal.signal(signal.SIGINT, quit_now)


def _main(argv: Sequence[str] | None) -> int:
    """main's work; a KeyboardInterrupt goes up to main."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args.command = "gui"
        args.db = None
    from wattlens.app import logsetup

    logsetup.configure(sys.stderr)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that left (`| head`) is met here, not at exit
        return code
    except BrokenPipeError:
        # the reader of our output went away (`wattlens show 1 | head -2`): what it wanted it got,
        # and anything stored was stored before the output. Silent, with the status of a tool that
        # SIGPIPE ended (128 + 13), as the shell expects; stdout points at /dev/null so that the
        # interpreter's last flush does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into one line
        from wattlens.profiler.errors import WattlensError

        if (not isinstance(exc, WattlensError) and isinstance(exc, ModuleNotFoundError)
                and (exc.name or "").partition(".")[0] in ADVISOR_EXTRA_MODULES):
            exc = _missing_extra(args.command, exc.name.partition(".")[0])
        if isinstance(exc, WattlensError):
            print(f"wattlens: error: {exc}", file=sys.stderr)
            return exc.exit_code
        if os.environ.get("WATTLENS_DEBUG"):
            raise
        print(f"wattlens: internal error: {type(exc).__name__}: {exc} — please report it "
              "(set WATTLENS_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED
