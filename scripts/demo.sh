#!/usr/bin/env bash
# The demo: greedy generation natively on the default model (GPU kernels through wgpu),
# then the same engine in the browser: builds pkg/ and serves the demo page on 127.0.0.1.
# Pass --no-serve to stop after the native run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODEL=${WEBMOE_MODEL:-tests/fixtures/mixtral-e8-top2-gqa2-bf16-sharded}
scripts/setup.sh
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
echo "== native: greedy generation on $MODEL" >&2
cargo run --release --quiet -- generate --model "$MODEL" --tokens 1,17,42,99,3 --max-tokens 16 | tr '\n' ' '
echo
[ "${1:-}" = --no-serve ] && exit 0
echo "== browser: building pkg/" >&2
scripts/build-wasm.sh
exec node scripts/serve.mjs "${PORT:-8080}"
