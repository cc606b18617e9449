#!/usr/bin/env bash
# The native side-by-side benchmark on a lent GPU machine (prepared by bench/device/prepare.sh;
# runs there, in the repo root, with .device carried). Writes to $OUT:
#   webmoe-{smol,moe,dense}.json          webmoe bench, the adapter's own GEMV shape, --kernels
#   webmoe-lanes8-{smol,moe,dense}.json   the 8-lane GEMV shape (CPU devices' choice), A/B
#   llama-vulkan-{smol,moe,dense}.json    llama-bench, ggml-vulkan on the same GPU
#   report.txt                            bench/report.py's table (ratios, roofline)
# Models: bench/make_synthetic.py's moe and dense, and `smol` (SmolLM2-135M's shapes and
# quant type, random weights: the real 92 MiB file cannot travel).
set -uo pipefail
OUT=${OUT:-target/device-out}
mkdir -p "$OUT"
D=.device
REPS=${REPS:-5}
for f in "$D"/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
# The NVIDIA driver's Vulkan ICD lives outside the loader's search path on these machines.
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -e "$nv" ] && [ -z "$(ls /usr/share/vulkan/icd.d 2>/dev/null)" ] && export VK_DRIVER_FILES=$nv
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$D"/wheels/*.whl
export PYTHONPATH=/tmp/site
M=/tmp/models
python3 bench/make_synthetic.py "$M" smol moe dense >&2 || exit 1
mkdir -p /tmp/llama && tar -C /tmp/llama -xJf "$D/llama.tar.xz"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
for m in smol moe dense; do
  echo "bench: $m" >&2
  timeout 150 "$D/webmoe" bench --model "$M/$m.gguf" --prompt-tokens 128 --gen-tokens 64 --reps "$REPS" --kernels --json > "$OUT/webmoe-$m.json"
  WEBMOE_GEMV_LANES=8 timeout 100 "$D/webmoe" bench --model "$M/$m.gguf" --prompt-tokens 128 --gen-tokens 64 --reps "$REPS" --json > "$OUT/webmoe-lanes8-$m.json"
  # Device 0 explicitly: recent ggml-vulkan skips CPU-type devices unless told (lavapipe).
  GGML_VK_VISIBLE_DEVICES=0 LD_LIBRARY_PATH=/tmp/llama timeout 100 /tmp/llama/llama-bench -m "$M/$m.gguf" -p 128 -n 64 -r "$REPS" -ngl 99 -o json > "$OUT/llama-vulkan-$m.json"
done
python3 bench/report.py "$OUT" | tee "$OUT/report.txt"
