#!/usr/bin/env bash
# One GPU window, one device call per line (the runbook is python -m gpu_window; the
# whole procedure, with the `run` calls to make and what to do before and after them, is in
# docs/gpu-window.md). On the device machine, in the repository root, carrying ["data"]:
#
#   bash benchmarks/gpu_suite.sh probe      # call 1 (<= 260 s): resnet18 under the protocol and changes of it
#   bash benchmarks/gpu_suite.sh models 590 --args-from runs/gpu_window/probe/best.json
#                                           # call 2: smoke, five dashboard models (the probe's verdict), int8 + accuracy
#   bash benchmarks/gpu_suite.sh extra      # (<= 150 s): layer + throughput benchmarks, then grid points
#   bash benchmarks/gpu_suite.sh grid 540   # later windows: the next undone Table 1 points (cards only)
#
# Arguments after the budget go to the mode as they are.
#
# Results land in $OUT (the device tool's folder; artifacts/gpu_window elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash benchmarks/gpu_suite.sh probe|models|extra|grid [budget seconds [mode arguments...]]"
mode=${1:?$usage}
case "$mode" in
  probe) budget=${2:-260} ;;
  models) budget=${2:-590} ;;
  extra) budget=${2:-150} ;;
  grid) budget=${2:-540} ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
shift $(( $# < 2 ? $# : 2 ))
PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" -m gpu_window "$mode" --budget "$budget" --out "${OUT:-artifacts/gpu_window}" "$@"
