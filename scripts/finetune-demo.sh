#!/usr/bin/env bash
# The [train] demonstration in one command: LoRA fine-tuning of SmolLM2-135M-Instruct (Q4_1,
# fetched and cached by scripts/fetch-model.sh) on a committed public-domain text, the
# Declaration of Independence (examples/data/), with a held-out split whose loss is measured
# before and after a fixed step budget. Prints a loss line per step and the held-out change.
#   scripts/finetune-demo.sh [extra pupil finetune options]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(scripts/fetch-model.sh smollm2)
cargo build --release --bin pupil
exec target/release/pupil finetune -m "$model" --data examples/data/declaration_of_independence.txt \
  --steps 30 --seq 128 --batch 2 --rank 16 --alpha 32 --lr 1e-3 --warmup 3 --eval 0.15 --seed 1 "$@"
