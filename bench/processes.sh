#!/usr/bin/env bash
# Builds the release host and the loadgen, then runs bench/processes.py in
# a network namespace of its own (unshare, as root or with user
# namespaces), so it can set net.ipv4.tcp_migrate_req per run. Writes
# bench/results/processes.md. Loopback only; about 3 minutes.
#   bench/processes.sh                       # 3 rounds, 4 s each, 3 restarts per setting
#   bench/processes.sh --rounds 1 --duration 2 --restarts 1
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
cargo build --release --quiet -p twill -p twill-bench --bin twill --bin loadgen
ulimit -n "$(ulimit -Hn)"
exec unshare -rn -- sh -c 'ip link set lo up && exec python3 bench/processes.py "$@"' sh "$@"
