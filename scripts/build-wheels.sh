#!/usr/bin/env bash
# Collect wheels of Cargohold and of every runtime dependency into build/wheels, so that
# deploy/Dockerfile installs with `pip --no-index` (no network inside `docker build`).
# The wheels are for the host's CPython (3.11 on Debian bookworm, like the base images).
#   usage: scripts/build-wheels.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
OUT="$ROOT/build/wheels"

ver="$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
if [[ "$ver" != 311 ]]; then
  echo "wheels must be built with CPython 3.11 (the images run 3.11), got $ver" >&2
  exit 1
fi
mkdir -p "$OUT"
# Drop an older build of the project itself; dependency wheels are reused.
rm -f "$OUT"/cargohold-*.whl
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" "$ROOT"
echo "wheels in $OUT: $(ls "$OUT" | wc -l) files"
