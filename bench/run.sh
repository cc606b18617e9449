#!/usr/bin/env bash
# The side-by-side benchmark: webmoe against llama.cpp (CPU and Vulkan, on the same
# Vulkan device as webmoe) natively, and against wllama in the same headless Chromium.
# Models: SmolLM2-135M-Instruct Q4_1 and synthetic Mixtral-shaped MoE / dense-equivalent
# GGUFs (bench/make_synthetic.py). Prints one table of ratios (bench/report.py) and leaves
# the raw JSON in target/bench/.
#   bench/run.sh [REPS]      (needs: scripts/setup.sh done, the venv with gguf for the
#                             synthetic models: python3 -m pip install gguf numpy)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${1:-3}
OUT=target/bench
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
LLAMA=$(bench/build-llama.sh)
cargo build --release --quiet
SMOL=$(scripts/fetch-models.sh)
[ -s "$OUT/models/moe.gguf" ] || python3 bench/make_synthetic.py "$OUT/models"
[ -d bench/node_modules/@wllama ] || (cd bench && npm ci --no-audit --no-fund)
scripts/build-wasm.sh >&2   # incremental; never bench a stale package

declare -A MODELS=([smollm2]=$SMOL [moe]=$OUT/models/moe.gguf [dense]=$OUT/models/dense.gguf)
for name in smollm2 moe dense; do
  m=${MODELS[$name]}
  echo "bench: $name" >&2
  "$LLAMA/cpu/bin/llama-bench" -m "$m" -p 128 -n 64 -t 2 -r "$REPS" -o json > "$OUT/llama-cpu-$name.json"
  # Recent ggml-vulkan skips CPU-type devices unless told: force the (lavapipe) device.
  GGML_VK_VISIBLE_DEVICES=0 "$LLAMA/vulkan/bin/llama-bench" -m "$m" -p 128 -n 64 -t 2 -r "$REPS" -o json > "$OUT/llama-vulkan-$name.json"
  target/release/webmoe bench --model "$m" --prompt-tokens 128 --gen-tokens 64 --reps "$REPS" --kernels --json > "$OUT/webmoe-$name.json"
done
target/release/webmoe pack --model "$SMOL" --out "$OUT/packed-smollm2" >&2
node bench/browser.mjs "$SMOL" "$OUT/packed-smollm2" "$REPS" > "$OUT/browser-smollm2.json"
python3 bench/report.py "$OUT"
