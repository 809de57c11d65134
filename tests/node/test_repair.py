"""The repair role in-process against fake nodes (tests/node/fakepeers.py: real grpc.aio
servers on 127.0.0.1 over MemoryChunkStores) with a member list the test edits."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from fakepeers import Cluster, FakeNode, config, fake_cluster_fixture, peers_fixture  # noqa: F401

from cargohold.config import Config
from cargohold.digests import chunk_id_of
from cargohold.placement import replicas_for
from node.chunk_service import add_to_server
from node.memstore import MemoryChunkStore
from node.pacing import PassSchedule
from node.peers import PeerPool
from node.repair import CURSOR_FILE, RepairRole
from protos import registry_pb2_grpc as pb_grpc


async def _fill(store: MemoryChunkStore, count: int, size: int = 1000) -> list[bytes]:
    ids = []
    for _ in range(count):
        data = os.urandom(size)
        ids.append(chunk_id_of(data))
        await store.put(ids[-1], data)
    return ids


async def _holders(nodes: list[FakeNode], chunk_id: bytes) -> set[str]:
    return {n.id for n in nodes if (await n.store.has([chunk_id]))[0]}


async def test_copies_to_owners_and_moves_away_what_it_does_not_own(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(4)
    ids = await _fill(nodes[0].store, 40)
    cfg = config(tmp_path, "n1", replicas=2)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    active = [n.id for n in nodes]
    for cid in ids:
        assert await _holders(nodes, cid) == set(replicas_for(cid, active, 2))
    owned = sum(1 for cid in ids if "n1" in replicas_for(cid, active, 2))
    stats = role.stats
    assert stats.scanned == 40 and stats.under_replicated == 40
    assert stats.moved_away_chunks == 40 - owned
    assert stats.repaired_chunks == 2 * 40 - owned
    assert stats.repaired_bytes == stats.repaired_chunks * 1000
    assert (await nodes[0].store.stats()).count == owned
    # Converged: the next pass copies and deletes nothing.
    await role.run_pass()
    assert stats.scanned == owned and stats.repaired_chunks == 0 and stats.moved_away_chunks == 0


async def test_a_silent_owner_keeps_the_local_copy_and_the_live_ones_get_it(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(4)
    ids = await _fill(nodes[0].store, 30)
    dead = nodes[3]
    assert dead.server is not None
    await dead.server.stop(None)
    dead.server = None
    cfg = config(tmp_path, "n1", replicas=2, peer_probe_timeout=0.5)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    active = [n.id for n in nodes]
    live = active[:3]
    for cid in ids:
        holders = await _holders(nodes[:3], cid)
        assert set(replicas_for(cid, live, 2)) <= holders  # R copies on live nodes
        if "n4" in replicas_for(cid, active, 2):
            assert "n1" in holders  # its owner n4 cannot confirm: never deleted
    assert (await nodes[3].store.stats()).count == 0


async def test_a_draining_node_empties_itself(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(3)
    ids = await _fill(nodes[0].store, 20)
    for cid in ids:  # fully replicated on the 3 nodes (R=2 + one spare copy on n1)
        data = await nodes[0].store.get(cid)
        await nodes[1].store.put(cid, data)
        await nodes[2].store.put(cid, data)
    members.set_state("n1", "draining")
    cfg = config(tmp_path, "n1", replicas=2)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    assert (await nodes[0].store.stats()).count == 0
    assert role.stats.moved_away_chunks == 20 and role.stats.repaired_chunks == 0
    for cid in ids:
        assert await _holders(nodes, cid) == {"n2", "n3"}


async def test_too_few_active_members_for_r_copies_deletes_nothing(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(3)
    ids = await _fill(nodes[0].store, 10)
    members.set_state("n1", "draining")
    cfg = config(tmp_path, "n1", replicas=3)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    assert (await nodes[0].store.stats()).count == 10
    for cid in ids:
        assert await _holders(nodes, cid) == {"n1", "n2", "n3"}


async def test_one_copier_per_chunk_the_best_ranked_live_holder(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(3)
    ids = await _fill(nodes[0].store, 30)
    for cid in ids:
        await nodes[1].store.put(cid, await nodes[0].store.get(cid))
    cfg = config(tmp_path, "n1", replicas=3)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    first = [cid for cid in ids if replicas_for(cid, ["n1", "n2"], 2)[0] == "n1"]
    assert 0 < len(first) < 30
    assert role.stats.repaired_chunks == len(first)  # n2 copies the others in its pass
    cfg2 = config(tmp_path, "n2", replicas=3)
    role2 = RepairRole(cfg2, nodes[1].store, members, peers(cfg2))
    await role2.run_pass()
    assert role2.stats.repaired_chunks == 30 - len(first)
    for cid in ids:
        assert await _holders(nodes, cid) == {"n1", "n2", "n3"}


async def test_a_restarted_role_resumes_at_its_cursor(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    ids = sorted(await _fill(nodes[0].store, 20))
    cfg = config(tmp_path, "n1", replicas=2, repair_interval=3600.0)
    (Path(cfg.node.data_dir) / CURSOR_FILE).write_text(ids[11].hex())
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    task = asyncio.create_task(role.run())
    try:
        await role._schedule.wait_for(1)  # the resumed pass runs at once, no trigger
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert role.stats.scanned == 8
    assert await nodes[1].store.has(ids) == [False] * 12 + [True] * 8
    assert not (Path(cfg.node.data_dir) / CURSOR_FILE).exists()  # pass done: cursor reset


async def test_trigger_with_wait_runs_a_whole_pass_and_cursor_tracks_pages(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    ids = sorted(await _fill(nodes[0].store, 20))
    cfg = config(tmp_path, "n1", replicas=2, repair_interval=3600.0)
    cursors: list[str] = []
    cursor = Path(cfg.node.data_dir) / CURSOR_FILE
    members.on_query = lambda: cursors.append(cursor.read_text() if cursor.exists() else "")
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    task = asyncio.create_task(role.run())
    try:
        progress = await role.trigger(wait=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert progress["passes"] == 1 and progress["scanned"] == 20
    assert progress["repaired_chunks"] == 20 and progress["last_pass_end"] > 0
    # Members are re-read after each page (to catch changes): the cursor was saved per page.
    assert ids[7].hex() in cursors and ids[15].hex() in cursors
    assert await nodes[1].store.has(ids) == [True] * 20


async def test_member_change_during_a_pass_deletes_nothing_and_reruns(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(3)
    await _fill(nodes[0].store, 12)
    members.set_state("n1", "draining")
    calls = 0

    def flip() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the pass planned its first page
            members.set_state("n3", "draining")

    members.on_query = flip
    cfg = config(tmp_path, "n1", replicas=1, repair_interval=3600.0)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    task = asyncio.create_task(role.run())
    try:
        await role.trigger(wait=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The aborted pass deleted nothing; the re-run (n2 the only active owner) moved all.
    assert (await nodes[0].store.stats()).count == 0
    assert (await nodes[1].store.stats()).count == 12
    assert role.stats.passes == 1


async def test_a_corrupt_local_copy_is_reported_not_copied(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    nodes, members = await fake_cluster(2)
    ids = await _fill(nodes[0].store, 3)
    nodes[0].store.corrupt(ids[1])
    reported: list[bytes] = []
    cfg = config(tmp_path, "n1", replicas=2)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg), on_corrupt=reported.append)
    await role.run_pass()
    assert reported == [ids[1]]
    assert await nodes[1].store.has(ids) == [True, False, True]


async def test_pass_schedule_numbers_passes_begun_after_the_request() -> None:
    schedule = PassSchedule(3600.0)
    assert schedule.request() == 1
    await schedule.next_pass()  # woken by the request, not the interval
    assert schedule.request() == 2  # pass 1 is running: the caller needs pass 2
    await schedule.finish()
    waiter = asyncio.create_task(schedule.wait_for(2))
    await asyncio.sleep(0)
    assert not waiter.done()
    await schedule.next_pass()
    await schedule.finish()
    await waiter
    assert schedule.finished == 2


async def test_a_full_peer_gets_no_copies_until_space_returns(
    fake_cluster: Cluster,
    peers: Callable[[Config], PeerPool],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes, members = await fake_cluster(3)
    ids = await _fill(nodes[0].store, 12)
    cfg = config(tmp_path, "n1", replicas=3)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    # n2 says it is full in its health probe; n3 says nothing but refuses every put.
    nodes[1].status.disk_full = True
    nodes[2].store._capacity = 0
    with caplog.at_level(logging.WARNING, logger="cargohold.node.repair"):
        await role.run_pass()
    assert role.stats.skipped_full == 2 * 12 and role.stats.copy_failures == 0
    assert role.stats.repaired_chunks == 0
    assert await nodes[1].store.has(ids) == [False] * 12
    assert await nodes[2].store.has(ids) == [False] * 12
    # One line for the node that turned out full, not one per chunk.
    assert [r.getMessage() for r in caplog.records] == ["repair.target_full"]
    # Space returns: the next pass brings every chunk to R copies.
    nodes[1].status.disk_full = False
    nodes[2].store._capacity = None
    await role.run_pass()
    assert role.stats.repaired_chunks == 2 * 12 and role.stats.skipped_full == 0
    for cid in ids:
        assert await _holders(nodes, cid) == {"n1", "n2", "n3"}


async def test_chunks_below_r_counts_what_answering_nodes_lack_after_the_copies(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    """3 nodes, R=3: with all up, a pass copies everything and ends at 0 below R; with one
    silent, every chunk has 2 copies on answering nodes (below R) until it answers again."""
    nodes, members = await fake_cluster(3)
    ids = await _fill(nodes[0].store, 12)
    cfg = config(tmp_path, "n1", replicas=3, peer_probe_timeout=0.5)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    assert role.stats.last_below_replicas == -1  # no pass finished yet
    await role.run_pass()
    assert role.stats.repaired_chunks == 2 * 12
    assert role.stats.below_replicas == role.stats.last_below_replicas == 0
    dead = nodes[2]
    assert dead.server is not None
    await dead.server.stop(None)
    dead.server = None
    await role.run_pass()
    assert role.stats.last_below_replicas == len(ids)
    dead.server = grpc.aio.server()
    add_to_server(dead.server, dead.store)
    pb_grpc.add_AdminServicer_to_server(dead.status, dead.server)
    dead.server.add_insecure_port(dead.address)
    await dead.server.start()
    # The peer channel reconnects with a backoff: a pass or a few until the probe answers.
    for _ in range(50):
        await role.run_pass()
        if role.stats.last_below_replicas == 0:
            break
        await asyncio.sleep(0.2)
    assert role.stats.last_below_replicas == 0


async def test_repair_probes_are_no_use_of_the_peers_chunks_for_gc(
    fake_cluster: Cluster, peers: Callable[[Config], PeerPool], tmp_path: Path
) -> None:
    """Repair asks every owner about every local chunk each pass; those `Has` must not keep
    garbage young on the peers (docs/operations.md, "Garbage collection")."""
    nodes, members = await fake_cluster(2)
    blobs = [os.urandom(1000) for _ in range(10)]
    ids = [chunk_id_of(b) for b in blobs]
    for node in nodes:
        for cid, data in zip(ids, blobs, strict=True):
            await node.store.put(cid, data)
    written = [nodes[1].store.touches.last(cid) for cid in ids]
    cfg = config(tmp_path, "n1", replicas=2)
    role = RepairRole(cfg, nodes[0].store, members, peers(cfg))
    await role.run_pass()
    assert role.stats.scanned == 10 and role.stats.repaired_chunks == 0  # it did ask n2
    assert [nodes[1].store.touches.last(cid) for cid in ids] == written
