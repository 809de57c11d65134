"""What the harness reads from a Cargohold cluster's gateways around a measurement.

Two things, from each gateway's Prometheus `/metrics` (untimed, never inside a measured
phase's clock):

- **Replica copies in flight** (`cargohold_gateway_replica_copies_in_flight`, summed over
  the gateways): copies beyond W still being written after their push was acknowledged.
  The blob workload waits for zero before it measures pulls (bench/README.md, "Pulls
  after replication settles").
- **How chunks were read** (`ReadCounts`): short-circuit reads of the co-located node's
  LMDB by result (hit, miss, corrupt, error, unavailable), gRPC `Chunks/Get` calls, and
  `Metadata/Query` calls with their total seconds (a blob GET's linearizable `blob_get`
  is one, unless the gateway's blob link cache answered). A pull cell records the
  difference over its phase, so a result says whether its bytes came from the local node.

A gateway that does not answer counts as nothing (its figures are missing, the
measurement goes on).
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

COPIES = "cargohold_gateway_replica_copies_in_flight"
LOCAL_READS = "cargohold_gateway_local_chunk_reads_total"
GRPC_SECONDS = "cargohold_grpc_client_seconds"
# gRPC methods whose calls are counted, by the key they get in ReadCounts.
_METHODS = {"Chunks/Get": "grpc_get", "Metadata/Query": "metadata_query"}

ReadCounts = dict[str, float]


def _scrape(address: str, timeout: float = 5.0) -> str:
    with contextlib.suppress(urllib.error.URLError, OSError):
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as resp:
            return str(resp.read().decode())
    return ""


def parse(text: str) -> tuple[float, ReadCounts]:
    """(copies in flight, read counts) of one gateway's metrics text."""
    copies = 0.0
    counts: ReadCounts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == COPIES:
                copies += sample.value
            elif sample.name == LOCAL_READS:
                key = f"local_{sample.labels.get('result', '')}"
                counts[key] = counts.get(key, 0.0) + sample.value
            elif sample.name in (f"{GRPC_SECONDS}_count", f"{GRPC_SECONDS}_sum"):
                method = _METHODS.get(sample.labels.get("method", ""))
                if method is None:
                    continue
                key = method if sample.name.endswith("_count") else f"{method}_seconds"
                counts[key] = counts.get(key, 0.0) + sample.value
    return copies, counts


def copies_in_flight(addresses: Iterable[str]) -> int:
    """Replica copies still being written, over every gateway."""
    return round(sum(parse(_scrape(a))[0] for a in addresses))


def read_counts(addresses: Iterable[str]) -> ReadCounts:
    """The read counters summed over every gateway."""
    total: ReadCounts = {}
    for address in addresses:
        for key, value in parse(_scrape(address))[1].items():
            total[key] = total.get(key, 0.0) + value
    return total


def difference(before: ReadCounts, after: ReadCounts) -> ReadCounts:
    """What changed between two readings (counters only grow; seconds rounded)."""
    out: ReadCounts = {}
    for key, value in after.items():
        change = value - before.get(key, 0.0)
        if change:
            out[key] = round(change, 4) if key.endswith("_seconds") else round(change)
    return out
