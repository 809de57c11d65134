"""Snapshot files are checked before they are loaded (docs/raft.md, trap 8).

The file format's check (node/metadata/dump_file.py) against every kind of damage a
transfer can do, compatibility both ways with files without the trailer, and then a real
three-member group in this process: the leader sends a snapshot to a follower that was
down, its first transfer damaged on the way (the leader's outgoing pieces are altered; the
follower's receive path, pysyncobj_seam.CheckedSerializer and RaftMember, is untouched).
The follower must discard it, keep its old state and dump, stay up, and install the
snapshot sent again. Last, three node processes (marker `cluster`): the leader's dump is
damaged on its disk; the leader's own check before sending finds it, and it writes a new
snapshot instead of sending a copy every follower would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cargohold.config import Config
from cargohold.errors import Unavailable
from cargohold_cli.devcluster import LocalCluster, free_port
from node.metadata.dump_file import (
    DUMP_MAGIC,
    TRAILER_BYTES,
    DumpWriter,
    check_dump,
    head_bytes,
    read_head,
)
from node.metadata.raft import RaftMember
from node.metadata.state import MetadataState
from tests.node.test_metadata_raft import (
    REPO,
    Writers,
    listed_tags,
    member_config,
    tag_cmd,
    wait_until,
)

# -- the file format --------------------------------------------------------------------------


def _state_with_tags(n: int) -> MetadataState:
    state = MetadataState()
    for i in range(n):
        state.apply("manifest_put", tag_cmd(i))
    return state


_RAFT_DATA = (("entry-b", 41, 3), ("entry-a", 40, 3), {"127.0.0.1:1"})


def _dump(n: int = 200) -> bytes:
    out = io.BytesIO()
    writer = DumpWriter(out, head_bytes(_RAFT_DATA))
    for piece in MetadataState.encode_snapshot(_state_with_tags(n).snapshot(), compact=True):
        writer.write(piece)
    size = writer.finish()
    data = out.getvalue()
    assert size == len(data)
    return data


def _legacy(data: bytes) -> bytes:
    """The same snapshot as a node before the trailer wrote it: a three-element head and
    no trailer."""
    f = io.BytesIO(data)
    head = read_head(f)
    state = f.read()[:-TRAILER_BYTES]
    legacy_head = pickle.dumps(head, protocol=5)
    return DUMP_MAGIC + len(legacy_head).to_bytes(8, "big") + legacy_head + state


def _check(tmp_path: Path, data: bytes) -> Any:
    path = tmp_path / "state.dump"
    path.write_bytes(data)
    return check_dump(str(path))


def test_a_written_dump_is_verified_and_loads(tmp_path: Path) -> None:
    data = _dump()
    check = _check(tmp_path, data)
    assert check.ok and check.verified and check.size == len(data)
    f = io.BytesIO(data)
    assert read_head(f) == _RAFT_DATA
    state = MetadataState()
    state.load_stream(f)
    assert len(state.query("tags_list", {"repo": REPO})["tags"]) == 200


def test_every_truncation_is_rejected(tmp_path: Path) -> None:
    data = _dump()
    head_end = len(DUMP_MAGIC) + 8 + int.from_bytes(data[8:16], "big")
    cuts = [4, 12, head_end - 3, head_end + 5, len(data) // 2]
    cuts += [len(data) - TRAILER_BYTES - 1, len(data) - TRAILER_BYTES, len(data) - 1]
    for cut in cuts:
        check = _check(tmp_path, data[:cut])
        assert not check.ok, f"a file cut at {cut} of {len(data)} bytes passed: {check}"


def test_a_flipped_byte_anywhere_is_rejected(tmp_path: Path) -> None:
    data = _dump()
    for pos in range(0, len(data), max(1, len(data) // 97)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        check = _check(tmp_path, bytes(damaged))
        assert not check.ok, f"a flip at byte {pos} of {len(data)} passed"
    for pos in range(len(data) - TRAILER_BYTES, len(data)):  # every byte of the trailer
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        assert not _check(tmp_path, bytes(damaged)).ok


def test_a_hole_and_a_mix_of_two_snapshots_are_rejected(tmp_path: Path) -> None:
    data = _dump()
    piece = 512
    hole = data[: 2 * piece] + data[3 * piece :]
    assert not _check(tmp_path, hole).ok
    other = _dump(201)
    mixed = data[: 3 * piece] + other[3 * piece :]
    check = _check(tmp_path, mixed)
    assert not check.ok and check.reason == "checksum mismatch"


def test_a_dump_without_a_trailer_still_loads_unverified(tmp_path: Path) -> None:
    """Files written before the trailer (a node's own after an upgrade, or sent by a leader
    not yet upgraded) are readable, but only their head can be checked."""
    legacy = _legacy(_dump())
    check = _check(tmp_path, legacy)
    assert check.ok and not check.verified
    f = io.BytesIO(legacy)
    assert read_head(f) == _RAFT_DATA
    state = MetadataState()
    state.load_stream(f)
    assert len(state.query("tags_list", {"repo": REPO})["tags"]) == 200
    assert not _check(tmp_path, legacy[:20]).ok  # a head cut short is still seen
    assert not _check(tmp_path, b"CHRAFT9\n" + legacy[8:]).ok


def test_a_node_before_the_trailer_reads_the_new_file() -> None:
    """What `_read_dump` did before the trailer: magic, head, state; the head's fourth
    element and the trailer are ignored (a rolling upgrade needs no setting)."""
    f = io.BytesIO(_dump())
    assert f.read(8) in (b"CHRAFT2\n", b"CHRAFT1\n")
    raft_data = pickle.loads(f.read(int.from_bytes(f.read(8), "big")))
    state = MetadataState()
    state.load_stream(f)
    returned = (None, *tuple(raft_data))  # pysyncobj's deserialize(): uses [1], [2], [3]
    assert returned[1:4] == _RAFT_DATA
    assert len(state.query("tags_list", {"repo": REPO})["tags"]) == 200


# -- a member's own dump at start ----------------------------------------------------------------


async def _one_member_dump(tmp_path: Path, members: Callable[..., RaftMember]) -> Config:
    cfg = member_config(tmp_path, raft_compaction_min_entries=20, raft_compaction_min_time=600.0)
    member = members(cfg)
    for i in range(40):
        await member.command("manifest_put", tag_cmd(i))
    await wait_until(lambda: member.snapshots_taken > 0, "a snapshot")
    await member.close()
    return cfg


async def test_an_own_dump_that_fails_its_check_is_fatal(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = await _one_member_dump(tmp_path, members)
    dump = tmp_path / "raft" / "state.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    reported = asyncio.Event()
    loop = asyncio.get_running_loop()
    member = members(cfg, on_fatal=lambda: loop.call_soon_threadsafe(reported.set))
    await asyncio.wait_for(reported.wait(), 20)
    assert member.fatal_error and "failed its check: checksum mismatch" in member.fatal_error


async def test_an_own_dump_without_a_trailer_loads(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = await _one_member_dump(tmp_path, members)
    dump = tmp_path / "raft" / "state.dump"
    dump.write_bytes(_legacy(dump.read_bytes()))
    member = members(cfg)
    await member.barrier()
    tags = (await member.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{i}" for i in range(40))
    assert member.fatal_error is None


# -- a damaged transfer through the real receive path ---------------------------------------------


class DamagedTransfers:
    """Wraps the `getTransmissionData` of the members that may lead: the first transfer
    that ends is damaged (`mode`, on its third piece), then transfers wait (None: "not
    ready", as pysyncobj says while it serializes) until `release` is set, then go through
    untouched. 512-byte pieces, so a small dump is many."""

    def __init__(self, senders: list[RaftMember], mode: str) -> None:
        self.mode = mode
        self.release = threading.Event()
        self.damaged_sent = False
        for member in senders:
            serializer = member._SyncObj__serializer  # type: ignore[attr-defined]
            serializer._Serializer__transmissionBatchSize = 512
            serializer.getTransmissionData = self._wrap(serializer)

    def _wrap(self, serializer: Any) -> Callable[[Any], Any]:
        original = serializer.getTransmissionData
        pieces = [0]

        def send(node: Any) -> Any:  # a leader's tick thread
            if self.damaged_sent and not self.release.is_set():
                return None
            data = original(node)
            if self.damaged_sent or not data:
                return data
            piece, first, last = data
            pieces[0] = 1 if first else pieces[0] + 1
            if last:
                self.damaged_sent = True
            if pieces[0] != 3:
                return data
            if self.mode == "flipped":
                return bytes([piece[0] ^ 0x01]) + piece[1:], first, last
            if self.mode == "missing":  # the third piece is never sent
                following = original(node)
                if not following or following[2]:
                    self.damaged_sent = True
                return following
            # "truncated": the transfer ends after two pieces.
            serializer._Serializer__transmissions.pop(node)["file"].close()
            self.damaged_sent = True
            return b"", False, True

        return send


def _three_configs(tmp_path: Path) -> list[Config]:
    ports = [free_port() for _ in range(3)]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    configs = []
    for i in range(3):
        cfg = member_config(
            tmp_path / f"m{i}",
            raft_compaction_min_entries=20,
            raft_compaction_min_time=600.0,  # snapshots by entries only: dumps stay put
            # Three members' threads in one process: a forked writer could inherit a lock
            # another member's thread held (the node itself runs one member per process).
            raft_snapshot_fork=False,
        )
        cfg.node.raft_listen = cfg.node.raft_advertise = addresses[i]
        cfg.node.peers = [a for a in addresses if a != addresses[i]]
        configs.append(cfg)
    return configs


async def _put(member: RaftMember, i: int) -> None:
    """One command, retried while the group settles (a fresh leader may not count its
    quorum yet, and refuses at once)."""
    for _ in range(200):
        try:
            await member.command("manifest_put", tag_cmd(i))
            return
        except Unavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"command {i} never committed")


def _dump_index(path: str) -> int:
    """The log index a dump file was taken at."""
    with open(path, "rb") as f:
        return int(read_head(f)[0][1])


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _tags(member: RaftMember) -> set[str]:
    return set(member.local_query("tags_list", {"repo": REPO, "n": 1000})["tags"])


EXPECTED_REASON = {
    "truncated": "trailer missing",
    "flipped": "checksum mismatch",
    "missing": "length: ",
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_REASON))
async def test_a_damaged_snapshot_transfer_is_discarded_and_sent_again(
    tmp_path: Path, members: Callable[..., RaftMember], mode: str
) -> None:
    configs = _three_configs(tmp_path)
    group = [members(cfg) for cfg in configs]
    await wait_until(lambda: any(m.is_leader() for m in group), "a leader")
    leader = next(m for m in group if m.is_leader())
    for i in range(40):
        await _put(leader, i)
    # The follower to stop is one that wrote a dump of its own. (A follower that connected
    # late may have been sent the leader's snapshot instead, and takes none of its own
    # until its log grows again; the other one was appended to all along.)
    followers = [m for m in group if m is not leader]

    def own_dump(m: RaftMember) -> bool:
        return m.snapshots_taken > 0 and len(_tags(m)) == 40

    await wait_until(lambda: any(own_dump(m) for m in followers), "a follower's own dump")
    behind = next(m for m in followers if own_dump(m))
    behind_cfg = configs[group.index(behind)]
    behind_last = behind._raft_log()[-1][1]
    await behind.close()
    taken = leader.snapshots_taken
    for i in range(40, 100):
        await _put(leader, i)
    await wait_until(
        lambda: leader.snapshots_taken > taken and leader._raft_log()[0][1] > behind_last + 1,
        "the leader's log compacted past the follower",
    )

    damage = DamagedTransfers([m for m in group if m is not behind], mode)
    again = members(behind_cfg)
    await wait_until(lambda: again.snapshots_rejected >= 1, "the damaged snapshot rejected")
    assert damage.damaged_sent
    # Discarded: the node runs on with its own state and dump, nothing partial loaded.
    await asyncio.sleep(0.5)
    assert again.fatal_error is None
    assert again.snapshots_rejected == 1
    # Its dump is its own (it may have taken a new one of its old state since its restart:
    # its journal was past the threshold), never the leader's, whose index is past its log.
    own = check_dump(again.dump_path)
    assert own.ok and own.verified
    assert _dump_index(again.dump_path) <= behind_last
    assert not _exists(again.dump_path + ".1.tmp")  # the received file is gone
    assert _tags(again) == {f"t{i}" for i in range(40)}
    reason = again.snapshot_stats()["last_rejection"]["reason"]
    assert reason.startswith(EXPECTED_REASON[mode]), reason

    damage.release.set()
    await wait_until(lambda: len(_tags(again)) == 100, "the snapshot sent again installed")
    assert again.fatal_error is None and again.snapshots_rejected == 1
    received = check_dump(again.dump_path)
    assert received.ok and received.verified
    await _put(leader, 100)
    await wait_until(lambda: "t100" in _tags(again), "the follower following again")


# -- real node processes ---------------------------------------------------------------------------
def _snapshot_stats(cluster: LocalCluster, i: int) -> dict[str, Any]:
    return dict(json.loads(cluster.node_status(i, timeout=5).extra).get("snapshot", {}))


def _until(predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        with contextlib.suppress(grpc.RpcError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.mark.cluster
def test_a_leader_with_a_damaged_dump_writes_a_new_one_instead_of_sending_it(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Three node processes: a follower far behind needs the leader's dump, and that dump
    was damaged on the leader's disk (one byte flipped) after it was written. The leader
    checks it before the first piece goes out, does not send it, counts and logs it, and
    writes a new snapshot by itself (nothing new was applied, and the compaction timer is
    far off); the follower installs that one, rejects nothing, and serves every
    acknowledged command. (A copy damaged on the way is the in-process test above.)"""
    settings = {
        "raft_compaction_min_entries": 200,
        "raft_compaction_min_time": 600.0,  # no snapshot by time: only the forced one
        "raft_command_timeout": 3.0,
    }
    cluster = make_cluster(nodes=3, gateways=0, extra={"node": settings})
    leader = cluster.leader_index()
    assert leader is not None
    behind = (leader + 1) % 3
    cluster.kill_node(behind, signal.SIGKILL)
    with Writers(cluster, "far") as writers:
        writers.wait_for(300)
        _until(lambda: _snapshot_stats(cluster, leader).get("taken", 0) > 0, "a leader snapshot")
    acked = writers.acked
    _until(lambda: not _snapshot_stats(cluster, leader)["writing"], "the snapshot written")
    taken = _snapshot_stats(cluster, leader)["taken"]
    dump = cluster.node_data_dir(leader) / "raft" / "state.dump"
    with open(dump, "r+b") as f:
        f.seek(dump.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    assert not check_dump(str(dump)).ok

    cluster.start_node(behind)
    _until(
        lambda: _snapshot_stats(cluster, leader).get("own_damaged", 0) >= 1,
        "the leader noticing its damaged dump",
    )
    _until(
        lambda: _snapshot_stats(cluster, leader)["taken"] > taken,
        "a new snapshot written by the leader on its own",
    )
    assert check_dump(str(dump)).verified
    assert acked <= listed_tags(cluster, cluster.node_grpc(behind), limit=60.0)
    assert behind in cluster.running_nodes()
    stats = _snapshot_stats(cluster, behind)
    assert stats.get("rejected", 0) == 0, stats  # the damaged file never left the leader
    received = cluster.node_data_dir(behind) / "raft" / "state.dump"
    _until(received.exists, "the follower's installed dump")
    assert check_dump(str(received)).verified
    assert not (received.parent / "state.dump.1.tmp").exists()
    assert _snapshot_stats(cluster, leader)["own_damaged"] == 1  # the new file is not refused
