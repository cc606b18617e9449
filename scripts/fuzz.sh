#!/usr/bin/env bash
# Fuzzes the model file readers with cargo-fuzz (libFuzzer; needs a nightly toolchain):
#   scripts/fuzz.sh [gguf|safetensors] [seconds]   (defaults: gguf, 600)
# Seeds the corpus with the fixtures; memory is capped so an allocation sized by an
# unchecked number from the file shows up as a failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${1:-gguf}
SECS=${2:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p "$ROOT/fuzz/corpus/$TARGET"
case $TARGET in
  gguf)
    for f in "$ROOT"/tests/fixtures/gguf-*/model.gguf; do cp "$f" "$ROOT/fuzz/corpus/gguf/$(basename "$(dirname "$f")").gguf"; done
    cp "$ROOT"/tests/fixtures/tokenizers/spm-llama.gguf "$ROOT/fuzz/corpus/gguf/" ;;
  safetensors) cp "$ROOT"/tests/fixtures/mixtral-e8-top2-gqa2-bf16-sharded/model-0000[12]-*.safetensors "$ROOT/fuzz/corpus/safetensors/" ;;
esac
cd "$ROOT/fuzz"
exec cargo +nightly fuzz run "$TARGET" -- -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=300000
