#!/usr/bin/env bash
# Makes a throwaway certificate authority and a server certificate under
# it, for trying Twill's TLS on loopback: never for production.
#
#   scripts/make-test-cert.sh [DIR]     # default: examples/tls/certs
#
# Writes DIR/test-ca.pem (the CA to trust), DIR/server.pem (the server's
# certificate, for localhost, 127.0.0.1 and ::1) and DIR/server.key (its
# key, readable by you only). The CA's key is thrown away, so nothing
# else can be signed with it. Both expire in 30 days. Keys are EC P-256,
# made by openssl; nothing is downloaded. An existing set that is still
# valid for a day is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-examples/tls/certs}
mkdir -p "$DIR"
if [[ -f $DIR/server.pem && -f $DIR/server.key && -f $DIR/test-ca.pem ]] &&
  openssl x509 -in "$DIR/server.pem" -noout -checkend 86400 >/dev/null 2>&1; then
  echo "$DIR: test certificate still valid; kept"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Twill TEST CA (not for production)" -keyout "$work/ca.key" -out "$work/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost/O=Twill TEST" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 30 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null
cp "$work/ca.pem" "$DIR/test-ca.pem"
cp "$work/server.pem" "$DIR/server.pem"
cp "$work/server.key" "$DIR/server.key"
chmod 600 "$DIR/server.key"
echo "$DIR: test CA and server certificate (localhost, 127.0.0.1, ::1) made; valid 30 days"
