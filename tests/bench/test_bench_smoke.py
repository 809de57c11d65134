"""The whole harness end to end, smoke-sized: real Distribution and a real 1-node Cargohold
cluster, every workload, results files written. Guards the harness against rot; the
numbers are not looked at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import report, runner
from bench.profiles import SMOKE
from bench.systems import DISTRIBUTION_BIN
from bench.workloads import ALL

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SYSTEMS = ["cargohold-r1"]
if os.access(DISTRIBUTION_BIN, os.X_OK):  # installed by `make system-deps`
    SYSTEMS.insert(0, "distribution")


async def test_smoke_run_every_workload(tmp_path: Path) -> None:
    run = await runner.run(SMOKE, SYSTEMS, list(ALL), tmp_path / "work")
    for name in SYSTEMS:
        record = run["systems"][name]
        assert "errors" not in record, record.get("errors")
        results = record["results"]
        for group in ("blob_push", "blob_pull", "manifest_reads", "tag_puts"):
            for cell, data in results[group].items():
                assert data["ops"] > 0 and data["errors"] == 0, (name, group, cell, data)
        assert all(d["verified_pull"] for d in results["blob_push"].values())
        assert results["pull_storm"]["completed"] == SMOKE.storm_clients
        assert results["push_storm"]["ops"] == SMOKE.push_storm_images
        assert results["dedup"]["ratio"] > 1.0
    assert run["systems"]["cargohold-r1"]["results"]["raft_commands"]
    ceiling = run["client_ceiling"]["manifest_reads"]
    assert all(d["ops"] > 0 for d in ceiling.values())
    paths = report.write(run, tmp_path / "out", "smoke", [])
    assert "## Targets" in paths[1].read_text()
    # The harness removed every system's data.
    assert not [p for p in (tmp_path / "work").iterdir() if p.is_dir()]


async def test_auth_variant_reads_manifests_with_tokens(tmp_path: Path) -> None:
    """`cargohold-r3-auth`: the client gets its token once per scope and every read and
    the tag puts succeed with it (a client without auth would get 401s)."""
    run = await runner.run(
        SMOKE, ["cargohold-r3-auth"], ["manifests", "tag_puts"], tmp_path / "work",
        skip_calibration=True,
    )  # fmt: skip
    record = run["systems"]["cargohold-r3-auth"]
    assert "errors" not in record, record.get("errors")
    for group in ("manifest_reads", "tag_puts"):
        for cell, data in record["results"][group].items():
            assert data["ops"] > 0 and data["errors"] == 0, (group, cell, data)
