#!/usr/bin/env bash
# The synthetic Mixtral-shaped model (bench/make_synthetic.py: 8 layers, hidden 512,
# 8 experts top-2, Q4_0, random weights, 95 MiB) at target/bench/models/moe.gguf, made
# once; numpy and gguf come from PyPI into a venv at ~/.cache/webmoe/synth-venv. Prints
# the model's path. The benchmark and the browser's lazy-experts test use it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/bench/models}
VENV=${SYNTH_VENV:-$HOME/.cache/webmoe/synth-venv}
if [ ! -s "$OUT/moe.gguf" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import numpy, gguf" 2>/dev/null; then
    echo "synthetic model: installing numpy and gguf" >&2
    "$VENV/bin/pip" install --quiet numpy gguf >&2
  fi
  "$VENV/bin/python" "$ROOT/bench/make_synthetic.py" "$OUT" moe >&2
fi
echo "$OUT/moe.gguf"
