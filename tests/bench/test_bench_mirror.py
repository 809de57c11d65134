"""bench/mirror_pull.py end to end, smoke-sized (one round of small layers, through its
bandwidth-limited link, bench/link.py): the harness pulls directly, cold and warm through
the proxy, through the bare relay (bench/relay.py), and from Cargohold, and reports
every figure. The numbers are not looked at."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import mirror_pull

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def test_mirror_pull_bench_runs(tmp_path: Path) -> None:
    result = await mirror_pull.run(
        rounds=1, layers=2, layer_mib=1, workdir=tmp_path, link_mib_s=64.0, relay=True
    )
    assert result["link_mib_s"] == 64.0
    assert result["image_bytes"] > 2 * mirror_pull.MiB
    assert set(result["median_seconds"]) == {
        "direct",
        "cold",
        "stored",
        "warm",
        "cargohold",
        "relay",
    }
    assert result["cold_over_direct"] > 0 and result["warm_over_cargohold"] > 0
    assert result["relay_over_direct"] > 0
    assert set(result["median_cpu_s"]) == {"direct", "cold", "store", "relay"}
