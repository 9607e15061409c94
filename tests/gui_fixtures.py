"""Fixtures for the GUI tests (imported by tests/test_gui_*.py).

Everything is real except the hardware boundary: real child processes (a small torch loop),
real ProfilingSessions into real SQLite files, real Qt widgets on the offscreen platform. Settings
live in a temporary INI file, never the user's. Every window is shut down after its test and the
test fails if a session thread, a worker or a visible widget is left behind.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SESSION_THREADS = ("wattlens-sampler", "wattlens-store-writer", "wattlens-stacks")

# A small torch training loop that pauses 20 ms after each step (like a job waiting on its data
# loader): it stays a realistic target for attach and py-spy while leaving CPU to the tests on a
# 2-core machine for the whole test run.
TORCH_LOOP = """
import sys, time
import torch
import os, threading
def _orphan_watch(ppid=os.getppid()):  # end with the process that started us, even if it crashed
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(0)
threading.Thread(target=_orphan_watch, daemon=True).start()
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 128), torch.randint(0, 10, (32,))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    time.sleep(0.02)
"""


def start_torch_loop(seconds: float) -> subprocess.Popen:
    """The shared torch workload; returns once torch is imported and the model is built."""
    proc = subprocess.Popen([sys.executable, "-c", TORCH_LOOP, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"workload did not start: {line!r}"
    return proc


def end_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


def start_busy_child(seconds: float) -> subprocess.Popen:
    """A plain Python child that keeps a core busy (no torch: starts in a few ms)."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: sum(range(5000))"
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture(scope="session")
def torch_loop():
    """One torch child for the whole test run (attach never changes it). It lives as long as CI
    may run (a suite on a busy machine outlasted a 600 s child) and ends with its parent."""
    proc = start_torch_loop(5400)
    yield proc
    end_process(proc)


@pytest.fixture(scope="session")
def stored_db_template(tmp_path_factory, torch_loop):
    """A database with two real sessions on the torch child: #1 with stack sampling (layer rows),
    #2 without. Tests copy it (they rename and delete)."""
    from wattlens.profiler.process import Target
    from wattlens.profiler.session import ProfilingSession
    from wattlens.profiler.sources import discover
    from wattlens.profiler.store import Store

    def until_a_window(s) -> None:
        """py-spy may take seconds to attach on a busy machine: the session with layers ends
        (completed) once a window was stored, not after a fixed time that attaching could use up."""
        if s.stack_sampler is not None and s.stack_sampler.windows > 0:
            s.duration_s = s.elapsed_s()

    path = tmp_path_factory.mktemp("stored") / "sessions.db"
    store = Store(path)
    for name, stacks, duration_s in (("with layers", True, 120.0), ("baseline", False, 1.2)):
        s = ProfilingSession(store, target=Target(torch_loop.pid), name=name, interval_s=0.05,
                             duration_s=duration_s, discovery=discover(gpu=False), stacks=stacks,
                             stack_rate_hz=100)
        s.start()
        s.run(poll_s=0.05, on_tick=until_a_window if stacks else None)
    store.close()
    return path


@pytest.fixture
def stored_db(stored_db_template, tmp_path) -> Path:
    dst = tmp_path / "copy.db"
    shutil.copy(stored_db_template, dst)
    return dst


@pytest.fixture
def settings_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("WATTLENS_SETTINGS", str(path))
    return path


def _session_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(SESSION_THREADS) and t.is_alive()]


@pytest.fixture
def make_window(qtbot, tmp_path, settings_path):
    """Factory: a shown main window on a temporary database and settings file; shut down after
    the test, with a check that nothing was left running."""
    from PySide6.QtCore import QSettings

    from wattlens.app.gui.main import build_main_window

    windows = []

    def make(db: str | os.PathLike | None = None, *, cli_db: bool = True, wait_ready: bool = True):
        """``cli_db=False``: no --db, so the database comes from the settings (or WATTLENS_DB)."""
        w = build_main_window(db=str(db or tmp_path / "gui.db") if cli_db else None,
                              settings_backend=QSettings(str(settings_path), QSettings.IniFormat))
        qtbot.addWidget(w)
        windows.append(w)
        w.show()
        if wait_ready:
            qtbot.waitUntil(lambda: w.store is not None or w.store_error is not None, timeout=20000)
        return w

    yield make
    for w in windows:
        w.close()
        assert w.pool.busy == 0 or w._closed
        assert w.pool.pool.activeThreadCount() == 0, "a worker outlived its window"
    assert _session_threads() == [], f"session threads left running: {_session_threads()}"


def wait_for_run(qtbot, window, timeout_ms: int = 30000):
    qtbot.waitUntil(lambda: window.run is not None or not window.live.starting, timeout=timeout_ms)
    assert window.run is not None, f"the session did not start: {window.messages.text}"
    return window.run


def assert_one_line(text: str) -> None:
    assert text, "no message shown"
    assert "\n" not in text and "Traceback" not in text, text


@pytest.fixture
def gui():
    """The helpers above, for test modules (they load this file as a plugin, not by import)."""
    from types import SimpleNamespace

    return SimpleNamespace(wait_for_run=wait_for_run, assert_one_line=assert_one_line,
                           start_busy_child=start_busy_child, TORCH_LOOP=TORCH_LOOP)
