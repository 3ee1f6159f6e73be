#!/usr/bin/env bash
# Builds what bench/metrics.py needs (the release host and loadgen) and runs
# it: `twill run` serving guest-echo/echo.wasm with metrics off (no
# `metrics` key) and on (`[host] metrics` on a loopback port, scraped every
# second), alternated over the rounds, shared instances and an instance per
# connection, 64 B ping-pong over 100 connections; server CPU per round
# trip, and the on / off ratio against the 2% budget. Writes
# bench/results/metrics.md. Loopback only; about 3 minutes with the defaults.
#   bench/metrics.sh                                  # 5 rounds, 5 s per configuration
#   bench/metrics.sh --rounds 1 --duration 2 --scenarios shared
#   bench/metrics.sh --baseline-bin /var/tmp/twill-before   # also an earlier build, as "before"
# (--no-metrics-key runs "on" without the key: for a binary that lacks it)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
# Separately, as bench/tls.sh does: the host alone, so its dependencies are
# built with the features a plain `cargo build -p twill` gives them.
cargo build --release --quiet -p twill-bench --bin loadgen
cargo build --release --quiet -p twill
ulimit -n "$(ulimit -Hn)"
exec python3 bench/metrics.py "$@"
