#!/usr/bin/env bash
# One GPU window, one device call per line (the runbook is benchmarks/gpu_window.py; the
# whole procedure, with the `run` calls to make and what to do before and after them, is in
# docs/gpu-window.md). On the device machine, in the repository root, carrying ["data"]:
#
#   bash benchmarks/gpu_suite.sh models     # call 1 (<= 500 s): smoke, five dashboard models, int8 + accuracy
#   bash benchmarks/gpu_suite.sh extra      # call 2 (<= 150 s): layer + throughput benchmarks, then grid points
#   bash benchmarks/gpu_suite.sh grid 540   # later windows: the next undone Table 1 points (cards only)
#
# Results land in $OUT (the device tool's folder; artifacts/gpu_window elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bash benchmarks/gpu_suite.sh models|extra|grid [budget seconds]}
case "$mode" in
  models) budget=${2:-500} ;;
  extra) budget=${2:-150} ;;
  grid) budget=${2:-540} ;;
  *) echo "usage: bash benchmarks/gpu_suite.sh models|extra|grid [budget seconds]" >&2; exit 2 ;;
esac
PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m benchmarks.gpu_window "$mode" --budget "$budget" --out "${OUT:-artifacts/gpu_window}"
