#!/usr/bin/env bash
# Certificates for the compose cluster's mutual TLS (cluster-compose.tls.yml), made on the
# host with `cargohold admin certs` into DIR (default deploy/secrets/tls, git-ignored):
#
#   DIR/ca/                  the cluster CA (ca-key.pem) and every issued file; 0700,
#                            owned by you, never mounted into a container
#   DIR/node1..3/            ca.pem, cert.pem, key.pem of one node: role node, SAN IP
#                            <NET>.1N (the address gateways and peers dial) and DNS nodeN
#   DIR/gateway/             the gateways' certificate (role gateway)
#   DIR/admin/               an admin certificate (role admin), mounted into the nodes at
#                            /etc/cargohold/admin-tls for `cargohold admin` run there
#
# The per-container directories are 0700 with 0600 files, owned by the image's
# `cargohold` user (uid looked up in IMAGE, or CARGOHOLD_UID/CARGOHOLD_GID), so that user
# and nobody else in the container can read them. The CA is kept; the certificates are
# issued again when NET changed (node addresses are in them).
#
#   usage: scripts/cluster-certs.sh [DIR [NET [IMAGE]]]
#          NET: first three octets of the cluster /24 (default $CARGOHOLD_NET or 172.29.42)
#          IMAGE: default $CARGOHOLD_IMAGE or cargohold:latest
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$ROOT/deploy/secrets/tls}"
net="${2:-${CARGOHOLD_NET:-172.29.42}}"
image="${3:-${CARGOHOLD_IMAGE:-cargohold:latest}}"
if [[ -n "${CARGOHOLD:-}" ]]; then
  cli=("$CARGOHOLD")
elif [[ -x "$ROOT/.venv/bin/cargohold" ]]; then
  cli=("$ROOT/.venv/bin/cargohold")
else
  cli=(cargohold)
fi

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"
dir="$(cd "$dir" && pwd)"
if [[ -s "$dir/ca/ca-key.pem" && -s "$dir/node1/cert.pem" && "$(cat "$dir/net" 2>/dev/null)" == "$net" ]]; then
  exit 0
fi
[[ -s "$dir/ca/ca-key.pem" ]] || "${cli[@]}" admin certs ca --dir "$dir/ca" >/dev/null

if [[ -n "${CARGOHOLD_UID:-}" ]]; then
  uid="$CARGOHOLD_UID"
  gid="${CARGOHOLD_GID:-$CARGOHOLD_UID}"
else
  uid="$(docker run --rm --entrypoint id "$image" -u cargohold)"
  gid="$(docker run --rm --entrypoint id "$image" -g cargohold)"
fi

install_one() {  # NAME ROLE [HOST...]: issue into ca/, copy into DIR/NAME for the container
  local name="$1" role="$2"
  shift 2
  local hosts=()
  for h in "$@"; do hosts+=(--host "$h"); done
  "${cli[@]}" admin certs issue --dir "$dir/ca" --role "$role" --name "$name" "${hosts[@]}" >/dev/null
  rm -rf "$dir/$name"
  mkdir -m 0700 "$dir/$name"
  install -m 0600 "$dir/ca/ca.pem" "$dir/$name/ca.pem"
  install -m 0600 "$dir/ca/$name.pem" "$dir/$name/cert.pem"
  install -m 0600 "$dir/ca/$name-key.pem" "$dir/$name/key.pem"
}
for i in 1 2 3; do
  install_one "node$i" node "$net.1$i" "node$i"
done
install_one gateway gateway
install_one admin admin

owned=("$dir/node1" "$dir/node2" "$dir/node3" "$dir/gateway" "$dir/admin")
if [[ "$(id -u)" == 0 ]]; then
  chown -R "$uid:$gid" "${owned[@]}"
else  # only root may give files away: let a root container do it
  mounts=()
  for d in "${owned[@]}"; do mounts+=(-v "$d:/tls/$(basename "$d")"); done
  docker run --rm --user 0 --entrypoint chown "${mounts[@]}" "$image" -R "$uid:$gid" /tls
fi
echo "$net" >"$dir/net"
echo "cluster-certs: CA and node1-3, gateway, admin certificates for $net.0/24 in $dir"
