#!/usr/bin/env bash
# The demo: SmolLM2-135M-Instruct (GGUF Q4_1, fetched once into ~/.cache/webmoe/models)
# answers a question natively (GPU kernels through wgpu), then the same engine runs in the
# browser: builds pkg/, packs the model into shards the page stores, and serves the chat
# page on 127.0.0.1 (the URL is printed).
# Pass --no-serve to stop after the native run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
MODEL=${WEBMOE_MODEL:-$(scripts/fetch-models.sh)}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
QUESTION=${QUESTION:-What is the capital of France?}
echo "== native: $MODEL" >&2
echo "user: $QUESTION" >&2
cargo run --release --quiet -- generate --model "$MODEL" --chat "$QUESTION" --temperature 0
[ "${1:-}" = --no-serve ] && exit 0
echo "== browser: building pkg/ and packing the model for the web" >&2
scripts/build-wasm.sh
target/release/webmoe pack --model "$MODEL" --out target/packed/smollm2 >&2
exec node scripts/serve.mjs "${PORT:-8080}"
