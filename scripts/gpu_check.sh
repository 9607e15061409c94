#!/usr/bin/env bash
# One prepared run of the checks that need a real NVIDIA GPU; results go to $OUT (or ./gpu-out).
# Usage on a GPU machine with torch, transformers and nvidia-ml-py installed:
#   bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps -e . >"$OUT/install.log" 2>&1 || echo "editable install failed (see install.log)"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -m wattlens.app doctor --json >"$OUT/doctor.json" 2>&1
python3 -m pytest -m gpu -q -rA tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log"
# the demo workload on the GPU under run mode (agent CUDA-event timing), with a report
python3 -m wattlens.app demo --headless --duration 20 --db "$OUT/gpu.db" -o "$OUT/demo.html" --json \
  >"$OUT/demo.json" 2>"$OUT/demo.err"
python3 -m wattlens.app show 1 --db "$OUT/gpu.db" >"$OUT/show.txt" 2>&1
echo "done: results in $OUT"
