#!/usr/bin/env bash
# The compose cluster's secrets, generated once: deploy/secrets/node.env holds a random
# cluster secret (for the node containers), deploy/secrets/gateway.env the gateway role
# credential derived from it (gateways never see the secret; cargohold/cluster_auth.py).
# The directory is 0700, the files 0600 and git-ignored; an existing secret is kept.
set -euo pipefail
dir="${1:-$(dirname "$0")/../deploy/secrets}"
mkdir -p "$dir"
chmod 0700 "$dir"
umask 077
if [[ ! -s "$dir/node.env" ]]; then
  python3 - "$dir" <<'PY'
import hashlib, hmac, os, secrets, sys
d = sys.argv[1]
secret = secrets.token_hex(32)
key = hmac.new(secret.encode(), b"cargohold grpc role gateway", hashlib.sha256).hexdigest()
for name, line in (("node.env", f"CARGOHOLD_CLUSTER_SECRET={secret}"),
                   ("gateway.env", f"CARGOHOLD_CLUSTER_CREDENTIAL=gateway:{key}")):
    path = os.path.join(d, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line + "\n")
PY
  echo "cluster-secrets: generated $dir/node.env and $dir/gateway.env"
fi

# The token signing key (ES256, P-256) every gateway signs and verifies registry tokens
# with: deploy/secrets/auth/token-key.pem, 0600, owned by the image's `cargohold` user
# (the gateways mount the directory read-only). Kept once generated.
auth="$dir/auth"
if [[ ! -s "$auth/token-key.pem" ]]; then
  image="${CARGOHOLD_IMAGE:-cargohold:latest}"
  mkdir -p "$auth"
  chmod 0700 "$auth"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$auth/token-key.pem.tmp" 2>/dev/null
  chmod 0600 "$auth/token-key.pem.tmp"
  mv "$auth/token-key.pem.tmp" "$auth/token-key.pem"
  if [[ -n "${CARGOHOLD_UID:-}" ]]; then
    uid="$CARGOHOLD_UID"
    gid="${CARGOHOLD_GID:-$CARGOHOLD_UID}"
  else
    uid="$(docker run --rm --entrypoint id "$image" -u cargohold)"
    gid="$(docker run --rm --entrypoint id "$image" -g cargohold)"
  fi
  if [[ "$(id -u)" == 0 ]]; then
    chown -R "$uid:$gid" "$auth"
  else  # only root may give files away: let a root container do it
    docker run --rm --user 0 --entrypoint chown -v "$auth:/auth" "$image" -R "$uid:$gid" /auth
  fi
  echo "cluster-secrets: generated the token signing key $auth/token-key.pem"
fi
