#!/usr/bin/env bash
# Fuzzes one parser with cargo-fuzz (libFuzzer; needs the nightly toolchain):
#   scripts/fuzz.sh TARGET [seconds]        (default 600 seconds)
# TARGET: gguf, safetensors, manifest, tokenizer_json, chat_template, hf_json (what each
# feeds its input to is in src/fuzz.rs). The corpus starts from the seeds that
# tests/fuzz_corpus.rs replays (the fixtures, packed manifests, real tokenizers and chat
# templates). Memory is capped, so an allocation sized by an unchecked number fails the
# run. A crash is left in fuzz/artifacts/TARGET/; once fixed, copy it into
# fuzz/regressions/TARGET/, where the test suite replays it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${1:?usage: scripts/fuzz.sh TARGET [seconds]}
SECS=${2:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
(cd "$ROOT" && WEBMOE_FUZZ_SEEDS="$ROOT/fuzz/corpus" cargo test --release --test fuzz_corpus -q >&2)
mkdir -p "$ROOT/fuzz/corpus/$TARGET"
cd "$ROOT/fuzz"
exec cargo +nightly fuzz run "$TARGET" "corpus/$TARGET" -- -max_total_time="$SECS" \
  -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=300000 -print_final_stats=1
