#!/usr/bin/env bash
# Builds llama.cpp's llama-bench (and with LLAMA_TARGETS other tools: llama-quantize,
# llama-perplexity), CPU and Vulkan variants, from the llama.cpp that PyPI's
# llama-cpp-python source distribution vendors (fetched with pip), into $BENCH_DIR (default
# ~/.cache/webmoe/bench). Needs cmake, a C++ compiler, and for Vulkan glslc + libvulkan-dev.
set -euo pipefail
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/webmoe/bench}
mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
log() { echo "build-llama: $*" >&2; }
if ! command -v cmake >/dev/null || ! command -v glslc >/dev/null || [ ! -e /usr/include/vulkan/vulkan.h ] || [ ! -d /usr/include/spirv ]; then
  log "installing cmake, glslc, libvulkan-dev, spirv-headers"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q cmake glslc libvulkan-dev spirv-headers >&2
fi
if [ ! -d src/vendor/llama.cpp ]; then
  log "fetching the llama-cpp-python source distribution with pip"
  rm -rf dl src && mkdir -p dl src
  # pip download of an sdist prepares its metadata with the build backend; in a venv that
  # has scikit-build-core, --no-build-isolation makes that a few seconds (no compile).
  [ -x venv-dl/bin/pip ] || python3 -m venv venv-dl
  venv-dl/bin/pip install --quiet scikit-build-core >&2
  spec=llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}
  venv-dl/bin/pip download --quiet --no-deps --no-binary :all: --no-build-isolation "$spec" -d dl >&2
  tar -xzf dl/llama_cpp_python-*.tar.gz -C src --strip-components=1
fi
LLAMA=$BENCH_DIR/src/vendor/llama.cpp
VK=$LLAMA/ggml/src/ggml-vulkan/ggml-vulkan.cpp
# Older Vulkan headers (Debian bookworm's 1.3.239) lack VK_EXT_layer_settings, which
# ggml-vulkan uses only to configure validation layers at instance creation: there, create
# the instance without that chain (speed is unaffected).
if ! grep -q VK_EXT_layer_settings /usr/include/vulkan/vulkan_core.h; then
  python3 - "$VK" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
m = re.search(r"\n(\s*)VkBool32 enable_best_practice = layer_settings;.*?"
              r"vk::InstanceCreateInfo instance_create_info\(([^;]*?), &layer_setting_info\);", s, re.S)
if m and "WEBMOE_PATCH" not in s:
    ind, args = m.group(1), m.group(2)
    repl = (f"\n#ifdef VK_EXT_layer_settings // WEBMOE_PATCH{m.group(0)}\n#else\n"
            f"{ind}vk::InstanceCreateInfo instance_create_info({args});\n#endif")
    s = s[:m.start()] + repl + s[m.end():]
    open(p, "w").write(s)
PY
fi
common=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=ON)
# Variants (LLAMA_VARIANTS, default "cpu vulkan"; also "blas"): tuned for this CPU; vulkan-portable is
# the Vulkan build without -march=native, to run on another machine (bench/device/).
for variant in ${LLAMA_VARIANTS:-cpu vulkan}; do
  case $variant in
    cpu) flags=() ;;
    # OpenBLAS for batched matmuls: quantized weights are widened to f32 and multiplied by
    # f32 activations (the CPU backend instead rounds activations to 8 bits), as webmoe and
    # transformers compute; batches under 32 rows still take the CPU backend.
    blas) flags=(-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS)
      [ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -e /usr/include/openblas/cblas.h ] || ls /usr/include/*/openblas*/cblas.h >/dev/null 2>&1 || {
        log "installing libopenblas-dev"
        SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get install -y -q libopenblas-dev >&2
      } ;;
    vulkan) flags=(-DGGML_VULKAN=ON) ;;
    vulkan-portable) flags=(-DGGML_VULKAN=ON -DGGML_NATIVE=OFF) ;;
    none) continue ;;   # only unpack the source (its convert_hf_to_gguf.py)
    *) log "unknown variant $variant"; exit 2 ;;
  esac
  # LLAMA_TARGETS: which tools (default llama-bench; the fixtures also want
  # llama-quantize and llama-perplexity).
  for target in ${LLAMA_TARGETS:-llama-bench}; do
    if [ ! -x "$BENCH_DIR/$variant/bin/$target" ]; then
      log "building $target ($variant)"
      [ -f "$BENCH_DIR/$variant/CMakeCache.txt" ] || cmake -S "$LLAMA" -B "$BENCH_DIR/$variant" "${common[@]}" "${flags[@]}" >&2
      cmake --build "$BENCH_DIR/$variant" --target "$target" -j "$(nproc)" >&2
    fi
  done
done
echo "$BENCH_DIR"
