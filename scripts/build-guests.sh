#!/usr/bin/env bash
# Rebuilds every bundled guest component from source into its committed path,
# validates it, and prints its world.
#
#   scripts/build-guests.sh            # build with rustup's wasm32-wasip2 target
#   TWILL_GUEST_TOOLCHAIN=debian scripts/build-guests.sh   # force the fallback
#
# Standard path: `rustup target add wasm32-wasip2` + cargo. Fallback, when the
# rustup target cannot be installed: Debian's Rust (rustc-web) with build-std.
# All guests share one target dir, so std is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}/guests
# crate dir : committed output path [: needs-sockets]
# A guest marked needs-sockets uses std::net (testkit probes that the host
# denies networking). Debian's wasi-libc is the wasip1 flavour, without the
# socket functions std::net links against, so the Debian fallback cannot
# build it and keeps the committed component instead (it says so).
GUESTS=(
  "guest-echo:guest-echo/echo.wasm"
  "guests/testkit:guests/testkit/testkit.wasm:needs-sockets"
  "guests/chat:guests/chat/chat.wasm"
  "guests/minikv:guests/minikv/minikv.wasm"
  "guests/portforward:guests/portforward/portforward.wasm"
  "guests/router:guests/router/router.wasm"
  "guests/starttls:guests/starttls/starttls.wasm"
  "guests/tagecho:guests/tagecho/tagecho.wasm"
  "guests/upper:guests/upper/upper.wasm"
  "guests/rpc:guests/rpc/rpc.wasm"
)

mode=${TWILL_GUEST_TOOLCHAIN:-auto}
if [[ $mode == auto ]]; then
  if command -v rustup >/dev/null && rustup target add wasm32-wasip2 >/dev/null 2>&1; then
    mode=rustup
  else
    mode=debian
  fi
fi

# Panic locations would embed absolute paths (the SDK is a path
# dependency); remapped, no checkout path ends up in a component. Builds
# from different checkout paths can still differ in a few bytes, because
# cargo derives crate hashes (which order some code) from a path
# dependency's location. In one checkout every build is byte-identical.
CARGO_SRC=${CARGO_HOME:-$HOME/.cargo}/registry/src
REMAP="--remap-path-prefix=$ROOT=/twill --remap-path-prefix=$CARGO_SRC=/cargo"

build() {
  local dir=$1
  if [[ $mode == rustup ]]; then
    (cd "$dir" && RUSTFLAGS="$REMAP" CARGO_TARGET_DIR=$TARGET_DIR cargo build --quiet --release --target wasm32-wasip2)
  else
    if [[ ! -x /usr/bin/cargo ]] || ! dpkg -s rust-web-src >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 wasi-libc >/dev/null
    fi
    (cd "$dir" && PATH=/usr/lib/llvm-22/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
      RUSTFLAGS="-L /usr/lib/wasm32-wasi $REMAP" CARGO_TARGET_DIR=$TARGET_DIR-debian \
      /usr/bin/cargo build --quiet --release --target wasm32-wasip2 -Zbuild-std=std,panic_abort)
  fi
}

out_dir() { if [[ $mode == rustup ]]; then echo "$TARGET_DIR"; else echo "$TARGET_DIR-debian"; fi; }

echo "building guests with the $mode toolchain"
for entry in "${GUESTS[@]}"; do
  IFS=: read -r dir dest needs <<<"$entry"
  if [[ $mode == debian && $needs == needs-sockets ]]; then
    echo "== $dest: skipped (Debian's wasi-libc has no sockets for std::net; use the rustup target); keeping the committed component"
    continue
  fi
  crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1 | tr - _)
  build "$dir"
  cp "$(out_dir)/wasm32-wasip2/release/$crate.wasm" "$ROOT/$dest"
  size=$(stat -c %s "$ROOT/$dest")
  if command -v wasm-tools >/dev/null; then
    wasm-tools validate --features all "$ROOT/$dest"
    echo "== $dest ($size bytes): valid component; world:"
    wasm-tools component wit "$ROOT/$dest" | grep -E '^\s*(import|export) ' | sed 's/^/   /'
  else
    echo "== $dest ($size bytes) (install wasm-tools to validate and print its world)"
  fi
done
