"""Signals and the CLI's life (helper trial 2): Ctrl-C twice during `wattlens run`, how a
command's end by a signal is worded, a Ctrl-C while the CLI is still loading or already exiting,
session ids, and a SIGTERM while `run` prints its summary into a redirected file.

Every wait is "until this happens" with a generous cap against a hang; nothing is timed. Each
child wattlens starts with SIGINT at its default, as a terminal starts it (a shell's background
job, as a loaded CI runs pytest, inherits SIGINT ignored, and Python then keeps ignoring it).
A signal at one exact point of wattlens's life is sent by wattlens itself, from a hook the
test installs in a small launcher (`_launcher`) before it runs `python -m wattlens.app`: an
import hook on a module, a wrapped function, or an atexit callback — deterministic, with no
test-only code in wattlens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wattlens.profiler.process import exit_text
from wattlens.profiler.session import StopSignals, run_until_end
from wattlens.profiler.store import Store

CAP_S = 180.0  # a bound against a hang, never a speed requirement


def _terminal_like() -> None:  # preexec_fn: SIGINT as a terminal leaves it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _launcher(prelude: str) -> list[str]:
    """`python -m wattlens.app`, with ``prelude`` run first in the same interpreter."""
    return [sys.executable, "-c", prelude + "\nimport runpy\n"
            "runpy.run_module('wattlens.app', run_name='__main__', alter_sys=True)\n"]


def _wait_for(path: Path, *needles: str, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + CAP_S
    while time.monotonic() < deadline:
        text = path.read_text()
        if all(n in text for n in needles):
            return text
        assert proc.poll() is None, f"wattlens ended ({proc.returncode}) before {needles}: {text}"
        time.sleep(0.05)
    raise AssertionError(f"no {needles} within {CAP_S} s: {path.read_text()}")


# ------------------------------------------------------------------ 2: one wording of a process's end
@pytest.mark.parametrize("code, text", [
    (3, "exited with exit code 3"),
    (0, "exited with exit code 0"),
    (-2, "ended by signal 2 (SIGINT)"),
    (-15, "ended by signal 15 (SIGTERM)"),
    (-200, "ended by signal 200"),  # no name on this platform
    (None, "exited"),
])
def test_a_process_end_is_worded_by_its_signal_name_not_a_negative_code(code, text):
    assert exit_text(code) == text


# ------------------------------------------------------------------ 1: Ctrl-C twice during `run`
def test_a_second_ctrl_c_does_not_cut_short_the_wait_for_the_commands_end():
    """The loop itself, deterministically: the second SIGINT arrives while the command is given
    its grace to end. It raised KeyboardInterrupt there, and the session stopped without the
    command's end (so `run` exited 0)."""
    class Run:
        stopped: tuple[str, str] | None = None

        def end_condition(self):
            return None

        def forward_signal(self, signum):
            assert signum == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while waiting for the command
            time.sleep(0.01)  # the handler runs here, at the latest
            return "after SIGINT, the command ended by signal 2 (SIGINT)"

        def stop(self, status, reason):
            self.stopped = (status, reason)
            return {}

    run = Run()
    with StopSignals((signal.SIGINT,)) as signals:
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C
        run_until_end(run, poll_s=0.01, signals=signals)
    assert run.stopped == ("stopped", "stopped by the user (Ctrl-C); after SIGINT, the command ended by "
                                      "signal 2 (SIGINT)")


DIES_SLOWLY = r"""
import os, signal, time
def on_int(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's second Ctrl-C reaches us too
    print("child-" + "dying", flush=True)
    time.sleep(2.5)  # a job tearing down
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)  # ends by SIGINT, as an uncaught KeyboardInterrupt does
signal.signal(signal.SIGINT, on_int)
print("child-" + "ready", flush=True)  # not the text of this source: wattlens echoes it
time.sleep(300)
"""


def test_ctrl_c_twice_to_runs_process_group_exits_130_and_stores_the_commands_end(tmp_path):
    """Trial 2: two Ctrl-C 0.2 s apart made `wattlens run` exit 0, without its last line, and
    the session lacked the command's end."""
    db, out = tmp_path / "w.db", tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "wattlens.app", "run", "--db", str(db), "--",
                                 sys.executable, "-c", DIES_SLOWLY], stdout=f, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=_terminal_like)
    try:
        _wait_for(out, "as session", "child-ready", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
        _wait_for(out, "child-dying", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)  # and again, while the command is ending
        _, err = proc.communicate(timeout=CAP_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.read_text()
    assert proc.returncode == 128 + signal.SIGINT, (text, err)
    assert ("wattlens: the command ended by signal 2 (SIGINT); wattlens exits with 130 (its session 1 "
            "is stored)") in text, text
    assert "code -2" not in text
    stored = Store(db).session(1)
    assert stored["status"] == "stopped"
    assert stored["end_reason"] == ("stopped by the user (Ctrl-C); after SIGINT, the command ended by "
                                    "signal 2 (SIGINT)")
    assert stored["summary"]["energy_j"] is not None


# ------------------------------------------------------------------ 3: Ctrl-C while loading or exiting
INTERRUPT_AT_IMPORT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts python
class _CtrlC:  # Ctrl-C the moment {module} starts loading
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            open({marker!r}, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, _CtrlC())
"""

INTERRUPT_AT_EXIT = """
import atexit, os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
def _ctrl_c():  # registered first, so it runs last: the interpreter is exiting
    open({marker!r}, "w").close()
    os.kill(os.getpid(), signal.SIGINT)
atexit.register(_ctrl_c)
"""


@pytest.mark.parametrize("when, prelude", [
    ("loading the CLI (python -m)", INTERRUPT_AT_IMPORT.replace("{module!r}", repr("wattlens.app.cli"))),
    ("building the parser (trial 2's traceback)",
     INTERRUPT_AT_IMPORT.replace("{module!r}", repr("wattlens.app.report.formats"))),
    ("in the command", INTERRUPT_AT_IMPORT.replace("{module!r}", repr("wattlens.profiler.store"))),
    ("exiting, after the command's output", INTERRUPT_AT_EXIT),
])
def test_ctrl_c_at_any_point_of_the_cli_is_one_line_and_exit_130(when, prelude, tmp_path):
    marker = tmp_path / "ctrl-c-sent"
    r = subprocess.run(_launcher(prelude.replace("{marker!r}", repr(str(marker))))
                       + ["sessions", "--db", str(tmp_path / "none.db")],
                       capture_output=True, text=True, timeout=CAP_S, preexec_fn=_terminal_like)
    assert marker.exists(), f"the Ctrl-C was never sent ({when}): {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr == "wattlens: interrupted\n", r.stderr
    assert r.returncode == 130, (r.returncode, r.stderr)
    if when.startswith("exiting"):
        assert "no sessions yet" in r.stdout  # what it printed before is kept


# ------------------------------------------------------------------ 4: session ids
@pytest.mark.parametrize("argv", [
    ["show", "0"], ["show", "-1"], ["show", "99999999999999999999"], ["show", "one"],
    ["report", "0", "--format", "md", "-o", "x.md"], ["report", "1", "--compare", "0", "--format", "md", "-o", "x.md"],
    ["advise", "0"], ["optimize", "m", "--action", "bf16", "--out", "o", "--from-session", "0"],
])
def test_a_session_id_below_1_is_one_usage_line_that_says_where_ids_are(argv, capsys):
    from wattlens.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not a session id: ids start at 1 (`wattlens sessions` lists them)" in lines[0], lines[0]
    assert "e+" not in lines[0]  # it said "at most 9.22337e+18"


def test_integer_bounds_are_written_as_integers(capsys):
    from wattlens.app.cli import main

    with pytest.raises(SystemExit):
        main(["attach", "99999999999"])
    err = capsys.readouterr().err
    assert "at most 2147483647" in err and "e+" not in err, err


# ------------------------------------------------------------------ 5: lines kept in a redirected file
SIGTERM_IN_SUMMARY = """
import os, signal
from wattlens.app import cli
_print_summary = cli.print_summary
def _summary_under_sigterm(*args, **kwargs):  # a second SIGTERM (a supervisor) while the summary prints
    open({marker!r}, "w").close()
    os.kill(os.getpid(), signal.SIGTERM)
    return _print_summary(*args, **kwargs)
cli.print_summary = _summary_under_sigterm
"""

SLEEPER = "import time; print('child-' + 'ready', flush=True); time.sleep(300)"


def test_sigterm_to_run_with_stdout_in_a_file_keeps_every_line(tmp_path):
    """`wattlens run ... > file` stopped by SIGTERM, and SIGTERM again while it prints its
    summary: the file holds the progress line, the summary and the command's end, and wattlens
    exits with the command's code. The second SIGTERM killed it there, its buffered summary and
    last line lost."""
    db, out, marker = tmp_path / "w.db", tmp_path / "out.txt", tmp_path / "sigterm-sent"
    with open(out, "w") as f:
        proc = subprocess.Popen(_launcher(SIGTERM_IN_SUMMARY.replace("{marker!r}", repr(str(marker))))
                                + ["run", "--db", str(db), "--", sys.executable, "-c", SLEEPER],
                                stdout=f, stderr=subprocess.PIPE, text=True, preexec_fn=_terminal_like)
    try:
        _wait_for(out, "as session", "child-ready", proc=proc)
        proc.send_signal(signal.SIGTERM)  # passed on to the command, which it ends
        _, err = proc.communicate(timeout=CAP_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert marker.exists(), "the second SIGTERM was never sent"
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, text, err)
    assert "wattlens: running" in text and "as session 1" in text
    assert "session 1 — " in text and "stopped" in text  # the summary
    assert ("wattlens: the command ended by signal 15 (SIGTERM); wattlens exits with 143 (its session 1 "
            "is stored)") in text, text
    assert Store(db).session(1)["status"] == "stopped"


def test_a_command_that_outlives_sigint_is_said_to_keep_running_with_how_to_stop_it(tmp_path):
    """helper-37's trial sent SIGINT to wattlens alone: the end reason said the command 'was still
    running 5 s after SIGINT' and not that it was left running, nor why it never got the signal."""
    from wattlens.profiler.runmode import RunSession
    from wattlens.profiler.store import Store

    store = Store(tmp_path / "w.db")
    run = RunSession(store, ["sleep", "30"], signal_grace_s=0.2)
    run.proc = subprocess.Popen(["sleep", "30"])
    try:
        said = run.forward_signal(signal.SIGINT)
        assert run.proc.poll() is None  # SIGINT is not passed on
        assert f"keeps running as PID {run.proc.pid}" in said and "does not pass SIGINT on" in said
        assert f"`kill {run.proc.pid}`" in said
    finally:
        run.proc.kill()
        run.proc.wait()
        store.close()
