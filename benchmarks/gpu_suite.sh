#!/usr/bin/env bash
# GPU suite (issue 5): layer benchmark, training throughput and short-schedule CIFAR-10
# training of every variant, on a CUDA machine with the repository and CIFAR-10 carried in.
#
#   mkdir -p data && cp ../shared/data/cifar10_*jpeg*.npz data/        # 56 MB, git-ignored
#   device run:  bash benchmarks/gpu_suite.sh bench                (carry: ["data"])  ~5 min
#                bash benchmarks/gpu_suite.sh train hybrid resnet18 (carry: ["data"])  <= MAX_SECONDS each
#   locally:     bash benchmarks/gpu_suite.sh all
#
# A device call carries at most 64 MiB of working tree and exports/models holds ~108 MB:
# move the bundled models aside for the device calls (mv exports/models /tmp/bundled-models)
# and put them back (or replace them with the GPU-trained exports) before committing.
#
# Everything lands under $OUT (JSON + Markdown + checkpoints/cards); a short table is printed
# last. Environment: PYTHON (default python3), DATA_DIR (default data), EPOCHS (short
# schedule length, default 12), MAX_SECONDS (wall-clock budget per training, default 280:
# two trainings fit one 10-minute device call; a run cut short stays resumable).
# Variants after the part name restrict the training part (default: all five).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-artifacts/gpu_suite}
DATA=${DATA_DIR:-data}
EPOCHS=${EPOCHS:-12}
MAX_SECONDS=${MAX_SECONDS:-280}
PART=${1:-all}
shift || true
VARIANTS=${*:-resnet18 spectral diffstride hybrid diffstride2}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

case "$PART" in bench|train|all) ;; *) echo "usage: $0 {bench|train|all}" >&2; exit 2 ;; esac
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt"

if [ "$PART" != train ]; then
  # 1. layers: fast path vs torch.fft reference, fwd+bwd, float32 and bf16 autocast; the
  #    max |fast - ref| column is the numerical check on the GPU.
  "$PY" -m benchmarks.layers --devices cuda --bf16 --repeats 20 --models --model-batch 128 \
    --json "$OUT/layers.json" | tee "$OUT/layers.md"
  # 2. training throughput at (1,1,2,2,2), batch 256: eager, then torch.compile (its warm-up
  #    column includes compilation); peak memory per variant.
  "$PY" -m benchmarks.train_throughput --device cuda --batch 256 --steps 30 --warmup 5 \
    --variants "${VARIANTS// /,}" --json "$OUT/throughput.json" | tee "$OUT/throughput.md"
  "$PY" -m benchmarks.train_throughput --device cuda --batch 256 --steps 30 --warmup 3 --compile \
    --variants "${VARIANTS// /,}" --json "$OUT/throughput_compiled.json" | tee "$OUT/throughput_compiled.md"
fi

if [ "$PART" != bench ]; then
  # 3. short-schedule training on all the CIFAR-10 data present, each within MAX_SECONDS
  #    (--resume continues a run that an earlier call cut short).
  for variant in $VARIANTS; do
    "$PY" -m training.train --variant "$variant" --dataset cifar10 --strides 1,1,2,2,2 \
      --data-dir "$DATA" --out "$OUT/models" --epochs "$EPOCHS" --schedule onecycle \
      --batch-size 512 --lr 0.2 --grad-clip 2 --seed 0 --no-progress --resume --keep-state \
      --max-seconds "$MAX_SECONDS"
  done
  "$PY" - "$OUT/models" <<'PYEOF'
import json, pathlib, sys
cards = sorted(pathlib.Path(sys.argv[1]).glob("*.json"))
print("| model | epochs | test acc | seconds |\n|---|---|---|---|")
for path in cards:
    card = json.loads(path.read_text())
    seconds = sum(h["seconds"] for h in card["history"])
    print(f"| {card['variant']} | {card['epoch']} | {card['test_acc']:.4f} | {seconds:.0f} |")
PYEOF
fi
