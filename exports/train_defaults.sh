#!/usr/bin/env bash
# Train the bundled default models on the CPU (small, honestly labelled budget: the first
# 1,500 CIFAR-10 training images for 1 epoch, tested on the first 500 test images).
# The variants train in parallel, one CPU thread each (faster than sharing threads on 2 cores).
# Usage: bash exports/train_defaults.sh [extra training flags]   (outputs in runs/defaults/)
# The GPU-trained models (all 50,000 images, Table 1's short protocol) come from one GPU
# window instead: docs/gpu-window.md (python -m gpu_window, then python -m exports.ingest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-runs/defaults}
mkdir -p "$(dirname "$OUT")"
for variant in ${VARIANTS:-hybrid diffstride diffstride2 resnet18 spectral}; do
  "$PY" -m training.train --variant "$variant" --dataset cifar10 --strides 1,1,2,2,2 \
    --epochs 1 --limit-train 1500 --limit-test 500 --batch-size 32 --schedule onecycle --lr 0.05 --grad-clip 2 \
    --seed 0 --no-progress --threads 1 --out "$OUT" "$@" > "$OUT.$variant.log" 2>&1 &
done
wait
tail -n 2 "$OUT".*.log
