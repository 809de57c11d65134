"""The node's metrics: names and labels (only `node`, and `role`/`op` from fixed sets), the
chunks-below-R gauge appearing once a repair pass finished, the latency observers, and the
metrics HTTP endpoint (/metrics, /healthz, /readyz) in its own thread."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cargohold.digests import chunk_id_of
from cargohold.errors import AddressInUse
from cargohold_cli.devcluster import free_port
from node.chunkstore import LmdbChunkStore, StoreUsage
from node.disk import DiskSpace
from node.gc import GcStats
from node.metadata.raft import RaftStatus
from node.metrics import RAFT_ROLES, PackCounts, node_metrics
from node.metrics_http import MetricsServer
from node.repair import RepairStats
from node.retention import RetentionStats
from node.scrub import ScrubStats

DISK_GAUGES = (
    "cargohold_node_disk_capacity_bytes",
    "cargohold_node_disk_used_bytes",
    "cargohold_node_disk_free_bytes",
    "cargohold_node_disk_reserve_bytes",
    "cargohold_node_disk_full",
)


class FakeRaft:
    command_observer: Any = None
    snapshots_rejected = 2

    def status(self) -> RaftStatus:
        return RaftStatus(
            "a:1", "b:1", False, 7, 120, 117, 3, ["a:1", "b:1", "c:1"], True, "follower"
        )


class FakeStore:
    commit_observer: Any = None

    def usage(self) -> StoreUsage:
        return StoreUsage(count=5, bytes=5000, quarantined=1, map_size=1 << 30, map_used=1 << 20)


@dataclass
class FakeRole:
    stats: Any


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_node_metrics_names_labels_and_values(tmp_path: Path) -> None:
    space = DiskSpace(str(tmp_path), 0.05, 1 << 30, headroom=1 << 20)
    repair, scrub = FakeRole(RepairStats()), FakeRole(ScrubStats(passes=2, chunks_scrubbed=9))
    raft, store = FakeRaft(), FakeStore()
    gc = FakeRole(GcStats(passes=3, reclaimed_bytes_total=4096))
    retention = FakeRole(RetentionStats(passes=1, tags_deleted_total=5, skipped_changed=1))
    packs = PackCounts()
    packs.record("Metadata/Commands", 5)
    packs.record("Metadata/Commands", 3)
    with node_metrics("n7", raft, store, space, repair, scrub, gc, retention, packs):
        raft.command_observer("manifest_put", 0.003)
        store.commit_observer(0.0004)
        got = scrape()
        ours = {k: v for k, v in got.items() if k.startswith("cargohold_node_")}
        for name, series in ours.items():
            for labels, _ in series:
                assert labels.get("node") == "n7", name
                assert set(labels) <= {"node", "role", "op", "le", "method"}, (name, labels)
        roles = {lbl["role"]: v for lbl, v in ours["cargohold_node_raft_role"]}
        assert set(roles) == set(RAFT_ROLES) and roles["follower"] == 1 and roles["leader"] == 0
        assert ours["cargohold_node_raft_term"][0][1] == 7
        assert ours["cargohold_node_raft_apply_lag"][0][1] == 3
        assert ours["cargohold_node_raft_snapshots_rejected_total"][0][1] == 2
        assert ours["cargohold_node_chunks"][0][1] == 5
        assert ours["cargohold_node_lmdb_map_used_bytes"][0][1] == 1 << 20
        assert ours["cargohold_node_scrub_chunks_total"][0][1] == 9
        assert ours["cargohold_node_gc_passes_total"][0][1] == 3
        assert ours["cargohold_node_gc_reclaimed_bytes_total"][0][1] == 4096
        assert ours["cargohold_node_retention_tags_deleted_total"][0][1] == 5
        assert ours["cargohold_node_retention_skipped_changed"][0][1] == 1
        for name in DISK_GAUGES:
            assert name in ours, name
        assert ours["cargohold_node_disk_capacity_bytes"][0][1] > 0
        command = dict(
            (lbl["op"], v) for lbl, v in ours["cargohold_node_raft_command_seconds_count"]
        )
        assert command == {"manifest_put": 1}
        assert ours["cargohold_node_chunk_commit_seconds_count"][0][1] == 1
        # Packed calls by method, and the requests they carried (every method, from 0).
        calls = {lbl["method"]: v for lbl, v in ours["cargohold_node_packed_calls_total"]}
        carried = {lbl["method"]: v for lbl, v in ours["cargohold_node_packed_requests_total"]}
        assert calls == {"Chunks/PutMany": 0, "Metadata/Commands": 2}
        assert carried == {"Chunks/PutMany": 0, "Metadata/Commands": 8}
        # Before any finished repair pass there is no chunks-below-R figure (not a false 0).
        assert "cargohold_node_repair_chunks_below_replicas" not in ours
        repair.stats.last_below_replicas = 4
        below = scrape()["cargohold_node_repair_chunks_below_replicas"]
        assert below == [({"node": "n7"}, 4.0)]
    # Unregistered with the node: a later node in this process registers again.
    assert "cargohold_node_chunks" not in scrape()
    assert raft.command_observer is None and store.commit_observer is None


def test_lmdb_usage_and_commit_latency(tmp_path: Path) -> None:
    store = LmdbChunkStore(str(tmp_path / "chunks"), 1 << 26, 8, 1 << 20)
    seen: list[float] = []
    store.commit_observer = seen.append
    try:
        data = b"x" * 10000
        asyncio.run(store.put(chunk_id_of(data), data))
        usage = store.usage()
    finally:
        store.close()
    assert usage.count == 1 and usage.bytes == 10000
    assert usage.map_size == 1 << 26 and 10000 < usage.map_used < usage.map_size
    assert len(seen) == 1 and seen[0] > 0


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_metrics_http_endpoint() -> None:
    ready = {"value": True}
    address = f"127.0.0.1:{free_port()}"
    server = MetricsServer(address, lambda: (ready["value"], {"role": "leader"}))
    server.start()
    try:
        status, body, ctype = _get(f"http://{address}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert b"process_resident_memory_bytes" in body
        assert _get(f"http://{address}/healthz")[0] == 200
        status, body, _ = _get(f"http://{address}/readyz")
        assert status == 200 and json.loads(body) == {"status": "ready", "role": "leader"}
        ready["value"] = False
        assert _get(f"http://{address}/readyz")[0] == 503
        assert _get(f"http://{address}/anything")[0] == 404
        with pytest.raises(AddressInUse):
            MetricsServer(address, lambda: (True, {}))
    finally:
        server.stop()
