"""`wattlens demo`: profile the bundled GPT-2-style workload (app/demo_workload.py) under run mode.

Headless (or with no display): measure it for ``--duration`` seconds, run the advisor, write an
HTML report and print its path. With a display: open the app and launch the same workload there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def workload_command(seconds: float) -> list[str]:
    return [sys.executable, "-m", "wattlens.app.demo_workload", "--seconds", f"{seconds:g}"]


def demo_command(args) -> int:
    if args.duration <= 0:
        from wattlens.profiler.errors import BadInputError

        raise BadInputError("--duration must be a positive number of seconds")
    from wattlens.app.gui.main import has_display

    if not args.headless and has_display():
        from wattlens.app.gui.main import run_gui

        return run_gui(db=args.db, launch=workload_command(args.duration),
                       launch_name="demo: GPT-2-style workload")
    if not args.headless:
        print("wattlens: no display found — running the demo headless (it ends with a report file)",
              file=sys.stderr, flush=True)
    return run_headless(args)


def run_headless(args) -> int:
    from wattlens.app.advise import advise
    from wattlens.app.report.formats import write_report
    from wattlens.profiler.runmode import RunSession
    from wattlens.profiler.store import Store

    store = Store(args.db)
    say = (lambda t: print(t, file=sys.stderr, flush=True)) if args.json else (lambda t: print(t, flush=True))
    run = RunSession(store, workload_command(args.duration), name="demo: GPT-2-style workload",
                     stdout=sys.stderr if args.json else None)
    from wattlens.app.cli import stop_signals

    # Ctrl-C / SIGTERM: a clean stop, and the report is still written: one during the advice or
    # the report (seconds) waits for them, as the report is what the demo is read from
    with stop_signals() as signals:
        sid = run.start()
        say(f"wattlens demo: measuring a GPT-2-style workload (PID {run.proc.pid}) as session {sid} in "
            f"{store.display_name}: it starts Python and torch, builds its model, then runs steps for "
            f"{args.duration:g} s")
        summary = run.run(signals=signals)
        say("wattlens demo: measured; running the advisor and writing the report")
        advice = advise(store, sid)
        out = Path(args.output) if args.output else Path.cwd() / f"wattlens-demo-{sid}.html"
        path = write_report(store, sid, "html", out)
    if args.json:
        print(json.dumps({"session_id": sid, "report": str(path.resolve()), "summary": summary,
                          "recommendations": advice.get("recommendations", [])}, indent=2, default=str))
    else:
        from wattlens.app.cli import print_summary

        print_summary(summary, "run")  # the demo is a run-mode session
        n = len(advice.get("recommendations", []))
        say(f"advisor: {n} recommendation{'s' if n != 1 else ''} — see `wattlens advise {sid}`")
        print(f"report: {path.resolve()}")
    return 0
