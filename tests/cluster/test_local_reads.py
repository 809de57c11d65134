"""Short-circuit local reads with real processes: a gateway reading its host's node's LMDB.

Three nodes with R=2 (so node n1, the gateway's local node, holds about two thirds of the
chunks: hits and gRPC fallbacks both happen), 256 KiB chunks. The gateway's
`cargohold_gateway_local_chunk_reads_total` counter proves which path served, and
`cargohold_gateway_local_sendfile_bytes_total` how much left by sendfile (gateway/local_send.py,
`gateway.local_sendfile`; the tests that pull run with it on and off).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.chunkcheck import (
    chunk_ids,
    flip_stored_bytes,
    has,
    node_chunk,
    pull_blob,
    push_blob,
    quarantined,
)
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = [pytest.mark.cluster]

REPO = "local/reads"


def start(make_cluster: Callable[..., LocalCluster], sendfile: bool = True) -> LocalCluster:
    return make_cluster(
        nodes=3,
        replicas=2,
        write_quorum=2,
        chunk_size=CHUNK,
        # No hedging on this loaded test machine: a local read queued behind others for
        # 0.5 s would be overtaken by gRPC and the exact hit/miss counts would blur (the
        # hedge itself is tested in tests/gateway/test_cluster_client.py).
        extra={
            "node": dict(QUIET_ROLES),
            "gateway": {
                "hedge_after_seconds": 10.0,
                "local_sendfile": sendfile,
                # The test's client is on loopback: sendfile whatever the probe would choose.
                "local_sendfile_loopback": "on",
                "sendfile_hold_seconds": 60.0,  # no send cut short on a loaded machine
            },
        },
        local_reads=True,
    )


async def local_reads(http: aiohttp.ClientSession, cluster: LocalCluster) -> dict[str, float]:
    async with http.get(f"http://{cluster.gateway_metrics(0)}/metrics") as resp:
        text = await resp.text()
    found = re.findall(
        r'^cargohold_gateway_local_chunk_reads_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M
    )
    counts = {result: float(value) for result, value in found}
    served = re.search(r"^cargohold_gateway_local_chunk_read_bytes_total ([0-9.e+]+)$", text, re.M)
    counts["bytes"] = float(served.group(1)) if served else 0.0
    zero_copy = re.search(
        r"^cargohold_gateway_local_sendfile_bytes_total ([0-9.e+]+)$", text, re.M
    )  # fmt: skip
    counts["sendfile"] = float(zero_copy.group(1)) if zero_copy else 0.0
    return counts


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def reads_after(
    http: aiohttp.ClientSession, cluster: LocalCluster, before: dict[str, float], chunks: int
) -> dict[str, float]:
    """The counters once every chunk of a pull is counted (hit, miss or corrupt): a chunk
    sent by sendfile is counted when its send returns, which can be a moment after the
    client has the body."""
    deadline = time.monotonic() + 30
    while True:
        after = await local_reads(http, cluster)
        if sum(delta(after, before, k) for k in ("hit", "miss", "corrupt")) >= chunks:
            return after
        assert time.monotonic() < deadline, f"never counted {chunks} chunk reads: {after}"
        await asyncio.sleep(0.1)


async def push_a_mixed_blob(
    http: aiohttp.ClientSession, cluster: LocalCluster
) -> tuple[bytes, str, list[bool]]:
    """A blob whose chunks n1 holds only in part (R=2 of 3), so a pull both hits and misses.

    Right after start the gateway may place every chunk on n1: its member list can still
    lack the last node to join (re-learned each `members_refresh_seconds`), or a node that
    was slow to answer is written last for a moment. Then the next blob is tried."""
    deadline = time.monotonic() + 30
    while True:
        data = os.urandom(24 * CHUNK + 1234)
        digest = await push_blob(http, cluster.gateway_url, REPO, data)
        held = has(cluster, 0, chunk_ids(data, CHUNK))
        if 0 < sum(held) < len(held):
            return data, digest, held
        assert time.monotonic() < deadline, f"n1 held {sum(held)} of {len(held)} chunks each time"
        await asyncio.sleep(2)


@pytest.mark.parametrize("sendfile", [True, False])
async def test_pulls_are_served_from_the_local_lmdb(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, sendfile: bool
) -> None:
    cluster = start(make_cluster, sendfile)
    base = cluster.gateway_url
    data, digest, held = await push_a_mixed_blob(http, cluster)
    ids = chunk_ids(data, CHUNK)
    before = await local_reads(http, cluster)
    assert await pull_blob(http, base, REPO, digest) == data
    after = await reads_after(http, cluster, before, len(ids))
    assert delta(after, before, "hit") == sum(held)
    assert delta(after, before, "miss") == len(ids) - sum(held)
    assert delta(after, before, "corrupt") == 0
    local_bytes = sum(
        len(data[i * CHUNK : (i + 1) * CHUNK]) for i, h in enumerate(held) if h
    )  # fmt: skip
    assert delta(after, before, "bytes") == local_bytes
    assert delta(after, before, "sendfile") == (local_bytes if sendfile else 0)
    # A range inside a local chunk is served from it too, bytes exact.
    first_local = held.index(True)
    lo = first_local * CHUNK + 100
    async with http.get(
        f"{base}/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes={lo}-{lo + 999}"}
    ) as resp:
        assert resp.status == 206
        assert await resp.read() == data[lo : lo + 1000]
    # A range across local and remote chunks, in order.
    lo, hi = CHUNK // 2, len(data) - CHUNK // 3
    async with http.get(
        f"{base}/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes={lo}-{hi - 1}"}
    ) as resp:
        assert resp.status == 206
        assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(data[lo:hi]).digest()


@pytest.mark.parametrize("sendfile", [True, False])
async def test_a_corrupt_local_copy_is_refused_and_repaired(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, sendfile: bool
) -> None:
    cluster = start(make_cluster, sendfile)
    base = cluster.gateway_url
    # A blob n1 holds in part: one of its chunks there is damaged below.
    data, digest, held = await push_a_mixed_blob(http, cluster)
    ids = chunk_ids(data, CHUNK)
    index = held.index(True)
    chunk = data[index * CHUNK : (index + 1) * CHUNK]
    chunk_id = hashlib.sha256(chunk).digest()
    assert flip_stored_bytes(cluster, 0, chunk) >= 1
    before = await local_reads(http, cluster)
    # Served from the other replica, byte-exact; the damaged local copy never left.
    assert await pull_blob(http, base, REPO, digest) == data
    after = await reads_after(http, cluster, before, len(ids))
    assert delta(after, before, "corrupt") == 1
    # The local node was asked first: its own check quarantined the copy, and its
    # re-fetch restores a good one.
    assert quarantined(cluster, 0) >= 1
    deadline = time.monotonic() + 60
    while node_chunk(cluster, 0, chunk_id) != chunk:
        assert time.monotonic() < deadline, "n1 did not re-fetch a good copy"
        await asyncio.sleep(0.5)
    # Now the local path serves it again.
    before = await local_reads(http, cluster)
    assert await pull_blob(http, base, REPO, digest) == data
    after = await reads_after(http, cluster, before, len(ids))
    assert delta(after, before, "corrupt") == 0
    assert delta(after, before, "hit") == sum(has(cluster, 0, ids))


async def test_sigkill_of_the_local_node_mid_pull_never_yields_wrong_bytes(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = start(make_cluster)
    base = cluster.gateway_url
    data = os.urandom(64 * CHUNK)
    digest = await push_blob(http, base, REPO, data)
    received = bytearray()
    completed = False
    async with http.get(f"{base}/v2/{REPO}/blobs/{digest}") as resp:
        assert resp.status == 200
        try:
            received += await resp.content.readexactly(4 * CHUNK)
            cluster.kill_node(0, signal.SIGKILL)
            received += await resp.content.read()
            completed = len(received) == len(data)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            pass  # a clean failure: the body ends short, the client sees an error
    # Whatever arrived is a prefix of the blob: never a wrong byte.
    assert bytes(received) == data[: len(received)]
    # The node's committed LMDB is still readable (local hits) and the other replicas
    # serve the rest: the next pull is complete and exact.
    assert await pull_blob(http, base, REPO, digest) == data
    print(f"pull across the SIGKILL: {'completed' if completed else 'ended short, cleanly'}")
