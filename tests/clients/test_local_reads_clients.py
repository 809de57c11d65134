"""skopeo pulling through gateways that read their host's node's LMDB directly
(short-circuit local reads, gateway/cluster/local_reads.py): every blob comes back byte
for byte, and each gateway's counter shows the local path served."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster.chunkcheck import chunk_ids, has

from cargohold_cli.devcluster import LocalCluster
from clients.oci_layout import read_blobs, write_image_layout
from clients.tools import have, skopeo

CHUNK = 4 * 1024 * 1024  # the default cluster.chunk_size

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


def local_reads(cluster: LocalCluster, j: int) -> dict[str, float]:
    """Gateway j's local read counts by result (hit, miss, corrupt, error)."""
    with urllib.request.urlopen(f"http://{cluster.gateway_metrics(j)}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(
        r'^cargohold_gateway_local_chunk_reads_total\{result="(\w+)"\} (\S+)$', text, re.M
    )
    return {result: float(value) for result, value in found}


def test_skopeo_round_trip_through_both_gateways_reads_locally(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")
    # Gateways re-learn the member list often: one started before the last node joined
    # would otherwise place chunks on two nodes only for its first seconds.
    refresh = 0.2
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        local_reads=True,
        # No hedging: on a loaded machine a queued local read could be overtaken by gRPC.
        extra={"gateway": {"members_refresh_seconds": refresh, "hedge_after_seconds": 10.0}},
    )
    hosts = [url.removeprefix("http://") for url in cluster.gateway_urls]
    # Every node an active member before the push (R=3 places on all three only then).
    deadline = time.monotonic() + 60
    while sum(m.get("state") == "active" for m in cluster.members(0, timeout=10)) < 3:
        assert time.monotonic() < deadline, "the third node never became active"
        time.sleep(0.2)
    time.sleep(3 * refresh)  # one refresh of every gateway's view after that
    src = write_image_layout(tmp_path / "src", uuid.uuid4().hex)
    repo = f"clients/local-{uuid.uuid4().hex[:8]}"
    skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS,
           f"oci:{src.path}:v1", f"docker://{hosts[0]}/{repo}:v1")  # fmt: skip
    # W=2 acknowledged the push; the third copy lands in the background. Wait for it, so
    # that every gateway's local node holds every chunk (else misses are legitimate).
    ids = [c for data in src.blobs.values() for c in chunk_ids(data, CHUNK)]
    deadline = time.monotonic() + 60
    while not all(all(has(cluster, i, ids)) for i in range(2)):
        assert time.monotonic() < deadline, "the third copies never landed"
        time.sleep(0.2)
    for j, host in enumerate(hosts):
        before = local_reads(cluster, j)
        out = tmp_path / f"out-{j}"
        skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS,
               f"docker://{host}/{repo}:v1", f"oci:{out}:v1")  # fmt: skip
        pulled = read_blobs(out)
        for digest, data in src.blobs.items():
            assert pulled[digest] == data, f"blob {digest} changed through gateway {j + 1}"
        # R=3 on 3 nodes: every chunk is on each gateway's local node, so no misses.
        after = local_reads(cluster, j)
        assert after.get("hit", 0) > before.get("hit", 0), (j + 1, before, after)
        assert after.get("miss", 0) == before.get("miss", 0), (j + 1, before, after)
        assert after.get("corrupt", 0) == before.get("corrupt", 0), (j + 1, before, after)
