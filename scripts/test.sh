#!/usr/bin/env bash
# Every test: kernels against the CPU reference, fixture models against transformers on
# the GPU (natively through Vulkan; lavapipe where there is no GPU) and on the CPU
# reference, malformed input, the CLI, then the npm package in headless Chromium.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

# The real models (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M) for
# tests/real_model.rs and tests/real_gemma3.rs.
scripts/fetch-models.sh smollm2 gemma3 >/dev/null

echo "== native: cargo test --release" >&2
cargo test --release

echo "== browser: build pkg/ and run it in headless Chromium" >&2
scripts/build-wasm.sh
# Every fixture also as a packed web model, so the browser runs each family from a manifest.
for ref in tests/fixtures/*/reference.json; do
  d=$(dirname "$ref")
  m=$d; [ -f "$d/model.gguf" ] && m=$d/model.gguf
  [ -f "$d/config.json" ] || [ -f "$d/model.gguf" ] || continue
  target/release/webmoe pack --model "$m" --out "target/packed/fixtures/$(basename "$d")" --shard-mb 1 >/dev/null
done
node tests/browser/run.mjs
# The chat page and the package's storage, API and worker engine on the packed real model.
target/release/webmoe pack --model "$(scripts/fetch-models.sh)" --out target/packed/smollm2 >&2
node tests/browser/chat.mjs
# Failing parts: device loss mid-reply, storage quota, two tabs at once, OPFS.
node tests/browser/resilience.mjs
# Experts on demand: the synthetic Mixtral-shaped model (95 MiB), an expert per file,
# loaded lazily, filled in the background, reloaded from storage.
target/release/webmoe pack --model "$(scripts/synthetic.sh)" --out target/packed/synthetic-moe --expert-files >&2
target/release/webmoe pack --model tests/fixtures/learned-moe --out target/packed/learned-moe-experts --expert-files >&2
node tests/browser/lazy.mjs
# The real Gemma 3 (262k vocabulary, K-quants and Q5_0) from a packed manifest.
target/release/webmoe pack --model "$(scripts/fetch-models.sh gemma3)" --out target/packed/gemma3 >&2
node tests/browser/real.mjs
echo "== all tests passed" >&2
