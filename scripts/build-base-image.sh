#!/usr/bin/env bash
# Build the offline base image cargohold-base:bookworm (Debian bookworm minbase with
# python3, python3-venv, haproxy, ca-certificates) with debootstrap + `docker import`.
# Needs only Debian's package archive, never a container registry. Skipped when the
# image already exists (FORCE=1 rebuilds).
#   usage: scripts/build-base-image.sh [IMAGE]
set -euo pipefail

IMAGE="${1:-${BASE_IMAGE:-cargohold-base:bookworm}}"
SUITE="${SUITE:-bookworm}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${ROOT}/build/base-rootfs"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists; skipping (FORCE=1 rebuilds)"
  exit 0
fi

# The mirror apt already uses on this host (deb822 or one-line format), else Debian's CDN.
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | tr -d ' ' || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

command -v debootstrap >/dev/null || { echo "debootstrap missing: make system-deps" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

echo "debootstrap $SUITE from $mirror into $WORK"
debootstrap --variant=minbase \
  --include=python3,python3-venv,haproxy,ca-certificates \
  "$SUITE" "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 40 "$WORK/debootstrap.log" >&2
  exit 1
}

# Slim the tree: package caches and lists are useless in an image.
rm -rf "$WORK/rootfs"/var/cache/apt/archives/*.deb \
  "$WORK/rootfs"/var/lib/apt/lists/* \
  "$WORK/rootfs"/usr/share/doc/* "$WORK/rootfs"/usr/share/man/* \
  "$WORK/rootfs"/tmp/* "$WORK/rootfs"/var/log/*.log
# Inside the image apt uses the same mirror (a user with internet may add packages).
printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$WORK/rootfs/etc/apt/sources.list"

tar --numeric-owner -C "$WORK/rootfs" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
