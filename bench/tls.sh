#!/usr/bin/env bash
# Builds what bench/tls.py needs (loadgen, the native TLS and plaintext echo
# servers; the release host when a twill server runs), a venv with
# Twisted's TLS (pyOpenSSL), and a throwaway certificate (openssl: an EC
# P-256 CA and a leaf it signs for localhost and 127.0.0.1, valid two days,
# in a temp dir removed at the end), and runs bench/tls.py: TLS echo servers
# (native tokio-rustls with aws-lc-rs and ring, twill, Twisted) plus the
# plaintext native and twill servers for idle memory. Loopback only; about
# 6 minutes with every server.
#   bench/tls.sh                 # 3 rounds, 4 s per scenario
#   bench/tls.sh --rounds 1 --duration 2 --only native-tls,native-tls-ring,twisted-tls,native
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
VENV=${TWILL_BENCH_VENV:-/var/tmp/twill-bench-venv}
cargo build --release --quiet -p twill-bench --bin loadgen --bin native-tls-echo --bin native-echo
# The host only when a twill server runs (the default, or --only naming one).
if [[ "$*" != *--only* ]] || [[ "$*" == *twill* ]]; then
  cargo build --release --quiet -p twill
fi
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import twisted, OpenSSL, service_identity' 2>/dev/null; then
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "twisted[tls]"
fi
CERTS=$(mktemp -d)
trap 'rm -rf "$CERTS"' EXIT
(
  cd "$CERTS"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days 2 -subj "/CN=Twill bench throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new "${ec[@]}" -keyout key.pem -out leaf.csr -subj "/CN=localhost" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
    -extfile leaf.ext -out cert.pem 2>/dev/null
)
ulimit -n "$(ulimit -Hn)"
python3 bench/tls.py --venv-python "$VENV/bin/python" \
  --cert "$CERTS/cert.pem" --key "$CERTS/key.pem" --ca "$CERTS/ca.pem" "$@"
