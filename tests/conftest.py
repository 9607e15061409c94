"""Shared fixtures. Fakes live only at the hardware boundary (NVML module, powercap sysfs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKLOADS = Path(__file__).parent / "workloads"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test touches the user's real database or settings."""
    monkeypatch.setenv("WATTLENS_DB", str(tmp_path / "default.db"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("WATTLENS_CPU_TDP_W", raising=False)
    monkeypatch.delenv("WATTLENS_POWERCAP_ROOT", raising=False)
    from wattlens.profiler.sources import nvml

    nvml.shutdown()
    yield
    nvml.shutdown()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "wattlens.db"


def start_torch_child(seconds: float, *extra: str) -> subprocess.Popen:
    """A real Python child running a small torch training loop; returns once torch is loaded."""
    proc = subprocess.Popen([sys.executable, str(WORKLOADS / "torch_loop.py"), str(seconds), *extra],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"workload did not start: {line!r}"
    return proc


@pytest.fixture
def torch_child():
    procs: list[subprocess.Popen] = []

    def make(seconds: float = 20.0, *extra: str) -> subprocess.Popen:
        p = start_torch_child(seconds, *extra)
        procs.append(p)
        return p

    yield make
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`wattlens ARGS` in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "wattlens.app", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
