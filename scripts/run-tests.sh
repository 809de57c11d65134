#!/usr/bin/env bash
# Run the pytest suite in phases, fastest first, each bounded in time:
#   unit     everything not marked cluster, clients or docker
#   cluster  real node/gateway processes (marker cluster), without docker
#   clients  real clients and containers (markers clients or docker)
# pytest's exit code 5 (nothing selected) counts as success for a phase. Every phase runs
# even when an earlier one failed; the script fails if any did, and ends with one total
# line over all phases.
# IMAGES_CMD (set by `make test`): the command that builds the images the clients phase
# needs. When Docker answers and clients is among the phases it runs in the background
# from the start (debootstrap, wheels, docker build: minutes of mostly network and disk
# wait that the unit and cluster phases do not need), and the clients phase waits for it;
# its output goes to build/test-reports/images.log, and a failed build fails the run.
#   usage: PHASES="unit cluster clients" scripts/run-tests.sh [extra pytest args]
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
PHASES="${PHASES:-unit cluster clients}"
REPORTS="$ROOT/build/test-reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"

declare -A marker=(
  [unit]="not cluster and not clients and not docker"
  [cluster]="cluster and not clients and not docker"
  [clients]="clients or docker"
)
# Upper bounds in seconds (a hung test must not eat CI's budget), overridable.
declare -A limit=(
  [unit]="${TEST_TIMEOUT_UNIT:-300}"
  [cluster]="${TEST_TIMEOUT_CLUSTER:-1500}"
  [clients]="${TEST_TIMEOUT_CLIENTS:-1500}"
)

failed_phases=()
images_pid=""
if [[ -n ${IMAGES_CMD:-} && " $PHASES " == *" clients "* ]]; then
  if docker info >/dev/null 2>&1; then
    echo "=== building the images in the background (log: $REPORTS/images.log)"
    images_started=$SECONDS
    bash -c "$IMAGES_CMD" >"$REPORTS/images.log" 2>&1 </dev/null &
    images_pid=$!
  else
    echo "docker engine not answering: docker tests will skip"
  fi
fi

# Before the clients phase: the background image build must have succeeded.
wait_for_images() {
  [[ -n $images_pid ]] || return 0
  echo "=== waiting for the image build"
  wait "$images_pid"
  local rc=$?
  images_pid=""
  cat "$REPORTS/images.log"
  echo "=== images: exit $rc after $((SECONDS - images_started))s"
  if ((rc != 0)); then failed_phases+=(images); fi
}

for phase in $PHASES; do
  if [[ $phase == clients ]]; then
    wait_for_images
    "$ROOT/scripts/clean-test-docker.sh"
  fi
  echo "=== pytest phase: $phase (-m \"${marker[$phase]}\", at most ${limit[$phase]}s)"
  started=$SECONDS
  timeout --signal=INT --kill-after=30 "${limit[$phase]}" \
    "$PY" -m pytest -q -ra -p no:cacheprovider --durations=5 -m "${marker[$phase]}" \
    --junitxml="$REPORTS/$phase.xml" "$@"
  rc=$?
  echo "=== phase $phase: exit $rc in $((SECONDS - started))s"
  # An interrupted compose test may leave its containers, network and volumes behind.
  if [[ $phase == clients ]]; then "$ROOT/scripts/clean-test-docker.sh"; fi
  case $rc in
    0 | 5) ;;
    124 | 130 | 137) echo "phase $phase hit its time limit" >&2; failed_phases+=("$phase") ;;
    *) failed_phases+=("$phase") ;;
  esac
done

"$PY" - "$REPORTS" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

passed = failed = skipped = 0
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    root = ET.parse(report).getroot()
    for suite in root.iter("testsuite"):
        tests = int(suite.get("tests", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skip = int(suite.get("skipped", 0))
        passed += tests - bad - skip
        failed += bad
        skipped += skip
print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
PYEOF

if ((${#failed_phases[@]})); then
  echo "failed phases: ${failed_phases[*]}" >&2
  exit 1
fi
exit 0
