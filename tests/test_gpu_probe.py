"""scripts/gpu_check.sh runs its NVML probe end to end against the NVML model (issue 16)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_probe_runs_end_to_end_on_the_model(tmp_path):
    env = {**os.environ, "WATTLENS_FAKE_NVML": "1", "PROBE_SCALE": "0.3", "OUT": str(tmp_path),
           "PYTHON": sys.executable, "WATTLENS_DB": str(tmp_path / "none.db")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    log = (tmp_path / "gpu_probe.log").read_text() if (tmp_path / "gpu_probe.log").exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + log
    res = json.loads((tmp_path / "gpu_probe.json").read_text())
    assert res["fake"] is True and res["v3_symbol"] is True
    assert abs(res["counter"]["counter_update_period_s"] - 0.1) < 0.02  # the model's 100 ms counter
    assert abs(res["process_samples"]["sample_period_s"] - 0.5) < 0.01  # its 0.5 s driver cadence
    assert 0 < res["process_samples"]["first_seen_delay_s"] <= 0.55
    assert res["pids"]["ours_seen_by_nvml"] is True
    assert abs(res["idle"]["idle_measured_w"] - 70.0) < 3.5
    assert res["counter_vs_integrated"]["relative_difference"] < 0.05
    assert res["cuda_events_vs_profiler"]["cuda_events"] is None
