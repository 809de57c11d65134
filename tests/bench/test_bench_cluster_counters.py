"""bench.cluster_counters on a gateway's metrics text, and the harness's wait for replica
copies (`settle_writes`) against a system that reports some still in flight."""

from __future__ import annotations

from dataclasses import dataclass

from bench import cluster_counters
from bench.profiles import SMOKE
from bench.workloads.common import Context, settle_writes

METRICS = """\
# TYPE cargohold_gateway_replica_copies_in_flight gauge
cargohold_gateway_replica_copies_in_flight 3.0
# TYPE cargohold_gateway_local_chunk_reads_total counter
cargohold_gateway_local_chunk_reads_total{result="hit"} 30.0
cargohold_gateway_local_chunk_reads_total{result="miss"} 2.0
# TYPE cargohold_grpc_client_seconds histogram
cargohold_grpc_client_seconds_count{code="OK",method="Chunks/Get",target="a:1"} 1.0
cargohold_grpc_client_seconds_count{code="NOT_FOUND",method="Chunks/Get",target="b:1"} 1.0
cargohold_grpc_client_seconds_sum{code="OK",method="Chunks/Get",target="a:1"} 0.01
cargohold_grpc_client_seconds_count{code="OK",method="Metadata/Query",target="a:1"} 4.0
cargohold_grpc_client_seconds_sum{code="OK",method="Metadata/Query",target="a:1"} 0.02
cargohold_grpc_client_seconds_count{code="OK",method="Chunks/Put",target="a:1"} 9.0
"""


def test_parse_sums_copies_and_read_paths() -> None:
    copies, counts = cluster_counters.parse(METRICS)
    assert copies == 3
    assert counts == {
        "local_hit": 30,
        "local_miss": 2,
        "grpc_get": 2,  # every answer counts, NOT_FOUND included
        "grpc_get_seconds": 0.01,
        "metadata_query": 4,
        "metadata_query_seconds": 0.02,
    }  # Chunks/Put is not a read


def test_difference_keeps_what_changed() -> None:
    before = {"local_hit": 10.0, "grpc_get": 5.0, "metadata_query_seconds": 0.5}
    after = {"local_hit": 42.0, "grpc_get": 5.0, "metadata_query_seconds": 0.61234567}
    assert cluster_counters.difference(before, after) == {
        "local_hit": 32,
        "metadata_query_seconds": 0.1123,
    }


def test_an_unreachable_gateway_counts_as_nothing() -> None:
    assert cluster_counters.copies_in_flight(["127.0.0.1:1"]) == 0
    assert cluster_counters.read_counts(["127.0.0.1:1"]) == {}


@dataclass
class _Replicating:
    """A system still writing `left` copies; each look at it finds one fewer."""

    left: int
    looks: int = 0
    name: str = "replicating"
    label: str = "replicating"

    async def copies_in_flight(self) -> int:
        self.looks += 1
        self.left = max(0, self.left - 1)
        return self.left


async def test_settle_writes_waits_until_no_copy_is_in_flight() -> None:
    system = _Replicating(left=4)
    await settle_writes(Context(system, SMOKE))  # type: ignore[arg-type]
    assert system.left == 0
    assert system.looks == 4


async def test_settle_writes_gives_up_after_its_limit() -> None:
    system = _Replicating(left=10**9)
    await settle_writes(Context(system, SMOKE), limit=0.0)  # type: ignore[arg-type]
    assert system.left > 0
    assert system.looks <= 2
