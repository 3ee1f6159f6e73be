#!/usr/bin/env bash
# The framing helpers' cost in each SDK, input delivered one byte at a time
# (the worst chunking): guest-sdk/examples/framing_bench.rs (native, release),
# guest-sdk/python/bench_basic.py (CPython; with Twisted's own
# twisted.protocols.basic as the reference when the interpreter has it) and
# guest-sdk/js/bench/basic.bench.mjs (Node). Each prints MiB/s at 1, 4 and
# 16 MiB and the 16 MiB / 4 MiB time ratio: about 4 when linear, 16 when
# quadratic. Writes bench/results/framing.md. A few minutes; CPU only, no
# sockets.
#   bench/framing.sh
#   PYTHON=/path/to/python-with-twisted bench/framing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
PYTHON=${PYTHON:-${TWILL_TEST_PYTHON:-/var/tmp/twill-test-venv/bin/python}}
[[ -x $PYTHON ]] || PYTHON=python3
OUT=bench/results/framing.md
(cd guest-sdk && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/guest-sdk-native" cargo build --release --quiet --example framing_bench)
{
  echo "# Framing helpers, one byte per call ($(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "Produced by \`bench/framing.sh\`. Rust: native release build of the SDK's receivers"
  echo "(push + next_frame). Python: $("$PYTHON" --version 2>&1). JavaScript: Node $(node --version)."
  echo
  echo "## Rust"
  echo
  "$CARGO_TARGET_DIR/guest-sdk-native/release/examples/framing_bench"
  echo
  echo "## Python (with Twisted's twisted.protocols.basic as the reference, where it finishes)"
  echo
  echo '```'
  "$PYTHON" guest-sdk/python/bench_basic.py
  echo '```'
  echo
  echo "## JavaScript"
  echo
  echo '```'
  node guest-sdk/js/bench/basic.bench.mjs
  echo '```'
} | tee "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT"
