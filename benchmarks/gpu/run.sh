#!/usr/bin/env bash
# The GPU suite on a fresh GPU machine (README, "Performance"): installs, runs, writes one report.
#   benchmarks/gpu/run.sh [OUT_DIR] [suite.py options...]      e.g. benchmarks/gpu/run.sh gpu-report --steps 5
# TORCH_SPEC: the CUDA torch to install (default torch==2.14.1); INSTALL_VLLM=1: also install vllm for
# the recaption section (its wheel pins its own torch: a second environment, .venv-vllm, that the suite
# runs that section in).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-gpu-report}"
shift || true
PYTHON="${PYTHON:-python3.11}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
if [ ! -x .venv/bin/vora ]; then
  make setup PYTHON="$PYTHON" TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
fi
SUITE_PY=.venv/bin/python
if [ "${INSTALL_VLLM:-0}" = 1 ]; then
  [ -x .venv-vllm/bin/python ] || { "$PYTHON" -m venv .venv-vllm && .venv-vllm/bin/pip install -q -e '.[vllm]'; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$SUITE_PY" benchmarks/gpu/suite.py --out "$OUT" "$@"
