#!/usr/bin/env bash
# Fuzz Pupil's parsers with cargo-fuzz (libFuzzer) on the nightly toolchain.
#   scripts/fuzz.sh [target] [seconds]      targets: gguf_header (default), seconds default 600
# Seeds: fuzz/corpus/<target>/ (committed small files) plus, for gguf_header, the first 64 KiB
# of the real SmolLM2 header if it is cached. Crashes land in fuzz/artifacts/<target>/; turn
# each into a regression test in tests/ (CI replays tests, it does not fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-gguf_header}
seconds=${2:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
corpus=fuzz/corpus/$target
mkdir -p "$corpus" "fuzz/artifacts/$target"
model=${PUPIL_CACHE:-$HOME/.cache/pupil}/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$target" = gguf_header ] && [ -f "$model" ] && [ ! -f "$corpus/smollm2-head" ]; then
  head -c 65536 "$model" > "$corpus/smollm2-head"
fi
cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1
