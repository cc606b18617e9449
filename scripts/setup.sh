#!/usr/bin/env bash
# Installs what webmoe's tests and demo need on a fresh Debian/Ubuntu machine, skipping
# whatever is already there: a Vulkan driver (Mesa's lavapipe runs on any CPU), Chromium
# for the browser tests, and the test runner's npm packages. The Rust/wasm toolchain is
# handled by scripts/build-wasm.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=()
compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null || need+=(mesa-vulkan-drivers)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libvulkan.so.1 ] || need+=(libvulkan1)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q "${need[@]}" >&2
fi
if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
  echo "setup: npm ci in tests/browser" >&2
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund >&2)
fi
