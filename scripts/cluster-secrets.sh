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
