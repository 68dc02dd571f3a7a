#!/usr/bin/env bash
# bench/tls-certs.sh [DIR]: the TLS certificates bench/compare.sh gives both brokers, made with
# openssl if DIR (default target/bench-tls) does not have them yet: a CA and a server
# certificate for localhost and 127.0.0.1, both RSA-2048 (the common case for MQTT brokers,
# and what Mosquitto's documentation uses). Test keys: nothing here is secret.
set -euo pipefail
DIR="${1:-target/bench-tls}"
[[ -s "$DIR/server.pem" && -s "$DIR/server.key" && -s "$DIR/ca.pem" ]] && exit 0
mkdir -p "$DIR"
cd "$DIR"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=moat bench CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile ext.cnf -out server.pem 2>/dev/null
rm -f server.csr ext.cnf ca.srl
echo "bench/tls-certs.sh: made RSA-2048 test certificates in $DIR"
