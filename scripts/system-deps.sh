#!/usr/bin/env bash
# Install the Debian packages the build and the real-client tests need, only when missing:
#   skopeo          real-client tests (copy, inspect, list-tags, delete)
#   docker-registry CNCF Distribution, the benchmark reference (never left running)
#   debootstrap     the offline base image (scripts/build-base-image.sh)
#   busybox-static  the offline test images (tests/clients/images.py)
#   haproxy         the load balancer of cluster-compose.yml and of local tests
#   prometheus      the real-Prometheus tests (and promtool for deploy/prometheus-*.yml);
#                   each test runs its own instance, the distro's service never runs
#   podman          real-client tests (podman login, push, pull; no container is run)
#   chromium, chromium-driver  the web UI's real-browser test (headless, driven by selenium)
#   docker-compose  only when neither `docker compose` nor `docker-compose` exists
# Package post-install scripts must not start daemons here: Distribution would grab
# port 5000 (the gateway's), Prometheus 9090. A policy-rc.d that denies starts is put in place for the
# install, and any instance that runs anyway is stopped afterwards.
set -euo pipefail

declare -A wanted=(
  [skopeo]=skopeo
  [docker-registry]=docker-registry
  [debootstrap]=debootstrap
  [busybox-static]=busybox
  [haproxy]=haproxy
  [prometheus]=prometheus
  [podman]=podman
  [chromium]=chromium
  [chromium-driver]=chromium-driver
)
missing=()
for pkg in "${!wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
# cluster-compose.yml needs a Compose tool: Debian's docker-compose when there is none.
if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 &&
  ! command -v docker-compose >/dev/null; then
  missing+=(docker-compose)
fi

if ((${#missing[@]} == 0)); then
  echo "system deps present"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi

echo "installing: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if ((added_policy)); then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

# Refresh the package lists when they are missing or older than a day.
lists=/var/lib/apt/lists
if [[ -z $(find "$lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n1) ]]; then
  $SUDO apt-get update -qq
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null

# Never leave the distro's registry, haproxy or Prometheus running (port 5000 belongs to
# the gateway; tests start their own Prometheus on a free port).
for svc in docker-registry haproxy prometheus; do
  if [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null; then
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  fi
done
echo "system deps installed"
