#!/usr/bin/env bash
# Perplexity of the real models with webmoe and with llama.cpp's llama-perplexity on the same
# text and windows: Genesis (King James Version, public domain) as Debian's bible-kjv prints
# it. Usage: bench/perplexity.sh [CHUNKS (default 8)] [CONTEXT (512)]
# llama.cpp is the OpenBLAS build (bench/build-llama.sh blas) run two ways on the same file:
#  - "llama f32": --no-repack and an f32 KV cache, so that every matmul of a 512-token
#    window goes to BLAS, which widens the quantized weights to f32 and multiplies f32
#    activations, as webmoe and transformers compute (this is the number webmoe is held to);
#  - "llama default": its defaults, where the CPU backend repacks Q4_0/Q4_K/Q8_0/IQ4_NL
#    weights and multiplies them with activations rounded to 8 bits (Q8_K/Q8_0), and keeps
#    the KV cache in f16: a further approximation, which costs Gemma 3 about half a percent.
# and on the same weights dequantized to F32 by llama-quantize.
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
BIN=$(LLAMA_VARIANTS=blas LLAMA_TARGETS="llama-perplexity llama-quantize llama-tokenize" "$ROOT/bench/build-llama.sh")/blas/bin
(cd "$ROOT" && cargo build --release --quiet)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
printf '%-12s %8s %10s %10s %8s %14s %10s\n' model tokens webmoe "llama f32" "Δ" "llama default" "llama F32"
for m in smollm2 gemma3; do
  model=$("$ROOT/scripts/fetch-models.sh" "$m")
  f32=$WORK/$m.f32.gguf
  [ -s "$f32" ] || "$BIN/llama-quantize" --allow-requantize "$model" "$f32" F32 >/dev/null 2>&1
  ours=$("$ROOT/target/release/webmoe" perplexity --model "$model" --file "$TEXT" --context "$CTX" --chunks "$CHUNKS" --json 2>/dev/null)
  ppl() { "$BIN/llama-perplexity" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" "$@" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p'; }
  theirs=$(ppl -m "$model" --no-repack -ctk f32 -ctv f32)
  theirs_default=$(ppl -m "$model")
  theirs32=$(ppl -m "$f32" -ctk f32 -ctv f32)
  ntok=$("$BIN/llama-tokenize" -m "$model" -f "$TEXT" --ids --log-disable 2>/dev/null | tail -1 | tr -cd ',' | wc -c)
  python3 - "$m" "$ours" "$theirs" "$theirs_default" "$theirs32" "$((ntok + 1))" <<'PY'
import json, sys
name, ours, theirs, dflt, t32, ntok = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5].split(), int(sys.argv[6])
p, q, d = ours["perplexity"], float(theirs[0]), float(dflt[0])
print(f"{name:12s} {ours['tokens']:>8d} {p:10.4f} {q:10.4f} {100 * (p - q) / q:+7.2f}% {d:9.4f} ({100 * (p - d) / d:+.2f}%) {float(t32[0]):10.4f}   "
      f"(± {ours['plus_minus']:.4f} / {float(theirs[1]):.4f}; llama.cpp tokens {ntok}; {ours['windows']} windows of {ours['context']})")
PY
done
