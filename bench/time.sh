#!/usr/bin/env bash
# Builds what bench/time.py needs (release host, loadgen, the timeout-echo
# guest) and runs it: the cost of reactor time (idle timeouts, a guest
# Timeout reset per read, timer accuracy under load, reconnecting). Loopback
# only; about 5 minutes.
#   bench/time.sh                 # 3 rounds, 4 s per scenario
#   bench/time.sh --rounds 1 --duration 2
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
cargo build --release --quiet -p twill -p twill-bench
(cd bench/timeout-echo && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/guests cargo build --quiet --release --target wasm32-wasip2)
ulimit -n "$(ulimit -Hn)"   # 10,000 idle connections need as many descriptors
exec python3 bench/time.py "$@"
