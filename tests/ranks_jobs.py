"""Real 2-rank gloo jobs on CPU under `wattlens run -- torchrun`, recorded once per test session
and shared (tests copy nothing: they only read). Registered with ``pytest_plugins``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

RANKS_JOB = Path(__file__).parent / "workloads" / "ddp_ranks.py"


def record_job(db: Path, mode: str, steps: int = 30) -> int:
    """Run the 2-rank job in ``mode`` (see workloads/ddp_ranks.py) into ``db``; its session id."""
    r = run_cli("run", "--json", "--db", str(db), "--", sys.executable, "-m", "torch.distributed.run",
                "--standalone", "--nproc-per-node", "2", str(RANKS_JOB), str(steps), mode,
                env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)["session_id"]


@pytest.fixture(scope="session")
def heavy_rank0_job(tmp_path_factory) -> tuple[Path, int]:
    """Rank 0 runs extra matmuls every step; rank 1 waits for it in the loss all_reduce. 100 steps
    (~1.6 s of them, quiet): the per-rank CPU shares are measured over windows of 0.3 s or more, so
    over 30 steps (0.5 s) the start-up, where both ranks burn alike, took half a step's window."""
    db = tmp_path_factory.mktemp("ranks") / "heavy0.db"
    return db, record_job(db, "heavy0", steps=100)


@pytest.fixture(scope="session")
def comm_bound_job(tmp_path_factory) -> tuple[Path, int]:
    """Both ranks spend most of each step in a 16 MB all_reduce."""
    db = tmp_path_factory.mktemp("ranks") / "comm.db"
    return db, record_job(db, "comm")
