#!/usr/bin/env bash
# Pupil's main command (for now): build the native CLI, show the GPU Pupil will use and
# check every kernel on it. Later milestones turn this into the chat / the demo page.
# Extra arguments go to `pupil selftest` (e.g. --verbose, --family rope, --no-f16).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
bash scripts/setup.sh --native
cargo build --release --bin pupil
./target/release/pupil selftest "$@"
