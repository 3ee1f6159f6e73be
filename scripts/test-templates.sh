#!/usr/bin/env bash
# What a new guest author does, on a clean machine: `twill new` in each of
# Rust, Python and JavaScript, then every command the generated README
# prints (build, test, run), and a conversation with the running protocol
# over a real socket. Also packages each SDK as a user outside this
# repository gets it: `cargo package`, `pip install` into a fresh venv,
# `npm pack`.
#
#   scripts/test-templates.sh            # all
#   scripts/test-templates.sh rust       # or: python, js, packages
#
# Needs the release `twill` ($TWILL, default $CARGO_TARGET_DIR/release/twill;
# built if missing), rustup's wasm32-wasip2 target, python3 with venv, node
# and npm (scripts/build-polyglot-guests.sh installs them on Debian). The
# registries (crates.io, PyPI, npm) must be reachable for the builds; `twill
# new` itself needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
TWILL=${TWILL:-$CARGO_TARGET_DIR/release/twill}
WORK=${TWILL_TEMPLATES_WORK:-/tmp/twill-templates}
WHICH=${1:-all}

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

if [[ ! -x $TWILL ]]; then
  step "building the release twill"
  cargo build --release --quiet -p twill
fi
rm -rf "$WORK"
mkdir -p "$WORK"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# serve DIR: `twill check` and `twill run` the project's plugins.toml (moved
# to a free port), then one conversation: three lines in, the answers and a
# close out.
serve() {
  local dir=$1 port pid
  port=$(free_port)
  sed -i "s/^port = 8000\$/port = $port/" "$dir/plugins.toml"
  (cd "$dir" && "$TWILL" -q check) || fail "$dir: twill check"
  (cd "$dir" && exec "$TWILL" -q run) &
  pid=$!
  python3 - "$port" <<'PY' || { kill "$pid" 2>/dev/null; fail "$dir: the conversation"; }
import socket, sys, time
port = int(sys.argv[1])
deadline = time.time() + 120   # the first run compiles the component
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
s.settimeout(30)
s.sendall(b"hello twill\r\nPING\r\nQUIT\r\nnever\r\n")
got = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
want = b"HELLO TWILL\r\nPONG\r\nBYE\r\n"
print("   answered:", got)
sys.exit(0 if got == want else 1)
PY
  kill -TERM "$pid"
  wait "$pid" || fail "$dir: twill run did not exit cleanly on SIGTERM"
}

test_rust() {
  step "twill new rust: build, test, run"
  "$TWILL" new rust hello-rs --dir "$WORK/rust" --sdk-path "$ROOT"
  cd "$WORK/rust"
  # The host's versions, so the shared target dir's compiled wasmtime is
  # reused (a user's first `cargo test` compiles it: minutes).
  cp "$ROOT/Cargo.lock" .
  # The README's commands write to ./target; CI keeps one target dir.
  ln -s "$CARGO_TARGET_DIR" target
  cargo build --release --target wasm32-wasip2
  cargo test
  cd "$ROOT"
  serve "$WORK/rust"
}

test_python() {
  step "twill new python: build, test, run"
  "$TWILL" new python hello-py --dir "$WORK/python" --sdk-path "$ROOT"
  cd "$WORK/python"
  python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
  pip install --quiet --disable-pip-version-check -r requirements.txt
  twill-componentize app -o hello-py.wasm
  python -m unittest discover -s tests
  deactivate
  cd "$ROOT"
  serve "$WORK/python"
}

test_js() {
  step "twill new js: build, test, run"
  "$TWILL" new js hello-js --dir "$WORK/js" --sdk-path "$ROOT"
  cd "$WORK/js"
  npm install --no-audit --no-fund
  npm run build
  npm test
  cd "$ROOT"
  serve "$WORK/js"
}

test_packages() {
  step "the Rust SDK: cargo package"
  (cd guest-sdk && cargo package --allow-dirty --quiet)
  step "the Python SDK: pip install into a fresh venv, import from elsewhere"
  python3 -m venv "$WORK/pip"
  "$WORK/pip/bin/pip" install --quiet --disable-pip-version-check "$ROOT/guest-sdk/python"
  (cd / && "$WORK/pip/bin/python" -c '
import os, twill, twill.basic, twill.testing
names = sorted(os.listdir(twill.WIT_DIR))
assert names == ["protocol.wit", "reactor.wit", "transport.wit", "types.wit", "world.wit"], names
print("   twill-guest", twill.__version__, "with", names)')
  rm -rf guest-sdk/python/build guest-sdk/python/*.egg-info
  step "the JavaScript SDK: npm pack"
  (cd guest-sdk/js && npm pack --quiet --pack-destination "$WORK" >/dev/null)
  local files
  files=$(tar -tzf "$WORK"/twill-guest-*.tgz | sort | tr '\n' ' ')
  echo "   $files"
  for f in package/basic.js package/testing.js package/twill.js package/build.mjs package/wit/world.wit; do
    grep -q "$f" <<<"$files" || fail "npm pack lacks $f"
  done
}

case $WHICH in
  rust) test_rust ;;
  python) test_python ;;
  js) test_js ;;
  packages) test_packages ;;
  all) test_packages; test_rust; test_python; test_js ;;
  *) fail "usage: $0 [rust|python|js|packages]" ;;
esac
step "templates ok ($WHICH)"
