"""Full nodes (gateway/cluster/fullness.py) against in-process fake nodes: placement writes
around a full node, reads still use it, a push that finds fewer than W nodes with space
gets 507 naming the nodes and their free bytes, and writes go back to a node once it has
space again."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, FakeNodes, data_path, eventually

from cargohold.digests import chunk_id_of
from cargohold.errors import StorageFull
from gateway.cluster import ClusterClient
from gateway.cluster.fullness import FullNodes


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_a_mark_lasts_its_time_and_keeps_the_figures() -> None:
    clock = Clock()
    full = FullNodes(5.0, clock=clock)
    full.mark("a:1", {"node": "n1", "free_bytes": 7})
    assert full.is_full("a:1") and not full.is_full("b:2")
    assert full.split(["b:2", "a:1", "c:3"], lambda a: a) == (["b:2", "c:3"], ["a:1"])
    clock.now += 5.0
    assert not full.is_full("a:1")
    assert full.figures("a:1") == {"node": "n1", "free_bytes": 7}  # last known, kept
    full.mark("a:1")
    full.clear("a:1")
    assert not full.is_full("a:1")


@pytest.fixture
async def nodes() -> AsyncIterator[FakeNodes]:
    fake = await FakeNodes(3).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def client(nodes: FakeNodes) -> AsyncIterator[ClusterClient]:
    c = await ClusterClient.connect(nodes.config(replicas=3, write_quorum=2))
    try:
        yield c
    finally:
        await c.close()


def _chunk(size: int = 1000) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return chunk_id_of(data), data


async def test_writes_go_around_a_full_node_which_still_serves_reads(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    held_id, held = _chunk()
    await client.store_chunk(held_id, held)
    n3 = nodes.by_id("n3")
    await eventually(lambda: held_id in n3.chunks, "the third copy lands on n3")
    n3.full = True
    calls = n3.put_calls
    first_id, first = _chunk()
    await client.store_chunk(first_id, first)  # n3 refuses: W=2 on n1 and n2
    await eventually(lambda: client.view.full.is_full(n3.address), "n3's refusal is heard")
    assert n3.put_calls == calls + 1
    assert first_id not in n3.chunks
    for _ in range(5):
        cid, data = _chunk()
        await client.store_chunk(cid, data)
        assert sorted(nodes.holders(cid)) == ["n1", "n2"]
    assert n3.put_calls == calls + 1  # skipped since: one full node costs a copy, no more
    # A full node is no failed node: it still serves what it holds.
    for node in nodes.nodes[:2]:
        node.missing = True
    assert bytes(await client.read_chunk(held_id.hex(), len(held))) == held


async def test_a_refresh_learns_a_full_disk_and_space_returning(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    n2 = nodes.by_id("n2")
    n2.full = True
    await client.view.probe_disks()
    cid, data = _chunk()
    await client.store_chunk(cid, data)
    assert n2.put_calls == 0 and sorted(nodes.holders(cid)) == ["n1", "n3"]
    n2.full = False
    await client.view.probe_disks()
    cid, data = _chunk()
    await client.store_chunk(cid, data)
    await client.close()  # the copy beyond W
    assert sorted(nodes.holders(cid)) == ["n1", "n2", "n3"]


async def test_fewer_than_w_nodes_with_space_is_storage_full_naming_them(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    for i, node in enumerate(nodes.nodes[1:]):
        node.full, node.free_bytes = True, 100 + i
    cid, data = _chunk()
    with pytest.raises(StorageFull) as caught:
        await client.store_chunk(cid, data)
    err = caught.value
    assert (err.status, err.code) == (507, "DENIED")
    assert "storage is full" in err.message and "n2, n3" in err.message
    assert err.detail["write_quorum"] == 2
    assert err.detail["nodes"] == [
        {"node": "n2", "free_bytes": 100, "reserve_bytes": 4000},
        {"node": "n3", "free_bytes": 101, "reserve_bytes": 4000},
    ]
    # Space returns on n3: the next write asks the marked nodes again at once (too few
    # others have space), it does not wait for the marks to run out.
    nodes.by_id("n3").full = False
    await client.store_chunk(cid, data)
    assert sorted(nodes.holders(cid)) == ["n1", "n3"]


async def test_a_member_list_missing_a_node_is_relearned_before_refusing(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    """The view was learned before n2 joined (a stale member list) and n3 is full: one
    copy lands on n1, n3 refuses; the write re-learns the members and lands on n2
    instead of answering 507 with a node to spare."""
    await client.view.ensure_members()
    view = client.view
    view._members = [m for m in view._members if m.id != "n2"]
    view._last_refresh = 0.0
    nodes.by_id("n3").full = True
    cid, data = _chunk()
    await client.store_chunk(cid, data)
    assert sorted(nodes.holders(cid)) == ["n1", "n2"]
    assert "n2" in view.active_ids()


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for path in data_path(3):
        yield path


async def test_a_push_into_a_full_cluster_is_507_with_the_oci_body(dp: DataPath) -> None:
    for node in dp.nodes.nodes:
        node.full = True
    data = os.urandom(3000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = await dp.http.post(f"/v2/full/repo/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 507
    assert resp.headers["Content-Type"].startswith("application/json")
    (entry,) = (await resp.json())["errors"]
    assert entry["code"] == "DENIED"
    assert "storage is full" in entry["message"]
    # The nodes that refused before the write gave up (at least two of three: W=2).
    named = [n["node"] for n in entry["detail"]["nodes"]]
    assert len(named) >= 2 and set(named) <= {"n1", "n2", "n3"}
    assert all(n["free_bytes"] == 1000 for n in entry["detail"]["nodes"])
    # Once the gateway knows (a refresh asked every member), it names every full node.
    await dp.cluster.view.probe_disks()
    resp = await dp.http.post(f"/v2/full/repo/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 507
    nodes = (await resp.json())["errors"][0]["detail"]["nodes"]
    assert [n["node"] for n in nodes] == ["n1", "n2", "n3"]
    assert all(n["free_bytes"] == 1000 and n["reserve_bytes"] == 4000 for n in nodes)
    # Nothing of the refused push is visible.
    assert (await dp.http.head(f"/v2/full/repo/blobs/{digest}")).status == 404
