#!/usr/bin/env bash
# Build the WASM library and its JS bindings into target/web/pkg (what the pages import).
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo profile: wasm-release (Cargo.toml: release, optimised for size), release or dev.
profile=${PUPIL_WASM_PROFILE:-wasm-release}
cargo build --target wasm32-unknown-unknown --lib --no-default-features --features web --profile "$profile"
target_dir=${CARGO_TARGET_DIR:-target}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
wasm-bindgen --target web --out-dir target/web/pkg --out-name pupil "$target_dir/wasm32-unknown-unknown/$dir/pupil.wasm"
ls -l target/web/pkg/pupil_bg.wasm
