"""The harness's Cargohold system with `gateway_workers` = 2: each worker is a process of
its own (CPU, peak RSS) next to its supervisor, and the gateway counters are read from
every worker's metrics port."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.systems import Cargohold

pytestmark = [pytest.mark.cluster]


async def test_a_two_worker_gateway_is_three_processes(tmp_path: Path) -> None:
    system = Cargohold(tmp_path, nodes=1, replicas_=1, write_quorum=1, gateway_workers=2)
    await system.start()
    try:
        names = sorted(system.processes())
        assert names == ["gateway-1", "gateway-1-w1", "gateway-1-w2", "n1"]
        assert len(system._gateway_metrics()) == 2
        assert await system.copies_in_flight() == 0
        counts = await system.read_counts()
        assert counts is not None
    finally:
        await system.stop()
