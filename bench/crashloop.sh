#!/usr/bin/env bash
# Builds the release host and makes sure the bench venv has
# prometheus_client (PyPI; the venv is created if missing), then runs
# bench/crashloop.py with the venv's Python: a shared test-kit guest that
# panics on every connection, stormed with 1,000 connection attempts per
# second for 10 s, next to an echo plugin probed with paced 64 B round
# trips (and the same probe without the storm first); counts instance
# creations from /metrics, `a shared instance faulted` lines, twill's CPU.
# Writes bench/results/crashloop.md. Loopback only; about 30 s.
#   bench/crashloop.sh                          # 10 s storm at 1,000 / s
#   bench/crashloop.sh --duration 2             # a short run
#   bench/crashloop.sh --duration 2 --no-metrics   # a host without `[host] metrics`
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
VENV=${TWILL_BENCH_VENV:-/var/tmp/twill-bench-venv}
cargo build --release --quiet -p twill
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet prometheus_client ||
    echo "crashloop.sh: could not install prometheus_client; the metrics will be reported unavailable" >&2
fi
# 10,000 storm sockets over the run, a few hundred open at once at most.
ulimit -n "$(ulimit -Hn)"
exec "$VENV/bin/python" bench/crashloop.py "$@"
