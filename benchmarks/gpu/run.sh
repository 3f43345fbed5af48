#!/usr/bin/env bash
# The GPU suite on a fresh GPU machine (README, "Performance"): installs, runs, writes one report.
#   benchmarks/gpu/run.sh [OUT_DIR] [suite.py options...]      e.g. benchmarks/gpu/run.sh gpu-report --steps 5
#
# Default mode: `make setup` builds .venv with a CUDA torch (TORCH_SPEC, default torch==2.14.1) unless it
# exists; INSTALL_VLLM=1 also builds .venv-vllm for the recaption section (vLLM's wheel pins its own
# torch: a second environment, that the suite runs that section in).
#
# Preinstalled mode (SUITE_PYTHON=python3): a machine's own Python with its CUDA torch, transformers and
# peft, and no package index. Nothing is installed from an index: the wheels in WHEELS (a folder of
# `pip download`ed wheels, e.g. pydantic for the catalog) go into a private folder (SITE_DIR, default a
# fresh temporary one) with --no-index --no-deps, which is put first on PYTHONPATH; vora_core is imported
# from this checkout. Sections whose packages are absent are skipped with the reason.
#   SUITE_PYTHON=python3 WHEELS=.gpu/whl benchmarks/gpu/run.sh "$OUT" --budget-s 420
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-gpu-report}"
shift || true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
if [ -n "${SUITE_PYTHON:-}" ]; then
  SUITE_PY="$SUITE_PYTHON"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # vora_core for the suite and the stages' subprocesses
  if [ -n "${WHEELS:-}" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE="${SITE_DIR:-$(mktemp -d)/site}"
    "$SUITE_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # name-version of each carried wheel, for the report's environment
    VORA_GPU_CARRIED="$(cd "$WHEELS" && ls -- *.whl | sed 's/^\([^-]*-[^-]*\)-.*/\1/' | paste -sd, -)"
    export VORA_GPU_CARRIED
  fi
else
  PYTHON="${PYTHON:-python3.11}"
  if [ ! -x .venv/bin/vora ]; then
    make setup PYTHON="$PYTHON" TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
  fi
  SUITE_PY=.venv/bin/python
  if [ "${INSTALL_VLLM:-0}" = 1 ]; then
    [ -x .venv-vllm/bin/python ] || { "$PYTHON" -m venv .venv-vllm && .venv-vllm/bin/pip install -q -e '.[vllm]'; }
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$SUITE_PY" benchmarks/gpu/suite.py --out "$OUT" "$@"
