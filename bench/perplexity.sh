#!/usr/bin/env bash
# Perplexity of the real models with webmoe and with llama.cpp's llama-perplexity (CPU
# build) on the same text and windows: Genesis (King James Version, public domain) as
# Debian's bible-kjv prints it. Usage: bench/perplexity.sh [CHUNKS (default 8)] [CONTEXT (512)]
# Prints both numbers, the token counts each tool saw, and llama.cpp on the same weights
# dequantized to F32 (its CPU backend rounds activations to 8 bits for quantized matmuls;
# on F32 weights it computes in f32, as webmoe and transformers do).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHUNKS=${1:-8}
CTX=${2:-512}
WORK=${PPL_DIR:-$HOME/.cache/webmoe/perplexity}
mkdir -p "$WORK"
if ! command -v bible >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q bible-kjv >&2
fi
TEXT=$WORK/genesis-kjv.txt
[ -s "$TEXT" ] || bible gen1:1-50:26 > "$TEXT"
BIN=$(LLAMA_VARIANTS=cpu LLAMA_TARGETS="llama-perplexity llama-quantize llama-tokenize" "$ROOT/bench/build-llama.sh")/cpu/bin
(cd "$ROOT" && cargo build --release --quiet)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
printf '%-28s %8s %10s %10s %10s %8s\n' model tokens webmoe llama.cpp "llama F32" "Δ"
for m in smollm2 gemma3; do
  model=$("$ROOT/scripts/fetch-models.sh" "$m")
  f32=$WORK/$m.f32.gguf
  [ -s "$f32" ] || "$BIN/llama-quantize" --allow-requantize "$model" "$f32" F32 >/dev/null 2>&1
  ours=$("$ROOT/target/release/webmoe" perplexity --model "$model" --file "$TEXT" --context "$CTX" --chunks "$CHUNKS" --json 2>/dev/null)
  theirs=$("$BIN/llama-perplexity" -m "$model" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p')
  theirs32=$("$BIN/llama-perplexity" -m "$f32" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  ntok=$("$BIN/llama-tokenize" -m "$model" -f "$TEXT" --ids --log-disable 2>/dev/null | tail -1 | tr -cd ',' | wc -c)
  python3 - "$m" "$ours" "$theirs" "$theirs32" "$((ntok + 1))" <<'PY'
import json, sys
name, ours, theirs, t32, ntok = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(), float(sys.argv[4]), int(sys.argv[5])
p, q = ours["perplexity"], float(theirs[0])
print(f"{name:28s} {ours['tokens']:>8d} {p:10.4f} {q:10.4f} {t32:10.4f} {100 * (p - q) / q:+7.2f}%   "
      f"(± {ours['plus_minus']:.4f} / {float(theirs[1]):.4f}; llama.cpp tokens {ntok}; {ours['windows']} windows of {ours['context']})")
PY
done
