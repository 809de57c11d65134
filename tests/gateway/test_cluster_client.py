"""ClusterClient against in-process fake nodes: quorum writes, failover, hedging, retries."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator

import pytest
from fakenodes import FakeNodes, eventually
from prometheus_client import REGISTRY

from cargohold.digests import chunk_id_of
from cargohold.errors import BlobUnknown, ManifestUnknown, RangeInvalid, Unavailable
from gateway.chunking import ingest
from gateway.cluster import ClusterClient
from gateway.cluster.local_reads import LocalCopyCorrupt
from gateway.cluster.reads import _slices


@pytest.fixture
async def nodes() -> AsyncIterator[FakeNodes]:
    fake = await FakeNodes(4).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def client(nodes: FakeNodes) -> AsyncIterator[ClusterClient]:
    c = await ClusterClient.connect(nodes.config())
    try:
        yield c
    finally:
        await c.close()


async def test_learns_members_and_leader(nodes: FakeNodes, client: ClusterClient) -> None:
    assert [m.id for m in client.members] == ["n1", "n2", "n3", "n4"]
    assert client.leader == nodes.by_id("n1").address


async def test_write_lands_on_the_placement_replicas(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    data = os.urandom(1000)
    cid = chunk_id_of(data)
    await client.store_chunk(cid, data)
    await client.close()  # waits for the copies beyond W
    assert sorted(nodes.holders(cid)) == sorted(m.id for m in client.placement(cid))
    assert len(nodes.holders(cid)) == 3


async def test_write_spills_over_when_an_owner_is_down(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    data = os.urandom(1000)
    cid = chunk_id_of(data)
    owners = [m.id for m in client.placement(cid)]
    nodes.by_id(owners[0]).down = True
    await client.store_chunk(cid, data)
    await client.close()
    holders = nodes.holders(cid)
    assert owners[0] not in holders
    assert len(holders) == 3  # the fourth node took the dead owner's copy


async def test_write_fails_without_quorum(nodes: FakeNodes, client: ClusterClient) -> None:
    for node in nodes.nodes[:3]:
        node.down = True
    data = os.urandom(100)
    with pytest.raises(Unavailable):
        await client.store_chunk(chunk_id_of(data), data)


async def test_existing_chunk_is_not_sent_again(nodes: FakeNodes, client: ClusterClient) -> None:
    data = os.urandom(64 * 1024)  # above has_check_min_bytes
    cid = chunk_id_of(data)
    await client.store_chunk(cid, data)
    await client.close()
    puts = sum(n.puts for n in nodes.nodes)
    again = await ClusterClient.connect(nodes.config())
    try:
        await again.store_chunk(cid, data)
    finally:
        await again.close()
    assert sum(n.puts for n in nodes.nodes) == puts
    assert sum(n.has_calls for n in nodes.nodes) >= 3


async def test_read_fails_over_from_corrupt_and_missing_replicas(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    data = os.urandom(5000)
    cid = chunk_id_of(data)
    await client.store_chunk(cid, data)
    await client.close()
    reader = await ClusterClient.connect(nodes.config())
    try:
        order = reader.read_order(cid)
        nodes.by_id(order[0].id).corrupt = True
        nodes.by_id(order[1].id).missing = True
        assert await reader.read_chunk(cid.hex(), len(data)) == data
        assert nodes.by_id(order[2].id).gets == 1
    finally:
        await reader.close()


@pytest.mark.parametrize("verify", ["xxh3", "sha256"])
async def test_both_verifications_reject_corrupt_bytes(nodes: FakeNodes, verify: str) -> None:
    cfg = nodes.config()
    cfg.gateway.verify_reads = verify
    client = await ClusterClient.connect(cfg)
    try:
        data = os.urandom(100_000)
        cid = chunk_id_of(data)
        await client.store_chunk(cid, data)
        first = client.read_order(cid)[0]
        nodes.by_id(first.id).corrupt = True
        assert await client.read_chunk(cid.hex(), len(data)) == data
    finally:
        await client.close()


async def test_sha256_verification_catches_a_lying_node(nodes: FakeNodes) -> None:
    cfg = nodes.config()
    cfg.gateway.verify_reads = "sha256"
    client = await ClusterClient.connect(cfg)
    try:
        data = os.urandom(100_000)
        cid = chunk_id_of(data)
        await client.store_chunk(cid, data)
        nodes.by_id(client.read_order(cid)[0].id).lying = True
        assert await client.read_chunk(cid.hex(), len(data)) == data
    finally:
        await client.close()


async def test_every_replica_bad_is_unavailable(nodes: FakeNodes, client: ClusterClient) -> None:
    data = os.urandom(100)
    cid = chunk_id_of(data)
    await client.store_chunk(cid, data)
    for node in nodes.nodes:
        node.corrupt = True
    with pytest.raises(Unavailable):
        await client.read_chunk(cid.hex(), len(data))


async def test_slow_replica_is_hedged(nodes: FakeNodes, client: ClusterClient) -> None:
    data = os.urandom(5000)
    cid = chunk_id_of(data)
    await client.store_chunk(cid, data)
    await client.close()
    reader = await ClusterClient.connect(nodes.config())
    first = nodes.by_id(reader.read_order(cid)[0].id)
    first.slow = asyncio.Event()  # never set while the read runs: only a hedge can answer
    try:
        slow_first = reader.read_order(cid)
        assert await reader.read_chunk(cid.hex(), len(data)) == data
        second = nodes.by_id(slow_first[1].id)
        assert second.gets == 1
        # The hung replica is now read after the healthy owners: no hedge needed next.
        assert [m.id for m in reader.read_order(cid)].index(first.id) == 2
        assert await reader.read_chunk(cid.hex(), len(data)) == data
        assert first.gets == 1
    finally:
        first.slow.set()
        await reader.close()


async def test_concurrent_reads_of_a_chunk_share_one_node_read(nodes: FakeNodes) -> None:
    cfg = nodes.config()
    cfg.gateway.hedge_after_seconds = 60.0  # only sharing may avoid a second Get here
    client = await ClusterClient.connect(cfg)
    try:
        data = os.urandom(5000)
        cid = chunk_id_of(data)
        await client.store_chunk(cid, data)
        owner = nodes.by_id(client.read_order(cid)[0].id)
        owner.slow = asyncio.Event()  # holds the read until every caller has joined it
        readers = [asyncio.create_task(client.read_chunk(cid.hex(), len(data))) for _ in range(5)]
        await asyncio.sleep(0)  # each reader runs up to its wait on the shared read
        assert len(client.reader._reads) == 1
        readers[0].cancel()  # a client that went away does not cancel the others' read
        owner.slow.set()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(bytes(r) == data for r in results[1:])  # type: ignore[arg-type]
        assert sum(n.gets for n in nodes.nodes) == 1
        # Once done, the next read goes to a node again (nothing is cached).
        assert await client.read_chunk(cid.hex(), len(data)) == data
        assert sum(n.gets for n in nodes.nodes) == 2
    finally:
        await client.close()


async def test_unshared_reads_each_ask_a_node(nodes: FakeNodes) -> None:
    cfg = nodes.config()
    cfg.gateway.share_chunk_reads = False
    cfg.gateway.hedge_after_seconds = 60.0  # a read slowed by load must not be hedged here
    reader = await ClusterClient.connect(cfg)
    try:
        data = os.urandom(5000)
        cid = chunk_id_of(data)
        await reader.store_chunk(cid, data)
        got = await asyncio.gather(*(reader.read_chunk(cid.hex(), len(data)) for _ in range(3)))
        assert all(g == data for g in got)
        assert sum(n.gets for n in nodes.nodes) == 3
    finally:
        await reader.close()


async def test_store_bytes_and_read_range(nodes: FakeNodes, client: ClusterClient) -> None:
    data = os.urandom(3 * 64 * 1024 + 777)
    recipe = await client.store_bytes(data)
    assert recipe["size"] == len(data)
    assert [c[1] for c in recipe["chunks"]] == [65536, 65536, 65536, 777]
    assert await client.read_all(recipe) == data
    for start, end in [
        (0, 1),
        (65535, 65537),
        (100, len(data)),
        (len(data) - 1, len(data)),
        (70000, 200000),
    ]:
        got = b"".join([p async for p in client.read_range(recipe, start, end)])
        assert got == data[start:end]
    assert await client.read_all(await client.store_bytes(b"")) == b""


def test_slices_map_a_range_to_chunk_offsets() -> None:
    chunks = [("a", 10), ("b", 10), ("c", 5)]
    assert list(_slices(chunks, 0, 25)) == [("a", 10, 0, 10), ("b", 10, 0, 10), ("c", 5, 0, 5)]
    assert list(_slices(chunks, 12, 13)) == [("b", 10, 2, 3)]
    assert list(_slices(chunks, 9, 21)) == [("a", 10, 9, 10), ("b", 10, 0, 10), ("c", 5, 0, 1)]
    assert list(_slices(chunks, 5, 5)) == []


async def test_metadata_moves_past_a_dead_leader(nodes: FakeNodes, client: ClusterClient) -> None:
    nodes.by_id("n1").down = True
    result = await client.command(
        "upload_append",
        {
            "upload": "u1",
            "repo": "r",
            "offset": 0,
            "chunks": [["00" * 32, 3]],
            "request": "q1",
            "now": 0,
        },
    )
    assert result == {"size": 3}
    assert (await client.query("upload_get", {"upload": "u1"}))["size"] == 3


async def test_metadata_errors_arrive_typed(client: ClusterClient) -> None:
    with pytest.raises(BlobUnknown):
        await client.query("blob_get", {"repo": "r", "digest": "sha256:" + "0" * 64})
    await client.command(
        "upload_append",
        {"upload": "u", "repo": "r", "offset": 0, "chunks": [], "request": "a", "now": 0},
    )
    with pytest.raises(RangeInvalid):
        await client.command(
            "upload_append",
            {"upload": "u", "repo": "r", "offset": 5, "chunks": [], "request": "b", "now": 0},
        )


async def test_no_node_reachable_is_unavailable(nodes: FakeNodes, client: ClusterClient) -> None:
    for node in nodes.nodes:
        node.down = True
    with pytest.raises(Unavailable):
        await client.query("upload_get", {"upload": "x"})


async def test_metadata_calls_ride_out_an_election(nodes: FakeNodes) -> None:
    """No node answers for a while (as while a new leader is elected): the call retries
    past `metadata_attempts` until `metadata_retry_seconds` and then succeeds."""
    cfg = nodes.config()
    cfg.gateway.metadata_attempts = 2
    cfg.gateway.metadata_retry_seconds = 20.0
    client = await ClusterClient.connect(cfg)
    try:
        for node in nodes.nodes:
            node.down = True

        async def back_later() -> None:
            await asyncio.sleep(0.5)
            for node in nodes.nodes:
                node.down = False

        back = asyncio.create_task(back_later())
        assert await client.query("upload_get", {"upload": "x"}) == {"state": "new"}
        await back
    finally:
        await client.close()


async def test_metadata_calls_give_up_after_the_retry_period(nodes: FakeNodes) -> None:
    cfg = nodes.config()
    cfg.gateway.metadata_retry_seconds = 0.5
    client = await ClusterClient.connect(cfg)
    try:
        for node in nodes.nodes:
            node.down = True
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.query("upload_get", {"upload": "x"})
        assert time.monotonic() - started >= 0.5
    finally:
        await client.close()


async def test_a_hung_replica_does_not_pile_up_background_writes(nodes: FakeNodes) -> None:
    cfg = nodes.config()
    cfg.gateway.background_copies_per_node = 2
    client = await ClusterClient.connect(cfg)
    hung = nodes.by_id("n2")
    hung.hung_puts = asyncio.Event()
    try:
        stored = []
        for _ in range(12):
            data = os.urandom(1000)
            await client.store_chunk(chunk_id_of(data), data)
            stored.append(chunk_id_of(data))
            assert client.writer._lagging[hung.address] <= 2
        # Once n2 was given up on, the chunks it owns were written around it.
        owned = [cid for cid in stored if "n2" in [m.id for m in client.placement(cid)]]
        assert len(owned) > 4
        assert hung.put_calls <= 3
        for cid in owned:
            assert len(nodes.holders(cid)) >= 2
    finally:
        hung.hung_puts.set()
        await client.close()


async def test_a_lost_background_copy_is_reported(
    nodes: FakeNodes, caplog: pytest.LogCaptureFixture
) -> None:
    """The third copy times out after W acks and the only spare is full: the write was
    acknowledged, and the missing copy is logged at WARNING for the operator."""
    cfg = nodes.config()
    cfg.gateway.rpc_timeout_seconds = 0.3
    client = await ClusterClient.connect(cfg)
    data = os.urandom(1000)
    cid = chunk_id_of(data)
    owners = [m.id for m in client.placement(cid)]
    hung = nodes.by_id(owners[2])
    hung.hung_puts = asyncio.Event()
    spare = next(n for n in nodes.nodes if n.id not in owners)
    spare.full = True
    try:
        with caplog.at_level(logging.WARNING, logger="cargohold.gateway.cluster"):
            await client.store_chunk(cid, data)
            assert sorted(nodes.holders(cid)) == sorted(owners[:2])
            deadline = time.monotonic() + 30
            while "cluster.background_copy_lost" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.05)
        [record] = [r for r in caplog.records if r.msg == "cluster.background_copy_lost"]
        assert record.fields["chunk"] == cid.hex()  # type: ignore[attr-defined]
    finally:
        hung.hung_puts.set()
        await client.close()


def _copies_in_flight() -> float:
    return REGISTRY.get_sample_value("cargohold_gateway_replica_copies_in_flight") or 0.0


async def test_copies_past_w_are_counted_until_written(nodes: FakeNodes) -> None:
    """The third copy, held up after W acks, shows in the in-flight gauge (what the
    benchmark waits on before pulls) and leaves it once written."""
    client = await ClusterClient.connect(nodes.config())
    data = os.urandom(1000)
    cid = chunk_id_of(data)
    owners = [m.id for m in client.placement(cid)]
    slow = nodes.by_id(owners[2])
    slow.hung_puts = asyncio.Event()
    before = _copies_in_flight()
    try:
        await client.store_chunk(cid, data)
        assert slow.id not in nodes.holders(cid)
        assert _copies_in_flight() == before + 1
        slow.hung_puts.set()
        await eventually(lambda: slow.id in nodes.holders(cid), "the third copy")
        await eventually(lambda: _copies_in_flight() == before, "the gauge at rest")
    finally:
        slow.hung_puts.set()
        await client.close()
    assert sorted(nodes.holders(cid)) == sorted(owners)


async def test_connect_before_the_cluster_answers(nodes: FakeNodes) -> None:
    for node in nodes.nodes:
        node.down = True
    client = await ClusterClient.connect(nodes.config())  # no error: it keeps trying
    try:
        assert client.members == []
        with pytest.raises(Unavailable):
            await client.query("upload_get", {"upload": "x"})
        for node in nodes.nodes:
            node.down = False
        assert await client.query("upload_get", {"upload": "x"}) == {"state": "new"}
        data = os.urandom(100)
        await client.store_chunk(chunk_id_of(data), data)
        assert len(client.members) == 4
    finally:
        await client.close()


class _FakeLocal:
    """A stand-in for the local LMDB view (gateway/cluster/local_reads.py): answers `data`
    after `delay`, or raises LocalCopyCorrupt."""

    def __init__(self, data: bytes | None, delay: float = 0.0, corrupt: bool = False) -> None:
        self.data, self.delay, self.corrupt = data, delay, corrupt
        self.reads = 0

    async def read(self, chunk_id: bytes, length: int | None) -> bytes | None:
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.corrupt:
            raise LocalCopyCorrupt
        return self.data

    def close(self) -> None:
        pass


async def _stored(nodes: FakeNodes) -> tuple[bytes, bytes]:
    data = os.urandom(5000)
    cid = chunk_id_of(data)
    writer = await ClusterClient.connect(nodes.config())
    await writer.store_chunk(cid, data)
    await writer.close()
    return cid, data


async def test_local_hit_asks_no_node(nodes: FakeNodes) -> None:
    cid, data = await _stored(nodes)
    reader = await ClusterClient.connect(nodes.config())
    reader.reader.local = _FakeLocal(data)  # type: ignore[assignment]
    try:
        assert bytes(await reader.read_chunk(cid.hex(), len(data))) == data
        assert sum(n.gets for n in nodes.nodes) == 0
    finally:
        await reader.close()


async def test_slow_local_read_is_hedged_to_a_replica(nodes: FakeNodes) -> None:
    """A local disk slower than the hedge delay does not hold the pull: a replica answers,
    and the late local answer (here deliberately wrong bytes) is dropped."""
    cid, data = await _stored(nodes)
    reader = await ClusterClient.connect(nodes.config())  # hedge_after_seconds 0.05
    local = _FakeLocal(b"late and never used", delay=0.5)
    reader.reader.local = local  # type: ignore[assignment]
    try:
        assert bytes(await reader.read_chunk(cid.hex(), len(data))) == data
        assert local.reads == 1 and sum(n.gets for n in nodes.nodes) == 1
        await asyncio.sleep(0.6)  # the abandoned local read ends without a stray error
    finally:
        await reader.close()


async def test_corrupt_local_copy_asks_the_local_node_first(nodes: FakeNodes) -> None:
    cid, data = await _stored(nodes)
    cfg = nodes.config()
    probe = await ClusterClient.connect(cfg)
    owners = [m.id for m in probe.read_order(cid)][:3]
    last = owners[-1]  # the owner the usual order would ask last
    await probe.close()
    cfg.gateway.local_node_id = last
    reader = await ClusterClient.connect(cfg)
    reader.reader.local = _FakeLocal(None, corrupt=True)  # type: ignore[assignment]
    try:
        assert bytes(await reader.read_chunk(cid.hex(), len(data))) == data
        # The local node was asked (its own check would quarantine its copy); it held a
        # good one here, so it served and nobody else was asked.
        assert nodes.by_id(last).gets == 1
        assert sum(n.gets for n in nodes.nodes) == 1
    finally:
        await reader.close()


async def test_a_removal_retried_after_a_lost_reply_is_done_not_unknown(
    nodes: FakeNodes, client: ClusterClient
) -> None:
    """The leader commits a tag delete and dies before replying: the retry finds the tag
    gone, which is the delete having happened (not a 404). Without a lost reply, deleting
    an unknown tag is still MANIFEST_UNKNOWN."""
    digest = "sha256:" + "ab" * 32
    await client.command(
        "manifest_put",
        {
            "repo": "lost/reply",
            "digest": digest,
            "media_type": "application/json",
            "recipe": {"size": 0, "chunks": []},
            "tag": "v1",
            "now": 1.0,
        },
    )
    for node in nodes.nodes:
        node.lost_replies = 1
    await client.command("tag_delete", {"repo": "lost/reply", "tag": "v1"})
    for node in nodes.nodes:
        node.lost_replies = 0
    with pytest.raises(ManifestUnknown):
        await client.command("tag_delete", {"repo": "lost/reply", "tag": "v1"})


async def _client_missing_n3(three: FakeNodes, settle_seconds: float) -> ClusterClient:
    """A client whose list was learned before n3 joined (n3 serves, and is a member)."""
    cfg = three.config()
    cfg.gateway.members_settle_seconds = settle_seconds
    cfg.gateway.members_refresh_seconds = 3600.0  # only the write path re-learns here
    client = await ClusterClient.connect(cfg)
    client.view._set_members([m for m in client.members if m.id != "n3"])
    return client


async def test_a_write_while_settling_relearns_a_list_that_lacks_a_joined_node() -> None:
    """The cluster turned ready between two periodic refreshes: chunks whose write would
    reach fewer than R nodes re-learn the list first (one refresh for all of them) and
    land on R nodes, as they would have a moment later."""
    three = await FakeNodes(3).start()
    try:
        client = await _client_missing_n3(three, settle_seconds=60.0)
        try:
            chunks = [os.urandom(1000) for _ in range(8)]
            ids = [chunk_id_of(c) for c in chunks]
            queries = len(three.state.queries)
            await asyncio.gather(
                *(client.store_chunk(i, c) for i, c in zip(ids, chunks, strict=True))
            )
            assert "n3" in {m.id for m in client.members}
            assert three.state.queries[queries:].count("members") == 1
        finally:
            await client.close()  # waits for the copies beyond W
        assert all(len(three.holders(cid)) == 3 for cid in ids)
    finally:
        await three.stop()


async def test_after_the_settle_period_a_write_uses_the_list_it_has() -> None:
    """Past `gateway.members_settle_seconds` (0: off) a short list is written to as it
    is: W copies acknowledge the write, which does not re-learn the list first."""
    three = await FakeNodes(3).start()
    try:
        client = await _client_missing_n3(three, settle_seconds=0.0)
        data = os.urandom(1000)
        try:
            await client.store_chunk(chunk_id_of(data), data)
            assert "n3" not in {m.id for m in client.members}
        finally:
            await client.close()
        assert sorted(three.holders(chunk_id_of(data))) == ["n1", "n2"]
    finally:
        await three.stop()


class _Body:
    """An upload body in the pieces `gateway.chunking.ingest` reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def iter_any(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 10_000):
            yield self.data[i : i + 10_000]


async def _ingest(client: ClusterClient, data: bytes) -> None:
    # One write in flight: each chunk's offers are answered before the next is written.
    await ingest(client, _Body(data), hashlib.sha256(), 64 * 1024, in_flight=1, fresh=True)


def _counts(nodes: FakeNodes) -> tuple[int, int]:
    return sum(n.has_calls for n in nodes.nodes), sum(n.puts for n in nodes.nodes)


async def test_a_body_is_offered_with_has_only_until_its_first_miss(nodes: FakeNodes) -> None:
    """New content: its first full-size chunk is offered to its 3 replicas, every one of
    them answers "absent", and the body's 5 later chunks go without an offer."""
    client = await ClusterClient.connect(nodes.config())
    try:
        await _ingest(client, os.urandom(6 * 64 * 1024))
    finally:
        await client.close()  # the copies beyond W too
    assert _counts(nodes) == (3, 6 * 3)


async def test_a_body_pushed_again_is_offered_chunk_by_chunk_and_sends_nothing(
    nodes: FakeNodes,
) -> None:
    data = os.urandom(6 * 64 * 1024)
    client = await ClusterClient.connect(nodes.config())
    try:
        await _ingest(client, data)
        await client.close()
        first = _counts(nodes)
        client = await ClusterClient.connect(nodes.config())
        await _ingest(client, data)
    finally:
        await client.close()
    has_calls, puts = _counts(nodes)
    # Every replica of every chunk answered "present": all offered, no bytes sent again.
    assert (has_calls - first[0], puts - first[1]) == (6 * 3, 0)


async def test_offers_stop_at_the_first_chunk_held_nowhere(nodes: FakeNodes) -> None:
    """A body whose first chunk is held (a blob resumed in a new session, say) and whose
    next is new: both are offered, the rest go without an offer."""
    chunk = 64 * 1024
    known = os.urandom(chunk)
    client = await ClusterClient.connect(nodes.config())
    try:
        await client.store_chunk(chunk_id_of(known), known)
        await client.close()
        before = _counts(nodes)
        client = await ClusterClient.connect(nodes.config())
        await _ingest(client, known + os.urandom(4 * chunk))
    finally:
        await client.close()
    has_calls, puts = _counts(nodes)
    assert (has_calls - before[0], puts - before[1]) == (2 * 3, 4 * 3)
