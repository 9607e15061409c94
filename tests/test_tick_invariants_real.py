"""A real multi-threaded target (torch, 2 intra-op threads, a DataLoader worker process) measured
by `wattlens run` and `wattlens attach`: no stored tick is physically impossible."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psutil

from tests.conftest import WORKLOADS, run_cli
from wattlens.profiler.store import Store

LIMIT_PCT = 100.0 * (psutil.cpu_count(logical=True) or 1)


def _assert_possible(db, session_id: int) -> None:
    store = Store(db)
    data = store.series_data(session_id)
    t_pct, pct = data["target/cpu_pct"]
    assert len(pct) > 10
    assert float(np.max(pct)) <= LIMIT_PCT, f"target CPU peaked at {np.max(pct):.0f} % (limit {LIMIT_PCT:.0f} %)"
    assert float(np.min(pct)) >= 0.0
    checked = 0
    for key in data:
        if not (key.startswith("target/") and key.endswith("/energy_j")) or key == "target/energy_j":
            continue
        src = key[len("target/"):-len("/energy_j")]
        t_m, e_m = data[f"{src}/energy_j"]
        t_t, e_t = data[key]
        assert np.all(np.diff(e_m) >= 0) and np.all(np.diff(e_t) >= 0), "an energy counter went down"
        machine = dict(zip(t_m.tolist(), e_m.tolist(), strict=True))
        common = [(t, e) for t, e in zip(t_t.tolist(), e_t.tolist(), strict=True) if t in machine]
        for (ta, ea), (tb, eb) in zip(common, common[1:], strict=False):
            assert eb - ea <= machine[tb] - machine[ta] + 1e-9, f"target above {src} at t={tb}"
            checked += 1
    assert checked > 10
    events = [e for e in store.events(session_id) if e.kind == "invariant"]
    assert events == [], [e.message for e in events]


def test_run_of_a_threaded_target_with_a_loader_worker_stores_only_possible_ticks(tmp_path):
    db = tmp_path / "w.db"
    r = run_cli("run", "--db", str(db), "--json", "--", sys.executable, str(WORKLOADS / "threads_loader.py"), "6",
                timeout=300)
    assert r.returncode == 0, r.stderr
    _assert_possible(db, json.loads(r.stdout)["session_id"])


def test_attach_to_a_threaded_target_with_a_loader_worker_stores_only_possible_ticks(tmp_path):
    db = tmp_path / "w.db"
    proc = subprocess.Popen([sys.executable, str(WORKLOADS / "threads_loader.py"), "120"],  # killed below
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        r = run_cli("attach", str(proc.pid), "--db", str(db), "--json", "--duration", "5", timeout=300)
        assert r.returncode == 0, r.stderr
        _assert_possible(db, json.loads(r.stdout)["session_id"])
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
