#!/usr/bin/env bash
# Build the WASM library and its JS bindings into target/web/pkg (what the pages import).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PUPIL_WASM_PROFILE:-release}
flag=$([ "$profile" = release ] && echo --release || echo "")
cargo build --target wasm32-unknown-unknown --lib --no-default-features --features web $flag
target_dir=${CARGO_TARGET_DIR:-target}
wasm-bindgen --target web --out-dir target/web/pkg --out-name pupil "$target_dir/wasm32-unknown-unknown/$profile/pupil.wasm"
ls -l target/web/pkg/pupil_bg.wasm
