#!/usr/bin/env bash
# The [distill] demonstrations on SmolLM2-135M-Instruct (Q4_1, fetched and cached by
# scripts/fetch-model.sh), each a fixed step budget on committed data, printing a loss/KL line
# per step and the held-out figures:
#
#   scripts/distill-demo.sh prune    a 30 → 20-layer student (the 10 least influential blocks by
#                                    block influence on the Declaration of Independence dropped)
#                                    healed by distillation from the full model: the held-out
#                                    cross-entropy before and after against the teacher's, and the
#                                    share of the gap closed.
#   scripts/distill-demo.sh context  context distillation: the model with a system instruction
#                                    (talk like a pirate) teaches the model without it, on the
#                                    teacher's own greedy answers to examples/data/prompts.txt
#                                    (committed in examples/data/pirate-answers.jsonl, else
#                                    generated and cached in ~/.cache/pupil); the held-out KL
#                                    to the instructed teacher before and after.
#
# Extra arguments go to `pupil distill`. Work files go to $PUPIL_DEMO_DIR (default a temporary
# directory). Measured (lavapipe, 2 cores): prune 1459 s of training; see the [distill] notes.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: scripts/distill-demo.sh prune|context [pupil distill options]}
shift
model=$(scripts/fetch-model.sh smollm2)
# PUPIL_BIN: a pupil binary already built (default: build the release one).
pupil=${PUPIL_BIN:-target/release/pupil}
[ -n "${PUPIL_BIN:-}" ] || cargo build --release --bin pupil
work=${PUPIL_DEMO_DIR:-$(mktemp -d)}
mkdir -p "$work"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

case "$what" in
prune)
  data=examples/data/declaration_of_independence.txt
  "$pupil" prune -m "$model" --drop 10 --data "$data" --tokens 1024 -o "$work/smollm2-20-layers.gguf"
  exec "$pupil" distill -m "$work/smollm2-20-layers.gguf" --teacher "$model" --context 256 --data "$data" \
    --steps 30 --seq 128 --batch 2 --rank 16 --alpha 32 --lr 2e-3 --warmup 3 --eval 0.15 --seed 1 \
    --tau 1 --kd-alpha 0.5 "$@"
  ;;
context)
  instruction="You are a pirate. Always talk like a pirate."
  # The teacher's answers: committed (examples/data/pirate-answers.jsonl, made by the loop below
  # from examples/data/prompts.txt, whose sha256 prefix pirate-answers.jsonl.sha holds) or, when the
  # prompts changed, generated again into the cache (~27 s a prompt on lavapipe).
  prompts_sha=$(sha256sum examples/data/prompts.txt | cut -c1-12)
  answers="${XDG_CACHE_HOME:-$HOME/.cache}/pupil/pirate-answers-$prompts_sha.jsonl"
  committed=examples/data/pirate-answers.jsonl
  if [ -s "$committed" ] && [ "$(head -c 200 "$committed.sha" 2>/dev/null)" = "$prompts_sha" ]; then
    answers=$committed
  fi
  if [ ! -s "$answers" ]; then
    echo "generating the instructed teacher's answers into $answers ..." >&2
    tmp="$answers.partial"
    : > "$tmp"
    while IFS= read -r prompt; do
      [ -z "$prompt" ] && continue
      answer=$("$pupil" generate -m "$model" --context 256 --system "$instruction" --temperature 0 -n 40 -p "$prompt" 2>/dev/null)
      python3 -c 'import json,sys; print(json.dumps({"messages": [{"role": "user", "content": sys.argv[1]}, {"role": "assistant", "content": sys.argv[2].strip()}]}))' \
        "$prompt" "$answer" >> "$tmp"
    done < examples/data/prompts.txt
    mv "$tmp" "$answers"
  fi
  exec "$pupil" distill -m "$model" --instruction "$instruction" --context 256 --data "$answers" \
    --steps 20 --seq 96 --batch 4 --rank 16 --alpha 32 --lr 2e-3 --warmup 2 --eval 0.2 --seed 1 \
    --tau 1 --kd-alpha 0 "$@"
  ;;
*)
  echo "unknown demonstration $what (prune or context)" >&2
  exit 2
  ;;
esac
