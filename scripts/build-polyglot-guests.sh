#!/usr/bin/env bash
# Builds the Python and JavaScript guests (echo, clock, port forwarder,
# STARTTLS) into WebAssembly components, validates them, and prints their
# sizes and worlds. The components (12-18 MB each) are build output, not
# committed.
#
#   scripts/build-polyglot-guests.sh                 # both
#   scripts/build-polyglot-guests.sh python          # or: js
#
# Output: $TWILL_POLYGLOT_OUT (default $CARGO_TARGET_DIR/polyglot, i.e.
# /var/tmp/twill-target/polyglot): python-echo.wasm, js-echo.wasm, the
# reactor-time guests python-clock.wasm, js-clock.wasm, the port forwarders
# python-forward.wasm, js-forward.wasm, and the STARTTLS line protocols
# python-starttls.wasm, js-starttls.wasm (guests/starttls's protocol, both
# halves). js-forward is built against its own world (guests/js-forward/wit:
# Twill's `peer` plus wasi:cli/environment, which it reads its configuration
# from: StarlingMonkey has no process.env); the others against `peer`.
#
# Tools, installed on first use (only from PyPI and npm):
# - componentize-py $COMPONENTIZE_PY_VERSION, in a venv at $TWILL_POLYGLOT_VENV
#   (default /var/tmp/twill-venv);
# - @bytecodealliance/componentize-js 0.23.0 (and @bytecodealliance/preview2-shim,
#   which it imports but does not declare), pinned by guest-sdk/js/package-lock.json,
#   with `npm ci` in guest-sdk/js (node_modules/ is ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${TWILL_POLYGLOT_OUT:-${CARGO_TARGET_DIR:-/var/tmp/twill-target}/polyglot}
VENV=${TWILL_POLYGLOT_VENV:-/var/tmp/twill-venv}
COMPONENTIZE_PY_VERSION=0.25.1
WASM_TOOLS=$(command -v wasm-tools || echo "$HOME/.cargo/bin/wasm-tools")
WHICH=${1:-all}
mkdir -p "$OUT"

step() { printf '== %s\n' "$*"; }

python_tool() {
  if "$VENV/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    return
  fi
  step "installing componentize-py $COMPONENTIZE_PY_VERSION into $VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
}

js_tool() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    step "installing node and npm (Debian)"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  # node_modules matches package-lock.json when the lock's hash is stamped
  # there by a finished `npm ci`.
  local lock stamp=guest-sdk/js/node_modules/.twill-lock-sha256
  lock=$(sha256sum guest-sdk/js/package-lock.json | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$lock" ]]; then
    step "installing ComponentizeJS (npm ci in guest-sdk/js, pinned by package-lock.json)"
    (cd guest-sdk/js && npm ci --silent --no-audit --no-fund)
    echo "$lock" >"$stamp"
  fi
}

report() {
  local wasm=$1
  local size
  size=$(stat -c %s "$wasm")
  if [[ -x $WASM_TOOLS ]]; then
    "$WASM_TOOLS" validate --features all "$wasm"
    printf '== %s: %s bytes (%s MiB), valid component; world:\n' "$wasm" "$size" "$(awk "BEGIN{printf \"%.1f\", $size/1048576}")"
    "$WASM_TOOLS" component wit "$wasm" | grep -E '^\s*(import|export) (twill|wasi:sockets|wasi:cli/std)' | sed 's/^/   /'
  else
    printf '== %s: %s bytes (install wasm-tools to validate it)\n' "$wasm" "$size"
  fi
}

# What twill-componentize does after componentize-py: the fix for
# componentize-py's write leak (guest-sdk/python/twill/_leakfix.py).
leak_fix() {
  PYTHONPATH=guest-sdk/python "$VENV/bin/python" -m twill.componentize --fix-only "$1"
}

build_python() {
  python_tool
  step "componentize-py: guests/python-echo/echo.py -> $OUT/python-echo.wasm"
  local t0=$SECONDS
  # -p: the SDK and the guest are the Python path; `echo` is the app module.
  "$VENV/bin/componentize-py" -d wit -w peer componentize \
    -p guest-sdk/python -p guests/python-echo echo -o "$OUT/python-echo.wasm" >/dev/null
  echo "   built in $((SECONDS - t0)) s"
  leak_fix "$OUT/python-echo.wasm"
  report "$OUT/python-echo.wasm"
  step "componentize-py: guests/python-clock/clock.py -> $OUT/python-clock.wasm"
  "$VENV/bin/componentize-py" -d wit -w peer componentize \
    -p guest-sdk/python -p guests/python-clock clock -o "$OUT/python-clock.wasm" >/dev/null
  leak_fix "$OUT/python-clock.wasm"
  report "$OUT/python-clock.wasm"
  step "componentize-py: guests/python-forward/forward.py -> $OUT/python-forward.wasm"
  "$VENV/bin/componentize-py" -d wit -w peer componentize \
    -p guest-sdk/python -p guests/python-forward forward -o "$OUT/python-forward.wasm" >/dev/null
  leak_fix "$OUT/python-forward.wasm"
  report "$OUT/python-forward.wasm"
  step "componentize-py: guests/python-starttls/starttls.py -> $OUT/python-starttls.wasm"
  "$VENV/bin/componentize-py" -d wit -w peer componentize \
    -p guest-sdk/python -p guests/python-starttls starttls -o "$OUT/python-starttls.wasm" >/dev/null
  leak_fix "$OUT/python-starttls.wasm"
  report "$OUT/python-starttls.wasm"
}

build_js() {
  js_tool
  step "componentize-js: guests/js-echo/echo.js -> $OUT/js-echo.wasm"
  node guest-sdk/js/build.mjs guests/js-echo/echo.js -o "$OUT/js-echo.wasm" | sed 's/^/   /'
  report "$OUT/js-echo.wasm"
  step "componentize-js: guests/js-clock/clock.js -> $OUT/js-clock.wasm"
  node guest-sdk/js/build.mjs guests/js-clock/clock.js -o "$OUT/js-clock.wasm" | sed 's/^/   /'
  report "$OUT/js-clock.wasm"
  step "componentize-js: guests/js-forward/forward.js -> $OUT/js-forward.wasm"
  node guest-sdk/js/build.mjs guests/js-forward/forward.js --wit guests/js-forward/wit --world forward \
    -o "$OUT/js-forward.wasm" | sed 's/^/   /'
  report "$OUT/js-forward.wasm"
  step "componentize-js: guests/js-starttls/starttls.js -> $OUT/js-starttls.wasm"
  node guest-sdk/js/build.mjs guests/js-starttls/starttls.js -o "$OUT/js-starttls.wasm" | sed 's/^/   /'
  report "$OUT/js-starttls.wasm"
}

case $WHICH in
  all) build_python; build_js ;;
  python) build_python ;;
  js) build_js ;;
  *) echo "usage: $0 [all|python|js]" >&2; exit 2 ;;
esac
