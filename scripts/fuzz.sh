#!/usr/bin/env bash
# Fuzz Pupil's parsers with cargo-fuzz (libFuzzer) on the nightly toolchain.
#   scripts/fuzz.sh [target|all] [seconds]
#     targets: gguf_header gguf_model tokenizer chat_template (src/fuzzing.rs says what each checks)
#     seconds: per target, default 600
# Seeds: `cargo run --example fuzz_seeds` writes fuzz/corpus/<target>/seed-* (the real SmolLM2
# header and template when the model is cached, synthetic models, the tokenizer's hard strings).
# The working corpus fuzz/corpus/<target>/ (not committed) starts from the committed seeds
# fuzz/seeds/<target>/ and grows in place; crashes land in fuzz/artifacts/<target>/ — copy each into
# fuzz/regressions/<target>/ with a name saying what broke, fix it, and `cargo test --test
# fuzz_corpus` replays it forever. Logs (executions, coverage) go to fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-all}
seconds=${2:-600}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
cargo run -q --example fuzz_seeds
if [ "$target" = all ]; then targets="gguf_header gguf_model tokenizer chat_template"; else targets=$target; fi
mkdir -p fuzz/logs
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  [ -d "fuzz/seeds/$t" ] && cp -n fuzz/seeds/$t/* "fuzz/corpus/$t/" 2>/dev/null || true
  # Model headers carry whole vocabularies (SmolLM2's is ~2 MB); text inputs stay small.
  case $t in gguf_header|gguf_model) max_len=4194304 ;; *) max_len=65536 ;; esac
  echo "=== fuzzing $t for ${seconds}s (log: fuzz/logs/$t.log)"
  # -timeout: an input running over 10 s counts as a hang (a crash); -rss_limit_mb: so does
  # allocating over 2 GiB.
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=$max_len -print_final_stats=1 \
    2>&1 | tee "fuzz/logs/$t.log" | grep -E "^#[0-9]+.*(pulse|DONE)|stat::|ERROR|panicked|SUMMARY" || true
  grep -q "Done [0-9]* runs" "fuzz/logs/$t.log" || { echo "fuzzing $t did not finish cleanly: see fuzz/logs/$t.log"; exit 1; }
done
# To refresh the committed seeds from a grown corpus:
#   cargo +nightly fuzz cmin <target> fuzz/corpus/<target>, then copy the small files
#   (find fuzz/corpus/<target> -size -64k) into fuzz/seeds/<target>/.
