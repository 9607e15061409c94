"""`wattlens attach <launcher PID>` follows every rank of a real 2-rank gloo DDP job (a tiny
Llama from a config) that `python -m torch.distributed.run` started outside wattlens: layer rows
for both ranks, each rank's energy its own share, a rank that exits early does not end or fail
the session, and `show` lists the layers per rank and the job's total.

The job and the session are driven by files and by what is stored: the test waits for evidence
(bounded by MAX_WAIT_S against a hang, never a speed requirement) and stops the session with
SIGTERM, the clean stop of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import run_cli
from wattlens.app.report.rank_layers import rank_layer_lines, rank_layer_rows
from wattlens.profiler.rank_layers import per_rank_layers
from wattlens.profiler.records import LayerCost
from wattlens.profiler.stacks.sampler import find_pyspy
from wattlens.profiler.store import Store

DDP_JOB = Path(__file__).parent / "workloads" / "ddp_attach.py"
MAX_WAIT_S = 300.0


def wait_for(cond, what: str, *procs: subprocess.Popen):
    deadline = time.monotonic() + MAX_WAIT_S
    while not cond():
        for p in procs:
            assert p.poll() is None, f"{p.args[:4]} ended (code {p.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def stored_layers(db: Path) -> list[tuple[int | None, str, int]]:
    """(rank, path, window_start_ns) of the layer rows stored so far (read-only, while written)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT rank, path, window_start_ns FROM layer_costs").fetchall()
    except sqlite3.OperationalError:  # the tables are not there yet
        return []
    finally:
        con.close()


def has_mlp(db: Path, rank: int, after_ns: int = 0) -> bool:
    return any(r == rank and "LlamaMLP" in path and t0 > after_ns for r, path, t0 in stored_layers(db))


@pytest.mark.slow
@pytest.mark.skipif(find_pyspy() is None, reason="py-spy is not installed")
def test_attach_to_the_launcher_follows_both_ranks_and_outlives_one(db_path, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", "2", str(DDP_JOB), str(tmp_path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    attach = None
    try:
        wait_for(lambda: all((tmp_path / f"rank{r}.pid").exists() for r in (0, 1)), "both ranks to train", job)
        pid1 = int((tmp_path / "rank1.pid").read_text())
        attach = subprocess.Popen([sys.executable, "-m", "wattlens.app", "attach", str(job.pid), "--duration",
                                   "900", "--json", "--db", str(db_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_for(lambda: has_mlp(db_path, 0) and has_mlp(db_path, 1), "LlamaMLP rows of both ranks", attach)
        (tmp_path / "stop1").touch()  # rank 1 leaves the job; rank 0 trains on alone
        wait_for(lambda: not psutil.pid_exists(pid1), "rank 1 to exit", attach)
        gone_ns = time.monotonic_ns()
        wait_for(lambda: has_mlp(db_path, 0, after_ns=gone_ns), "rank 0's rows after rank 1 left", attach)
        attach.send_signal(signal.SIGTERM)
        out, err = attach.communicate(timeout=MAX_WAIT_S)
    finally:
        if attach is not None and attach.poll() is None:
            attach.kill()
            attach.communicate()
        (tmp_path / "stop1").touch()
        (tmp_path / "stop0").touch()
        try:
            job.communicate(timeout=MAX_WAIT_S)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(job.pid).children(recursive=True):
                child.kill()
            job.kill()
            job.communicate()
    assert attach.returncode == 0, err[-3000:]
    doc = json.loads(out)
    assert doc["status"] == "stopped"
    notes = doc["notes"]
    assert any(f"rank 1 (PID {pid1}) exited during the session" in n for n in notes), notes
    assert any(n.startswith("rank 0 (PID ") and "stack reads" in n for n in notes), notes

    store = Store(db_path)
    try:
        layers = store.layer_costs(doc["session_id"])
    finally:
        store.close()
    for rank in (0, 1):
        assert any(lc.rank == rank and "LlamaMLP" in lc.path for lc in layers)
    assert all(lc.rank in (0, 1) for lc in layers)  # the launcher itself is not sampled
    # each rank's rows hold its own share of the target's energy: all ranks together count it once
    assert doc["target"]["energy_j"] > 0
    layer_energy_j = sum(lc.self_energy_j for lc in layers if lc.self_energy_j is not None)
    assert 0 < layer_energy_j <= doc["target"]["energy_j"]

    show = run_cli("show", str(doc["session_id"]), "--db", str(db_path))
    assert show.returncode == 0, show.stderr
    table = show.stdout[show.stdout.index("layers per rank:"):]
    assert "\n    0 " in table and "\n    1 " in table and "Job layer energy" in table


def _rows(rank: int | None, t0_s: float, energy_j: float | None, path: str = "M/LlamaMLP") -> list[LayerCost]:
    t0, t1 = int(t0_s * 1e9), int((t0_s + 5) * 1e9)
    half = None if energy_j is None else energy_j / 2
    return [LayerCost(t0, t1, "M", "class", "stack-sampling", 5.0, 1.0, energy_j, 2.5, half, 100, rank=rank),
            LayerCost(t0, t1, path, "class", "stack-sampling", 2.5, 0.5, half, 2.5, half, 50, rank=rank)]


def test_per_rank_layers_sum_each_ranks_own_energy_for_the_job():
    layers = _rows(0, 0, 10.0) + _rows(0, 5, 12.0) + _rows(1, 1, 8.0) + _rows(None, 0, 99.0)
    out = per_rank_layers(layers)
    assert [(r["rank"], r["windows"], r["covered_s"], r["energy_j"]) for r in out["ranks"]] == [
        (0, 2, 10.0, 22.0), (1, 1, 5.0, 8.0)]
    assert out["job_energy_j"] == 30.0 and out["job_energy_note"] is None
    assert out["ranks"][0]["top"][0]["path"] in ("M", "M/LlamaMLP")
    assert "share of the tree's CPU time" in out["method"]
    # a rank without measured energy is said, not counted as 0
    out = per_rank_layers(_rows(0, 0, 10.0) + _rows(1, 0, None))
    assert out["ranks"][1]["energy_j"] is None and out["job_energy_j"] == 10.0
    assert "1 rank(s) without measured energy" in out["job_energy_note"]
    assert per_rank_layers(_rows(None, 0, 1.0)) is None


def test_rank_layer_rows_say_each_rank_and_the_job_total():
    out = per_rank_layers(_rows(0, 0, 10.0) + _rows(1, 0, None))
    rows = rank_layer_rows(out)
    assert [r[:4] for r in rows] == [("0", "1", "5.0 s", "10 J"), ("1", "1", "5.0 s", "n/a")]
    assert "M/LlamaMLP 50 %" in rows[0][4]
    lines = rank_layer_lines(out)
    assert lines[0].startswith("Job layer energy 10 J over 2 rank(s) (1 rank(s) without measured energy")
    assert rank_layer_rows(None) == [] and rank_layer_lines(None) == []


def test_the_agents_root_instance_is_named_in_the_rank_table():
    """Run mode's rows are agent instance paths; the root's is empty and must not show as a blank."""
    from wattlens.app.report.rank_layers import short_path

    assert short_path("") == "(model root)"
    assert short_path("M/LlamaDecoderLayer/LlamaMLP") == "LlamaDecoderLayer/LlamaMLP"
