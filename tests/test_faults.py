"""Fault injection (issue 9): what a kill, a signal, a crashing target or a hostile agent line
does to a session. Every test is bounded in time and asserts nothing about speed: waits are
"until this happens" with a generous cap against a hang.

Covered elsewhere, not repeated here: SIGKILL of the profiler mid-session (≤ 1 s of samples lost,
the session reopens `interrupted`) is tests/test_store.py::
test_killed_profiler_session_reopens_interrupted_losing_at_most_a_second; a target that exits by
itself with a code is tests/test_cli.py::test_target_that_exits_ends_the_session_as_target_exited.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wattlens.profiler.agent.protocol import MAX_DEPTH, MAX_LINE_BYTES, decode
from wattlens.profiler.agentlink import AgentServer
from wattlens.profiler.stacks.sampler import find_pyspy
from wattlens.profiler.store import Store

from .conftest import run_cli
from .test_agent_link import Collector, closed_by_server, connect, hello, send, steps_msg

CAP_S = 120.0  # a bound against a hang, never a speed requirement


# ------------------------------------------------------------------ helpers: a wattlens in a child
@pytest.fixture
def private_tmp(monkeypatch):
    """A TMPDIR of our own (short: Unix socket paths are limited) to see what a run leaves behind."""
    path = tempfile.mkdtemp(prefix="wl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_wattlens(args: list[str], tmpdir: str, *, new_group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": tmpdir}
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "wattlens.app", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=new_group)


def wait_for_line(proc: subprocess.Popen, needle: str) -> str:
    """Read stderr until a line holds ``needle`` (the session is then running)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"wattlens ended before {needle!r}: {''.join(seen)}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=CAP_S)
    return proc.returncode, out, err


def leftovers(tmpdir: str) -> list[str]:
    return sorted(n for n in os.listdir(tmpdir) if n.startswith("wattlens"))


# ------------------------------------------------------------------ signals to `wattlens attach`
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_attach_stops_cleanly_with_summary_and_no_temp_folder(signum, torch_child, db_path,
                                                                         private_tmp):
    child = torch_child(300)
    stacks = [] if find_pyspy() else ["--no-stacks"]  # with py-spy, its temp folder is exercised too
    proc = start_wattlens(["attach", str(child.pid), "--db", str(db_path), "--json", "--interval", "0.05",
                           *stacks], private_tmp)
    wait_for_line(proc, "measuring PID")
    if stacks == []:
        assert any(n.startswith("wattlens-stacks-") for n in os.listdir(private_tmp))
    proc.send_signal(signum)
    code, out, err = finish(proc)
    assert code == 0, err
    doc = json.loads(out)  # the summary, as after Ctrl-C
    assert doc["status"] == "stopped" and doc["energy_j"] is not None
    stored = Store(db_path).session(doc["session_id"])
    assert stored["status"] == "stopped" and stored["summary"]["energy_j"] == doc["energy_j"]
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    assert name in stored["end_reason"]
    assert leftovers(private_tmp) == []  # py-spy's window folder is gone
    assert child.poll() is None  # attach never touches its target


@pytest.mark.skipif(find_pyspy() is None, reason="needs py-spy")
def test_sigkill_of_attach_leaves_no_py_spy_on_the_target(torch_child, db_path, private_tmp):
    """A killed profiler must not leave its samplers attached: the calibration py-spy is a
    blocking one (it pauses the target 5 times a second), and both were left running, orphaned,
    until the target ended. Its window folder goes at the next sampler's start."""
    import psutil

    from wattlens.profiler.stacks.sampler import sweep_stale_tmp

    child = torch_child(300)
    proc = start_wattlens(["attach", str(child.pid), "--db", str(db_path), "--json", "--interval", "0.1"],
                          private_tmp)
    wait_for_line(proc, "measuring PID")
    deadline = time.monotonic() + CAP_S
    spies: list[psutil.Process] = []
    while len(spies) < 2 and time.monotonic() < deadline:  # the window's and the calibration's
        spies = [p for p in psutil.Process(proc.pid).children(recursive=True) if "py-spy" in p.name()]
        time.sleep(0.1)
    assert len(spies) >= 2, "the window and calibration py-spy never started"
    left = [n for n in os.listdir(private_tmp) if n.startswith("wattlens-stacks-")]
    assert left == [f for f in left if f.startswith(f"wattlens-stacks-{proc.pid}-")] != []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    gone, alive = psutil.wait_procs(spies, timeout=CAP_S)
    assert alive == [], [p.cmdline() for p in alive]
    assert child.poll() is None  # the target runs on, released
    assert sweep_stale_tmp(private_tmp) == len(left)  # its owner is dead: the folder goes
    assert [n for n in os.listdir(private_tmp) if n.startswith("wattlens-stacks-")] == []


# ------------------------------------------------------------------ signals to `wattlens run`
SLEEPER = "import time; print('ready', flush=True); time.sleep(300)"


def test_sigterm_to_run_is_passed_on_and_the_session_is_saved(db_path, private_tmp):
    proc = start_wattlens(["run", "--db", str(db_path), "--json", "--", sys.executable, "-c", SLEEPER],
                          private_tmp)
    wait_for_line(proc, "as session")
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    doc = json.loads(out)
    assert doc["exit_code"] == -signal.SIGTERM  # the command got SIGTERM too and ended by it
    assert code == 128 + signal.SIGTERM, err  # the shell's convention for "ended by SIGTERM"
    stored = Store(db_path).session(doc["session_id"])
    assert stored["status"] == "stopped" and "SIGTERM" in stored["end_reason"]
    assert stored["summary"]["energy_j"] is not None
    assert leftovers(private_tmp) == []  # the agent's runtime folder is gone


def test_ctrl_c_to_runs_process_group_stops_cleanly(db_path, private_tmp):
    proc = start_wattlens(["run", "--db", str(db_path), "--json", "--", sys.executable, "-c", SLEEPER],
                          private_tmp, new_group=True)
    wait_for_line(proc, "as session")
    for line in proc.stderr:  # the command's output goes to stderr under --json
        if "ready" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
    code, out, err = finish(proc)
    doc = json.loads(out)
    stored = Store(db_path).session(doc["session_id"])
    assert stored["status"] == "stopped" and "Ctrl-C" in stored["end_reason"]
    assert stored["summary"]["energy_j"] is not None
    assert code == 128 + signal.SIGINT  # the command itself ended by SIGINT
    assert leftovers(private_tmp) == []


# ------------------------------------------------------------------ the target crashes
def test_target_killed_mid_session_ends_it_with_its_data(torch_child, db_path, private_tmp):
    child = torch_child(300)
    proc = start_wattlens(["attach", str(child.pid), "--db", str(db_path), "--json", "--no-stacks",
                           "--interval", "0.05"], private_tmp)
    wait_for_line(proc, "measuring PID")
    store = Store(db_path)
    deadline = time.monotonic() + CAP_S
    sid = store.sessions()[0]["id"]
    while time.monotonic() < deadline and len(store.series_data(sid).get("cpu-model/power_w", ([],))[0]) < 3:
        time.sleep(0.1)  # until a few samples are stored
    child.kill()  # a crash: no chance to say goodbye
    code, out, err = finish(proc)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "target-exited" and doc["energy_j"] is not None
    stored = Store(db_path).session(doc["session_id"])
    assert "exited" in stored["end_reason"]
    assert len(Store(db_path).series_data(sid)["cpu-model/power_w"][0]) >= 3  # what was measured is kept


def test_run_command_crashing_mid_session_keeps_data_and_passes_its_code(db_path, private_tmp):
    crash = "import os, time; time.sleep(0.5); os.abort()"
    r = run_cli("run", "--db", str(db_path), "--json", "--", sys.executable, "-c", crash,
                env={"TMPDIR": private_tmp})
    doc = json.loads(r.stdout)
    assert r.returncode == 128 + signal.SIGABRT, r.stderr
    assert doc["status"] == "target-exited" and doc["energy_j"] is not None
    assert leftovers(private_tmp) == []


# ------------------------------------------------------------------ the agent socket under attack
def test_deep_nesting_is_refused_not_raised():
    for depth in (MAX_DEPTH + 1, 10_000, 200_000):
        line = ('{"type": "steps", "x": ' + "[" * depth + "]" * depth + "}").encode()
        with pytest.raises(ValueError, match="nested deeper"):
            decode(line)
    assert decode(('{"type": "t", "x": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}").encode())


@pytest.fixture
def link(caplog):
    caplog.set_level(logging.WARNING, logger="wattlens.profiler.agentlink")
    sink = Collector()
    srv = AgentServer(energy_between=lambda a, b: 0.0, hello_timeout_s=2.0, **sink.kwargs())
    yield srv, sink
    srv.stop()


def _no_traceback(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def test_deeply_nested_line_on_the_socket_is_dropped_and_the_agent_still_served(link, caplog):
    srv, sink = link
    sock = connect(srv)
    deep = ('{"type": "steps", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}\n").encode()
    send(sock, hello(srv.token), deep, steps_msg(time.monotonic_ns(), n=1))
    assert sink.wait(lambda: len(sink.steps) == 1, CAP_S)
    assert any("nested deeper" in r.getMessage() for r in caplog.records)
    _no_traceback(caplog)
    sock.close()


def test_deep_nesting_as_the_first_line_is_refused(link, caplog):
    srv, sink = link
    sock = connect(srv)
    send(sock, ("[" * 100_000 + "]" * 100_000 + "\n").encode())
    assert sink.wait(lambda: "agent-refused" in sink.kinds(), CAP_S)
    assert closed_by_server(sock)
    _no_traceback(caplog)


def test_huge_line_drops_the_client_and_the_server_lives_on(link, caplog):
    srv, sink = link
    sock = connect(srv)
    send(sock, hello(srv.token))
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(MAX_LINE_BYTES // len(chunk) + 2):  # no newline: one line over the limit
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # dropped while we were still sending
    assert closed_by_server(sock)
    good = connect(srv)
    send(good, hello(srv.token), steps_msg(time.monotonic_ns(), n=1))
    assert sink.wait(lambda: len(sink.steps) == 1, CAP_S)
    _no_traceback(caplog)
    good.close()


def test_silent_or_unfinished_first_line_is_cut_at_the_handshake_timeout(link, caplog):
    srv, sink = link  # hello_timeout_s=2
    sock = connect(srv)
    send(sock, b'{"type": "hello", "token": "')  # never finished
    sock.settimeout(CAP_S)
    try:
        assert sock.recv(10) == b""  # the server closed it (after its 2 s timeout), no hang
    except ConnectionResetError:
        pass
    assert sink.wait(lambda: "agent-refused" in sink.kinds(), CAP_S)
    _no_traceback(caplog)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
TYPES = st.sampled_from(["hello", "model", "steps", "layers", "event", "knob", "knob_set", "refused",
                         "applied", "reverted", "apply_refused", "bye", "exec", ""])
MESSAGE = st.builds(lambda t, fields: {**fields, "type": t}, TYPES, st.dictionaries(
    st.sampled_from(["steps", "rows", "t_ns", "t_start_ns", "t_end_ns", "kind", "message", "name", "value",
                     "prefix", "class", "modules", "main", "id", "action", "reason", "command", "step",
                     "timing", "protocol", "pid"]), JSON, max_size=6))
LINE = st.one_of(
    MESSAGE.map(lambda m: json.dumps(m).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),  # not UTF-8, not JSON
    st.integers(1, 3000).map(lambda d: b'{"type":"steps","steps":' + b"[" * d + b"]" * d + b"}"),
)


def test_hypothesis_messages_after_hello_never_raise_or_hang(link, caplog):
    srv, sink = link

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(LINE, min_size=1, max_size=8))
    def one_client(lines):
        before = len(sink.steps)
        sock = connect(srv)
        try:
            send(sock, hello(srv.token), b"\n".join(lines) + b"\n", steps_msg(time.monotonic_ns(), n=1))
        except (BrokenPipeError, ConnectionResetError):
            pass
        # the marker step after the junk still arrives: the connection was kept, nothing hung
        assert sink.wait(lambda: len(sink.steps) > before, CAP_S)
        sock.close()
        _no_traceback(caplog)

    one_client()


def test_hypothesis_first_lines_are_refused_or_served_never_raise(link, caplog):
    srv, sink = link

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(LINE)
    def one_client(line):
        n_refused = sink.kinds().count("agent-refused")
        sock = connect(srv)
        try:
            send(sock, line + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        # refused at once, or (a blank line) at the handshake timeout: never a hang
        assert sink.wait(lambda: sink.kinds().count("agent-refused") > n_refused, CAP_S)
        sock.close()
        _no_traceback(caplog)

    one_client()
