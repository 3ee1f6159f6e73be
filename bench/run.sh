#!/usr/bin/env bash
# Builds everything the benchmark needs (release host, loadgen, native echo,
# the floor server, a venv with Twisted) and runs bench/run.py. Loopback
# only; about 7 minutes.
#   bench/run.sh                 # 3 rounds, 4 s per scenario
#   bench/run.sh --rounds 1 --duration 2
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
VENV=${TWILL_BENCH_VENV:-/var/tmp/twill-bench-venv}
cargo build --release --quiet -p twill -p twill-bench
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import twisted' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet twisted
fi
ulimit -n "$(ulimit -Hn)"   # 10,000 idle connections need as many descriptors
exec python3 bench/run.py --venv-python "$VENV/bin/python" "$@"
