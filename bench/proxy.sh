#!/usr/bin/env bash
# Builds what bench/proxy.py needs (loadgen, the native echo backend, the
# native proxy; the release host when the portforward guest is there),
# installs HAProxy if missing (apt-get; Debian, as root) and a venv with
# Twisted, and runs bench/proxy.py: proxies in front of one native echo
# server. Loopback only; about 4 minutes with every proxy.
#   bench/proxy.sh                 # 3 rounds, 4 s per scenario
#   bench/proxy.sh --rounds 1 --duration 2 --only native,haproxy,twisted
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
VENV=${TWILL_BENCH_VENV:-/var/tmp/twill-bench-venv}
# Only the binaries it runs (not floor-echo, which tracks the WIT).
cargo build --release --quiet -p twill-bench --bin loadgen --bin native-echo --bin native-proxy
# The host only when a twill proxy runs (the default, or --only naming one)
# and its guest is there.
if [[ -f guests/portforward/portforward.wasm ]] && { [[ "$*" != *--only* ]] || [[ "$*" == *twill* ]]; }; then
  cargo build --release --quiet -p twill
fi
if ! command -v haproxy >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null ||
    echo "proxy.sh: could not install haproxy; it will be skipped" >&2
fi
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import twisted' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet twisted
fi
ulimit -n "$(ulimit -Hn)"
exec python3 bench/proxy.py --venv-python "$VENV/bin/python" "$@"
