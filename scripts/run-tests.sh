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
# Rerun: in every phase (the unit phase too runs in-process Raft groups, threads and real
# sockets on a shared machine, beside the image build), tests that failed run once more,
# alone. One that passes then is reported as FLAKY by name, here and
# in the total line, and does not fail the phase; one that fails again does. More than
# TEST_RERUN_MAX failures (default 3) in a phase is not flakiness: no rerun then.
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
  [unit]="${TEST_TIMEOUT_UNIT:-600}"
  [cluster]="${TEST_TIMEOUT_CLUSTER:-1500}"
  [clients]="${TEST_TIMEOUT_CLIENTS:-1500}"
)

RERUN_MAX="${TEST_RERUN_MAX:-3}"
declare -A rerun=([unit]=1 [cluster]=1 [clients]=1)

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
  # The cache (for --last-failed) lives in the reports, one per phase.
  cache=(-p no:cacheprovider)
  [[ -n ${rerun[$phase]:-} ]] && cache=(-o "cache_dir=$REPORTS/cache-$phase")
  timeout --signal=INT --kill-after=30 "${limit[$phase]}" \
    "$PY" -m pytest -q -ra "${cache[@]}" --durations=5 -m "${marker[$phase]}" \
    --junitxml="$REPORTS/$phase.xml" "$@"
  rc=$?
  echo "=== phase $phase: exit $rc in $((SECONDS - started))s"
  if ((rc == 1)) && [[ -n ${rerun[$phase]:-} ]]; then
    failures=$("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' \
      "$REPORTS/cache-$phase/v/cache/lastfailed" 2>/dev/null || echo 0)
    if ((failures > 0 && failures <= RERUN_MAX)); then
      echo "=== rerunning the $failures failed test(s) of phase $phase once, alone"
      timeout --signal=INT --kill-after=30 "${limit[$phase]}" \
        "$PY" -m pytest -q -ra "${cache[@]}" --last-failed --last-failed-no-failures none \
        -m "${marker[$phase]}" --junitxml="$REPORTS/$phase.rerun" "$@"
      rerun_rc=$?
      echo "=== phase $phase rerun: exit $rerun_rc"
      if ((rerun_rc == 0)); then rc=0; fi
    fi
  fi
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



def cases(report: Path) -> dict[str, str]:
    """Each test case of a junit report: its outcome (passed, failed or skipped)."""
    outcome = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcome[name] = "failed" if bad else "skipped" if skipped else "passed"
    return outcome


passed = failed = skipped = 0
flaky: list[str] = []
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    outcome = cases(report)
    rerun = report.with_suffix(".rerun")
    if rerun.exists():
        for name, second in cases(rerun).items():
            if outcome.get(name) == "failed" and second == "passed":
                outcome[name] = "passed"
                flaky.append(name)
    values = list(outcome.values())
    passed += values.count("passed")
    failed += values.count("failed")
    skipped += values.count("skipped")
for name in flaky:
    print(f"FLAKY (failed, then passed when run again alone): {name}")
print(f"total: {passed} passed, {failed} failed, {skipped} skipped, {len(flaky)} flaky")
PYEOF

if ((${#failed_phases[@]})); then
  echo "failed phases: ${failed_phases[*]}" >&2
  exit 1
fi
exit 0
