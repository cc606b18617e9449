#!/usr/bin/env bash
# Builds the browser package: the crate for wasm32-unknown-unknown, then wasm-bindgen into
# pkg/wasm/, next to the hand-written ESM entry pkg/webmoe.js and its types.
#
# Toolchain: uses an installed wasm32 target (rustup) when there is one, tries
# `rustup target add` once, and otherwise falls back to Debian's rustc-web with the
# standard library built from source (-Zbuild-std), cached in $WEBMOE_TOOLS.
# WEBMOE_WASM_TOOLCHAIN=debian forces the fallback.
# wasm-bindgen-cli is installed at exactly the version in Cargo.lock, cached likewise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${WEBMOE_TOOLS:-$HOME/.cache/webmoe-tools}
TARGET=wasm32-unknown-unknown
PROFILE=${WEBMOE_WASM_PROFILE:-release}
cd "$ROOT"
mkdir -p "$TOOLS"

log() { echo "build-wasm: $*" >&2; }

has_wasm_std() {
  local dir
  dir=$(rustc --print target-libdir --target "$TARGET" 2>/dev/null) || return 1
  compgen -G "$dir/libstd-*.rlib" >/dev/null
}

debian_rustc_web() {
  # Debian's rustc-web ships a compiler with the wasm targets and std *sources*; its
  # packages are unpacked under $TOOLS rather than installed (they conflict with rustup).
  local dir=$TOOLS/rustc-web
  if [ ! -x "$dir/root/usr/bin/rustc" ]; then
    log "fetching Debian rustc-web into $dir"
    rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
    local ver mm llvm
    ver=$(apt-cache policy rustc-web | sed -n 's/^ *Candidate: //p')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || { log "apt has no rustc-web (run apt-get update)"; exit 1; }
    mm=$(echo "$ver" | cut -d. -f1,2)
    llvm=$(apt-cache depends "libstd-rust-web-$mm" | sed -n 's/.*Depends: \(libllvm[0-9]*\)$/\1/p' | head -1)
    local lldv=${llvm#libllvm}
    log "rustc-web $ver, $llvm"
    apt-get download "rustc-web=$ver" "libstd-rust-web-$mm=$ver" "libstd-rust-web-dev=$ver" "rust-web-src=$ver" \
      "$llvm" "lld-$lldv" "liblld-$lldv" >&2
    for f in *.deb; do dpkg -x "$f" root; done
    # rustc links wasm with `rust-lld -flavor wasm`; Debian ships the same lld as lld-NN.
    ln -sf "../lib/llvm-$lldv/bin/lld" root/usr/bin/rust-lld
    cd "$ROOT"
  fi
  R=$dir/root
  export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$(echo "$R"/usr/lib/llvm-*/lib | tr ' ' ':')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=$R/usr/bin:$(echo "$R"/usr/lib/llvm-*/bin | tr ' ' ':'):$PATH
  export RUSTC=$R/usr/bin/rustc RUSTC_BOOTSTRAP=1
}

# wasm-bindgen-cli first, with the machine's own toolchain.
BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
BINDGEN=$TOOLS/wasm-bindgen-$BINDGEN_VERSION/bin/wasm-bindgen
if [ ! -x "$BINDGEN" ]; then
  log "installing wasm-bindgen-cli $BINDGEN_VERSION (once)"
  cargo install wasm-bindgen-cli --version "=$BINDGEN_VERSION" \
    --root "$TOOLS/wasm-bindgen-$BINDGEN_VERSION" >&2
fi

BUILD_STD=()
if [ "${WEBMOE_WASM_TOOLCHAIN:-}" = debian ]; then
  log "WEBMOE_WASM_TOOLCHAIN=debian: using Debian rustc-web with -Zbuild-std"
  debian_rustc_web
  BUILD_STD=(-Zbuild-std=std,panic_abort)
elif has_wasm_std; then
  log "using the installed $TARGET target"
elif timeout 60 rustup target add "$TARGET" >&2 2>&1 && has_wasm_std; then
  log "installed $TARGET with rustup"
else
  log "no prebuilt $TARGET std; using Debian rustc-web with -Zbuild-std"
  debian_rustc_web
  BUILD_STD=(-Zbuild-std=std,panic_abort)
fi

# A cargo that accepts -Z flags: nightly if rustup has it, else this cargo with RUSTC_BOOTSTRAP.
CARGO=cargo
if [ ${#BUILD_STD[@]} -gt 0 ]; then
  nightly=$(ls -d "$HOME"/.rustup/toolchains/nightly-*/bin/cargo 2>/dev/null | head -1 || true)
  [ -n "$nightly" ] && CARGO=$nightly
fi

PROFILE_FLAG=--release
[ "$PROFILE" = release ] || PROFILE_FLAG="--profile=$PROFILE"
log "cargo build ($PROFILE)"
RUSTFLAGS="${RUSTFLAGS:-} --cfg getrandom_backend=\"wasm_js\"" \
  "$CARGO" build --lib "$PROFILE_FLAG" --target "$TARGET" --target-dir target/wasm "${BUILD_STD[@]}"

DIR=$PROFILE
[ "$PROFILE" = dev ] && DIR=debug
rm -rf pkg/wasm
"$BINDGEN" --target web --out-dir pkg/wasm --out-name webmoe "target/wasm/$TARGET/$DIR/webmoe.wasm"
log "wrote pkg/wasm/ ($(du -h pkg/wasm/webmoe_bg.wasm | cut -f1) wasm)"
