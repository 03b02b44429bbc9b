#!/usr/bin/env bash
# The GPU paths CI never runs: CUDA, bf16 autocast, channels_last, torch.compile, NCCL.
# For a machine with an NVIDIA GPU: `bash scripts/gpu_check.sh` (about 5 minutes; needs `make setup`).
# Writes runs/gpu-check/{bench.json,bench-compile.json,train/} and prints one line per check.
set -uo pipefail
cd "$(dirname "$0")/.."
TR=.venv/bin/transcribe
OUT=runs/gpu-check
mkdir -p "$OUT"
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('cuda:', torch.cuda.get_device_name(0), 'bf16:', torch.cuda.is_bf16_supported())" || exit 1
test -f data/synth/gpu/digitStruct.mat || $TR data synth --photos 4000 --out data/synth/gpu --synth-seed 5
status=0
check() { local name=$1; shift; if "$@" > "$OUT/$name.log" 2>&1; then echo "ok   $name"; else echo "FAIL $name (see $OUT/$name.log)"; status=1; fi; }
check bench          $TR bench --device cuda --presets goodfellow cpu --batch-sizes 128 256 --seconds 5 --no-obvious --out "$OUT/bench.json"
check bench-compile  $TR bench --device cuda --presets goodfellow --batch-sizes 256 --seconds 5 --compile --no-obvious --out "$OUT/bench-compile.json"
check train-bf16     $TR train --device cuda --amp bf16 --preset goodfellow --train data/synth/gpu --out "$OUT/train" --steps 300 --batch-size 128 --eval-every 100
check train-compile  $TR train --device cuda --amp bf16 --compile --preset cpu --train data/synth/gpu --out "$OUT/train-compile" --steps 200 --batch-size 128 --eval-every 100
check torchrun-nccl  .venv/bin/torchrun --standalone --nproc_per_node "$(.venv/bin/python -c 'import torch; print(max(1, torch.cuda.device_count()))')" \
                     train.py --device cuda --preset cpu --train data/synth/gpu --out "$OUT/train-ddp" --steps 100 --batch-size 128 --eval-every 50
check evaluate       $TR evaluate "$OUT/train" --split val --device cuda
grep -h "markdown" -A0 "$OUT"/bench*.json > /dev/null 2>&1 && .venv/bin/python -c "
import json,sys
for f in sys.argv[1:]:
    print(json.load(open(f))['markdown']); print()" "$OUT"/bench*.json
exit $status
