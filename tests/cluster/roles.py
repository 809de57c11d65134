"""Driving the nodes' background roles (node/repair.py, node/scrub.py) from a test: run a
pass now (Admin.Trigger), read their progress counters (Admin.Status), and repair until
every chunk has its copies back."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import grpc

from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import replica_counts
from protos import registry_pb2, registry_pb2_grpc


def wait_answering(cluster: LocalCluster, i: int, timeout: float = 60.0) -> None:
    """Until node i's gRPC port answers again (after a restart)."""
    cluster.wait_answering(i, timeout)


def trigger(cluster: LocalCluster, i: int, role: str = "repair") -> dict[str, Any]:
    """Run one whole pass of a role on node i and return its progress."""
    with cluster.channel(i) as channel:
        reply = registry_pb2_grpc.AdminStub(channel).Trigger(
            registry_pb2.TriggerRequest(role=role, wait=True), timeout=300
        )
    return dict(json.loads(reply.progress))


def status_extra(cluster: LocalCluster, i: int) -> dict[str, Any]:
    """Node i's `Admin.Status.extra`: role progress and store counters."""
    return dict(json.loads(cluster.node_status(i, timeout=10).extra))


def trigger_role(
    cluster: LocalCluster, i: int, role: str, wait: bool = True, timeout: float = 120.0
) -> dict[str, Any] | None:
    """Run one pass of `role` on node i now (Admin.Trigger) and return its progress
    counters; None when the node does not serve that role."""
    with cluster.channel(i) as channel:
        stub = registry_pb2_grpc.AdminStub(channel)
        try:
            reply = stub.Trigger(registry_pb2.TriggerRequest(role=role, wait=wait), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
                return None
            raise
    return dict(json.loads(reply.progress or b"{}"))


def repair_pass(cluster: LocalCluster) -> int | None:
    """One triggered repair pass on every running node; the bytes they copied, or None
    when repair is not served."""
    total = 0
    for i in cluster.running_nodes():
        wait_answering(cluster, i)
        progress = trigger_role(cluster, i, "repair")
        if progress is None:
            return None
        total += int(progress.get("repaired_bytes", 0))
    return total


def repaired_bytes_total(cluster: LocalCluster) -> int | None:
    """Bytes the running nodes' repair roles copied since each node started
    (`total_repaired_bytes` in Admin.Status); None when no node reports a repair role."""
    total, found = 0, False
    for i in cluster.running_nodes():
        wait_answering(cluster, i)
        extra = json.loads(cluster.node_status(i, timeout=10).extra or b"{}")
        repair = extra.get("repair")
        if isinstance(repair, dict):
            found = True
            total += int(repair.get("total_repaired_bytes", 0))
    return total if found else None


def wait_replicated(
    cluster: LocalCluster, chunks: dict[str, int], copies: int, timeout: float = 120.0
) -> tuple[int | None, dict[int, int]]:
    """Trigger repair passes until every chunk has `copies` healthy copies on running
    nodes. Returns (bytes repaired, histogram copies -> chunks); bytes is None and nothing
    is waited for when the nodes serve no repair role."""
    deadline = time.monotonic() + timeout
    repaired = 0
    while True:
        got = repair_pass(cluster)
        counts = replica_counts(cluster, chunks)
        histogram = dict(Counter(counts.values()))
        if got is None:
            return None, histogram
        repaired += got
        if all(n >= copies for n in counts.values()):
            return repaired, histogram
        if time.monotonic() > deadline:
            raise AssertionError(
                f"chunks still under-replicated after {timeout}s: copies->chunks {histogram}"
            )
        time.sleep(0.5)
