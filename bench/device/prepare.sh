#!/usr/bin/env bash
# Prepares the real-GPU benchmark for a lent device machine (the `device` tool: no network,
# no Rust toolchain there). Builds here and puts everything the run needs in .device/
# (git-ignored, ~25 MiB, under the 64 MiB a call may carry):
#   .device/webmoe            the release binary
#   .device/llama.tar.xz      llama-bench with ggml's Vulkan backend, built without -march=native
#   .device/wheels/           gguf-py (bench/make_synthetic.py writes the models there)
#   .device/gl/               Debian's Vulkan loader (the device image has only the driver)
# Then, one call:  run(command="bash bench/device/run.sh", carry=[".device"], timeout_s=540)
# (bench/device/run.sh says what it measures; its $OUT holds the JSON and report.txt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
D=.device
mkdir -p "$D/wheels" "$D/gl"
cargo build --release --quiet
cp target/release/webmoe "$D/webmoe"
strip "$D/webmoe" 2>/dev/null || true
LLAMA=$(LLAMA_VARIANTS=vulkan-portable bench/build-llama.sh)
tar -C "$LLAMA/vulkan-portable/bin" -cJf "$D/llama.tar.xz" --dereference \
  llama-bench $(cd "$LLAMA/vulkan-portable/bin" && ls *.so.0 libllama-bench-impl.so 2>/dev/null)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$D/wheels" gguf
# The loader, for amd64 whatever this machine is (the device is x86-64).
(mkdir -p /tmp/amd64/partial && o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64' \
  && apt-get $o update -q >&2 && cd "$D/gl" && apt-get $o download libvulkan1 >&2)
du -sh "$D" "$D"/* >&2
