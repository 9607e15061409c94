"""StackSampler lifecycle and failure cases, on real processes and the real py-spy binary.

Every failure must leave ``available`` False with a one-line reason that says what to do, and never
raise: the session around it keeps measuring power.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from wattlens.profiler.errors import BadInputError
from wattlens.profiler.stacks.sampler import (
    StackSampler,
    check_pyspy,
    explain_failure,
    find_pyspy,
)

PYSPY = find_pyspy()
needs_pyspy = pytest.mark.skipif(PYSPY is None, reason="py-spy is not installed")

# A Python child that is cheap to start: no torch import.
BUSY = (
    "import sys, time\n"
    "def spin(n):\n"
    "    return sum(i * i for i in range(n))\n"
    "print('ready', flush=True)\n"
    "t_end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < t_end:\n"
    "    spin(20000)\n"
)


def python_child(seconds: float) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def make_sampler(pid: int, windows: list, **kw) -> StackSampler:
    kw.setdefault("rate_hz", 100)
    kw.setdefault("window_s", 30.0)
    return StackSampler(pid, on_window=windows.append, energy_between=lambda a, b: None, **kw)


def assert_one_line(reason: str | None) -> str:
    assert reason and "\n" not in reason
    return reason


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- failures


def test_missing_binary(tmp_path):
    windows: list = []
    sampler = make_sampler(os.getpid(), windows, pyspy_path=tmp_path / "no-such-py-spy")
    sampler.start()
    assert not sampler.available
    assert "pip install py-spy" in assert_one_line(sampler.reason)
    sampler.stop()
    assert windows == []
    assert "pip install py-spy" in check_pyspy(os.getpid(), pyspy_path=tmp_path / "nope")


@needs_pyspy
def test_dead_pid():
    pid = dead_pid()
    sampler = make_sampler(pid, [])
    sampler.start()
    assert not sampler.available
    assert "exited" in assert_one_line(sampler.reason)
    sampler.stop()
    assert "exited" in check_pyspy(pid)


@needs_pyspy
def test_non_python_target():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        sampler = make_sampler(sleeper.pid, [])
        sampler.start()
        reason = assert_one_line(sampler.reason)
        assert not sampler.available
        assert "not look like a Python program" in reason
        sampler.stop()
        assert "not look like a Python program" in check_pyspy(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_pyspy
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run py-spy as an unprivileged user",
)
def test_ptrace_denied(tmp_path):
    # py-spy itself, run as 'nobody' against our (root-owned) child: the kernel refuses ptrace.
    wrapper = tmp_path / "py-spy-as-nobody"
    wrapper.write_text(
        f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {PYSPY} "$@"\n'
    )
    wrapper.chmod(0o755)
    child = python_child(60)
    try:
        sampler = make_sampler(child.pid, [], pyspy_path=wrapper)
        sampler.start()
        reason = assert_one_line(sampler.reason)
        assert not sampler.available
        for hint in ("sudo", "ptrace_scope", "--cap-add SYS_PTRACE"):
            assert hint in reason
        sampler.stop()
        assert "ptrace_scope" in check_pyspy(child.pid, pyspy_path=wrapper)
    finally:
        child.kill()
        child.wait()


def test_unsupported_python_version_message():
    # We cannot run an interpreter py-spy does not know; this is the line py-spy prints for one.
    reason = explain_failure("Error: Unsupported version of Python: 3.99.0\n", os.getpid())
    assert "3.99.0" in assert_one_line(reason)
    assert "pip install -U py-spy" in reason


def test_bad_rate_is_bad_input():
    with pytest.raises(BadInputError):
        make_sampler(os.getpid(), [], rate_hz=0)
    with pytest.raises(BadInputError):
        make_sampler(os.getpid(), [], rate_hz=33.5)
    with pytest.raises(BadInputError):
        make_sampler(os.getpid(), [], window_s=0.01)


# --------------------------------------------------------------------------- lifecycle


@needs_pyspy
def test_check_pyspy_ok_on_a_python_process():
    child = python_child(30)
    try:
        assert check_pyspy(child.pid) is None
    finally:
        child.kill()
        child.wait()


@needs_pyspy
def test_stop_flushes_the_partial_window():
    child = python_child(60)
    windows: list = []
    try:
        sampler = make_sampler(child.pid, windows, window_s=30.0)
        sampler.start()  # returns once py-spy has attached (or after 10 s: a busy machine may be slower)
        assert sampler.wait_attached(120) and sampler.available, sampler.reason
        t_started_ns = time.monotonic_ns()
        time.sleep(1.0)
        t_stop_ns = time.monotonic_ns()
        sampler.stop()
        t_stopped_ns = time.monotonic_ns()
    finally:
        child.kill()
        child.wait()
    assert len(windows) == 1
    rows = windows[0]
    # the window is cut at the stop: bounded by our own clock readings, whatever the load
    assert rows[0].window_start_ns <= t_started_ns
    assert t_stop_ns <= rows[0].window_end_ns <= t_stopped_ns
    assert any(r.n_samples > 0 for r in rows)
    assert sampler.available  # we stopped it; nothing failed


@needs_pyspy
def test_target_exit_ends_sampling_and_flushes():
    child = python_child(120)
    windows: list = []
    sampler = make_sampler(child.pid, windows, window_s=30.0)
    sampler.start()  # attached (a child that ended before py-spy attached would test nothing)
    assert sampler.available, sampler.reason
    time.sleep(1.0)
    child.terminate()  # the target exits mid-window
    child.wait()
    deadline = time.monotonic() + 120  # a bound against a hang, not a speed requirement
    while sampler.available and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sampler.available
    assert "exited" in assert_one_line(sampler.reason)
    sampler.stop()
    assert len(windows) == 1 and sum(r.n_samples for r in windows[0]) > 0


def test_unknown_py_spy_failure_is_retried_then_reported(tmp_path):
    # A stand-in for the py-spy binary that fails the way no known case does.
    odd = tmp_path / "py-spy"
    odd.write_text(
        "#!/bin/sh\necho 'Error: Failed to copy PyThreadState head pointer' >&2\nexit 1\n"
    )
    odd.chmod(0o755)
    sampler = make_sampler(os.getpid(), [], pyspy_path=odd)
    sampler.start()
    reason = assert_one_line(sampler.reason)
    assert not sampler.available
    assert "Failed to copy PyThreadState head pointer" in reason
    assert f"py-spy dump --pid {os.getpid()}" in reason
    sampler.stop()
