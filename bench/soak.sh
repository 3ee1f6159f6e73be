#!/usr/bin/env bash
# Builds the release host, the loadgen and the Python and JavaScript echo
# components (scripts/build-polyglot-guests.sh, with componentize-py's
# write-leak fix), then runs bench/soak.py. Loopback only.
#   bench/soak.sh                                  # 10 minutes per language, 1 GiB per connection
#   bench/soak.sh --duration 60 --langs python     # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
cargo build --release --quiet -p twill -p twill-bench --bin twill --bin loadgen
if [[ ! -f $CARGO_TARGET_DIR/polyglot/python-echo.wasm || ! -f $CARGO_TARGET_DIR/polyglot/js-echo.wasm ]]; then
  scripts/build-polyglot-guests.sh
fi
exec python3 bench/soak.py "$@"
