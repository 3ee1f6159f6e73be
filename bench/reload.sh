#!/usr/bin/env bash
# Builds what bench/reload.py needs (the release host and bench's
# reload-load client; the tagecho guest is committed, rebuilt by
# scripts/build-guests.sh) and runs bench/reload.py: `twill run` serving
# guests/tagecho, reloaded with SIGHUP between two variants (TAG=A, TAG=B)
# while 100 ping-pong connections and 50 connect-echo-close workers run.
# Writes bench/results/reload.md. Loopback only; about 25 s per scenario.
#   bench/reload.sh                                   # both scenarios, 20 reloads, 22 s of load each
#   bench/reload.sh --duration 5 --reloads 2 --scenarios shared
#   bench/reload.sh --metrics                         # also set [host] metrics and read it at the end
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
cargo build --release --quiet -p twill -p twill-bench --bin twill --bin reload-load
ulimit -n "$(ulimit -Hn)"
exec python3 bench/reload.py "$@"
