#!/usr/bin/env bash
# One prepared run of the checks that need a real NVIDIA GPU (≤ 5 minutes); results go to $OUT
# (or ./gpu-out). Usage on a GPU machine with torch, transformers and nvidia-ml-py installed:
#   bash scripts/gpu_check.sh
# WATTLENS_FAKE_NVML=1 runs only the NVML probe, end to end against the NVML model of the tests
# (PROBE_SCALE shortens it); pytest does that in tests/test_gpu_probe.py.
set -uo pipefail
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OUT
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -n "${WATTLENS_FAKE_NVML:-}" ]; then
  timeout 120 "$PY" "$HERE/gpu_probe.py" --scale "${PROBE_SCALE:-1}" --out "$OUT" >"$OUT/gpu_probe.log" 2>&1
  rc=$?
  echo "probe (fake NVML) rc=$rc: results in $OUT/gpu_probe.json"
  exit $rc
fi
"$PY" -m pip install -q --no-deps -e . >"$OUT/install.log" 2>&1 || echo "editable install failed (see install.log)"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,power.draw,power.draw.instant,power.draw.average --format=csv >"$OUT/power-fields.csv" 2>&1
"$PY" -m wattlens.app doctor --json >"$OUT/doctor.json" 2>&1
# NVML behaviour (counter cadence, instant vs averaged power, per-process cadence, PIDs, _v3,
# counter vs integrated power, idle, CUDA events vs torch.profiler): ~90 s
timeout 180 "$PY" "$HERE/gpu_probe.py" --out "$OUT" >"$OUT/gpu_probe.log" 2>&1 || echo "probe failed (see gpu_probe.log)"
timeout 150 "$PY" -m pytest -m gpu -q -rA tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log"
# the demo workload on the GPU under run mode (agent CUDA-event timing), with a report
timeout 60 "$PY" -m wattlens.app demo --headless --duration 20 --db "$OUT/gpu.db" -o "$OUT/demo.html" --json \
  >"$OUT/demo.json" 2>"$OUT/demo.err"
"$PY" -m wattlens.app show 1 --db "$OUT/gpu.db" >"$OUT/show.txt" 2>&1
echo "done: results in $OUT"
