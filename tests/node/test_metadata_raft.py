"""Raft metadata: the asyncio bridge and snapshots in-process (one-member groups), then three
real node processes over gRPC (marker `cluster`): reads through another node, leader
SIGKILL, whole-cluster SIGKILL with compaction on. Every acknowledged command must survive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.journal import FileJournal

from cargohold.config import Config
from cargohold.errors import (
    ConfigError,
    MetadataStorageFull,
    RangeInvalid,
    RequestInvalid,
    Unavailable,
)
from cargohold_cli.devcluster import LocalCluster, free_port, to_toml
from node.metadata.journal import RaftJournal
from node.metadata.raft import RaftMember, raft_utility
from node.metadata.state import SNAPSHOT_COMPACT, SNAPSHOT_COMPACT_V5
from node.server import housekeeping, join_cluster
from protos import registry_pb2, registry_pb2_grpc

REPO = "raft/test"


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def tag_cmd(i: int, prefix: str = "t") -> dict[str, Any]:
    """One small idempotent command: a manifest (no blobs) tagged `<prefix><i>`."""
    return {
        "repo": REPO,
        "digest": dg(f"{prefix}{i}"),
        "media_type": "application/json",
        "recipe": {"size": 0, "chunks": []},
        "tag": f"{prefix}{i}",
        "now": 1.0,
    }


# -- in-process: one-member groups ----------------------------------------------------------------
def member_config(data_dir: Path, **node: Any) -> Config:
    cfg = Config()
    cfg.node.data_dir = str(data_dir)
    cfg.node.raft_listen = cfg.node.raft_advertise = f"127.0.0.1:{free_port()}"
    cfg.node.peers = []
    cfg.cluster.secret = "test-secret"
    for key, value in node.items():
        setattr(cfg.node, key, value)
    return cfg


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def test_command_and_query_through_the_bridge(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    member = members(member_config(tmp_path))
    assert await member.command("manifest_put", tag_cmd(1)) is None
    record = await member.query("tag_get", {"repo": REPO, "tag": "t1"}, linearizable=True)
    assert record["digest"] == dg("t1")
    with pytest.raises(RangeInvalid):
        await member.command(
            "upload_append",
            {"upload": "u", "repo": REPO, "offset": 5, "chunks": [], "request": "r", "now": 1.0},
        )
    with pytest.raises(RequestInvalid):
        await member.command("no_such_command", {})
    with pytest.raises(RequestInvalid):
        await member.query("no_such_query", {}, linearizable=False)
    status = member.status()
    assert status.is_leader and status.leader == status.self_address
    assert status.last_applied >= 3 and status.commit_index >= status.last_applied


async def test_concurrent_commands_share_log_entries_and_keep_their_results(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    member = members(member_config(tmp_path))
    await member.barrier()
    before = member.status().commit_index

    async def bad_append(i: int) -> None:
        with pytest.raises(RangeInvalid) as err:
            await member.command(
                "upload_append",
                {
                    "upload": f"u{i}",
                    "repo": REPO,
                    "offset": i + 1,
                    "chunks": [],
                    "request": "r",
                    "now": 1.0,
                },
            )
        assert err.value.message == "size=0"

    async def good_append(i: int) -> None:
        result = await member.command(
            "upload_append",
            {
                "upload": f"v{i}",
                "repo": REPO,
                "offset": 0,
                "chunks": [["ab" * 32, i]],
                "request": "r",
                "now": 1.0,
            },
        )
        assert result == {"size": i}

    await asyncio.gather(
        *[member.command("manifest_put", tag_cmd(i)) for i in range(100)],
        *[bad_append(i) for i in range(20)],
        *[good_append(i) for i in range(20)],
    )
    # 140 commands, a handful of log entries.
    assert member.status().commit_index - before <= 4
    status = await member.query("status", {}, linearizable=True)
    assert status["manifests"] == 100 and status["uploads"] == 20


async def test_batches_are_bounded_by_commands_and_chunk_references(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    member = members(member_config(tmp_path, raft_batch_max_commands=8))
    await member.barrier()
    before = member.status().commit_index
    await asyncio.gather(*[member.command("manifest_put", tag_cmd(i)) for i in range(16)])
    assert member.status().commit_index - before == 2
    before = member.status().commit_index
    big = [["cd" * 32, 1]] * (64 * 8)  # weighs 9 > 8: alone in its entry
    results = await asyncio.gather(
        *[
            member.command(
                "upload_append",
                {
                    "upload": f"big{i}",
                    "repo": REPO,
                    "offset": 0,
                    "chunks": big,
                    "request": "r",
                    "now": 1.0,
                },
            )
            for i in range(4)
        ]
    )
    assert results == [{"size": 512}] * 4
    assert member.status().commit_index - before == 4


async def test_concurrent_reads_share_one_barrier(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    member = members(member_config(tmp_path))
    await member.command("manifest_put", tag_cmd(1))
    barriers = 0
    gate = asyncio.Event()
    gate.set()
    original = member.command

    async def counting(op: str, args: dict[str, Any]) -> Any:
        nonlocal barriers
        if op == "barrier":
            barriers += 1
            await gate.wait()
        return await original(op, args)

    member.command = counting  # type: ignore[method-assign]
    results = await asyncio.gather(
        *[member.query("tags_list", {"repo": REPO}, linearizable=True) for _ in range(50)]
    )
    assert all(r == {"tags": ["t1"], "more": False} for r in results)
    assert barriers == 1
    # Reads arriving while a barrier is in flight wait for the next one (one for all).
    gate.clear()
    first = asyncio.ensure_future(member.query("status", {}, linearizable=True))
    await wait_until(lambda: barriers == 2, "a barrier in flight")
    later = [asyncio.ensure_future(member.query("status", {}, linearizable=True)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert barriers == 2 and not first.done() and not any(f.done() for f in later)
    gate.set()
    await asyncio.gather(first, *later)
    assert barriers == 3


async def test_no_quorum_is_unavailable(tmp_path: Path, members: Callable[..., RaftMember]) -> None:
    cfg = member_config(tmp_path, raft_command_timeout=1.0)
    cfg.node.peers = [f"127.0.0.1:{free_port()}"]  # a partner that never answers
    member = members(cfg)
    with pytest.raises(Unavailable):
        await member.command("manifest_put", tag_cmd(1))
    with pytest.raises(Unavailable):
        await member.query("catalog", {}, linearizable=True)
    # A local read still answers.
    assert await member.query("catalog", {}, linearizable=False) == {
        "repositories": [],
        "more": False,
    }
    # Past the fail-fast check, a command that cannot commit times out: outcome unknown.
    member._reaches_quorum = lambda: True  # type: ignore[method-assign]
    with pytest.raises(Unavailable) as err:
        await member.command("manifest_put", tag_cmd(2))
    assert "outcome unknown" in err.value.message


async def test_a_taken_raft_port_is_a_config_error(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = member_config(tmp_path, raft_bind_retries=1)
    host, port = cfg.node.raft_listen.split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        member = members(cfg)
        with pytest.raises(ConfigError):
            await member.wait_bound()


@pytest.mark.parametrize("fork", [True, False], ids=["forked-child", "thread"])
async def test_snapshot_then_restart_restores_state(
    tmp_path: Path, members: Callable[..., RaftMember], fork: bool
) -> None:
    cfg = member_config(
        tmp_path,
        raft_compaction_min_entries=20,
        raft_compaction_min_time=1.0,
        raft_snapshot_fork=fork,
    )
    member = members(cfg)
    for i in range(60):
        await member.command("manifest_put", tag_cmd(i))
    await wait_until(
        lambda: os.path.exists(member.dump_path) and member.status().log_len < 30, "a compaction"
    )
    for i in range(60, 70):
        await member.command("manifest_put", tag_cmd(i))
    await member.close()
    again = members(cfg)
    await again.barrier()
    tags = (await again.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{i}" for i in range(70))


async def test_a_snapshot_load_gives_its_free_heap_back(
    tmp_path: Path, members: Callable[..., RaftMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After loading a snapshot the member trims the heap (malloc_trim), so what the load's
    transient objects freed leaves RssAnon (docs/metadata.md)."""
    trims: list[str] = []
    monkeypatch.setattr(
        "node.metadata.raft.release_memory", lambda: trims.append(threading.current_thread().name)
    )
    cfg = member_config(tmp_path, raft_compaction_min_entries=20, raft_compaction_min_time=1.0)
    member = members(cfg)
    for i in range(40):
        await member.command("manifest_put", tag_cmd(i))
    await wait_until(lambda: os.path.exists(member.dump_path), "a compaction")
    await member.close()
    assert trims == []  # taking a snapshot does not trim; loading one does
    again = members(cfg)
    await again.barrier()
    assert again.snapshot_stats()["load_seconds"] is not None
    assert len(trims) == 1
    tags = (await again.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert len(tags) == 40


async def test_a_disconnect_restarts_a_snapshot_transfer_from_its_first_piece(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """The pieces of a snapshot in flight to a follower go with its connection; the
    transport reconnects at once, so the transfer must start over on the disconnect itself,
    or the follower installs a file with a hole (pysyncobj_seam.SyncingTransport)."""
    from pysyncobj.node import TCPNode

    cfg = member_config(tmp_path, raft_compaction_min_entries=20, raft_compaction_min_time=1.0)
    member = members(cfg)
    for i in range(40):
        await member.command("manifest_put", tag_cmd(i))
    serializer = member._SyncObj__serializer  # type: ignore[attr-defined]
    await wait_until(
        lambda: os.path.exists(member.dump_path) and serializer._Serializer__pid == 0,
        "a finished compaction",
    )
    transport = member._SyncObj__transport  # type: ignore[attr-defined]
    serializer._Serializer__transmissionBatchSize = 512  # a small dump in several pieces
    follower = TCPNode(f"127.0.0.1:{free_port()}")  # not a member: the tick leaves it alone
    first = serializer.getTransmissionData(follower)
    assert first is not None and first[1] is True  # the first piece
    transfers = serializer._Serializer__transmissions
    opened = transfers[follower]["file"]
    second = serializer.getTransmissionData(follower)
    assert second is not None and second[1] is False  # going on
    transport._onNodeDisconnected(follower)
    assert follower not in transfers and opened.closed
    again = serializer.getTransmissionData(follower)
    assert again is not None and again[1] is True and again[0] == first[0]
    serializer.cancelTransmisstion(follower)


def _dump_version(path: str) -> int:
    """The metadata snapshot version in a raft dump file (magic, head length, head, state)."""
    with open(path, "rb") as f:
        f.read(8)
        f.read(int.from_bytes(f.read(8), "big"))
        version: int = pickle.load(f)["version"]
    return version


async def test_a_row_format_snapshot_upgrades_to_the_compact_format(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """Rolling upgrades: a node that wrote the row format (`raft_snapshot_compact` off, as
    versions before the compact format) restarts with it on but version 5
    (`raft_snapshot_compact_version`, as versions before version 6), loads the old
    snapshot, and its next snapshot is version 5; restarted with the default, it loads that
    and writes version 6. Everything acknowledged is there after each restart."""
    cfg = member_config(tmp_path, raft_compaction_min_entries=20, raft_compaction_min_time=1.0)
    cfg.node.raft_snapshot_compact = False
    member = members(cfg)
    for i in range(40):
        await member.command("manifest_put", tag_cmd(i))
    # A snapshot of the state with the 40 manifests: the row format writes the oldest
    # version that holds what the state has, so one taken earlier by the 1 s timer (the
    # commands were slow to start on a loaded machine) is an empty version 2.
    applied = member.status().last_applied
    await wait_until(
        lambda: any(s["index"] >= applied for s in member.snapshot_history),
        "a row-format snapshot of the 40 manifests",
    )
    await member.close()
    assert _dump_version(member.dump_path) == 4
    cfg.node.raft_snapshot_compact = True
    written = 80
    for version in (SNAPSHOT_COMPACT_V5, SNAPSHOT_COMPACT):
        cfg.node.raft_snapshot_compact_version = version
        again = members(cfg)
        await again.barrier()
        taken = again.snapshots_taken
        for i in range(written - 40, written):
            await again.command("manifest_put", tag_cmd(i))
        await wait_until(lambda m=again, t=taken: m.snapshots_taken > t, "a compact snapshot")
        await again.close()
        assert _dump_version(again.dump_path) == version
        written += 40
    third = members(cfg)
    await third.barrier()
    tags = (await third.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{i}" for i in range(written - 40))


async def test_the_log_size_alone_starts_a_snapshot(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """Size-driven compaction: with the entry and time thresholds out of reach, a log
    past `raft_compaction_log_bytes` is snapshotted and truncated (the replay a restart
    does stays bounded whatever the write rate)."""
    cfg = member_config(
        tmp_path,
        raft_compaction_log_bytes=16 * 1024,
        raft_compaction_min_entries=10**9,
        raft_compaction_min_time=10**9,
    )
    member = members(cfg)
    i = 0
    while member.snapshots_taken == 0:
        await member.command("manifest_put", tag_cmd(i))
        i += 1
        assert i < 5000, "no snapshot although the log outgrew raft_compaction_log_bytes"
    await wait_until(lambda: member.journal_space().used < 16 * 1024, "the log truncated")
    assert member.last_snapshot["bytes"] > 0
    await member.close()
    again = members(cfg)
    await again.barrier()
    tags = (await again.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{n}" for n in range(i))


async def test_an_unreadable_snapshot_is_fatal(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = member_config(tmp_path)
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "state.dump").write_bytes(b"CHRAFT2\n" + b"\xff" * 64)
    reported = asyncio.Event()
    loop = asyncio.get_running_loop()
    member = members(cfg, on_fatal=lambda: loop.call_soon_threadsafe(reported.set))
    await asyncio.wait_for(reported.wait(), 20)
    assert member.fatal_error and "state.dump" in member.fatal_error


class DumpNeverConfirmed(RaftMember):
    """A member killed between "dump renamed into place" and "journal truncated": the
    checker renames the dump but never reports success, so pysyncobj never truncates."""

    def _check_dump(self) -> int:
        status = super()._check_dump()
        if status == SERIALIZER_STATE.SUCCESS:
            return SERIALIZER_STATE.NOT_SERIALIZING
        return status


async def test_kill_between_dump_and_truncation_loses_nothing(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = member_config(tmp_path, raft_compaction_min_entries=20, raft_compaction_min_time=1.0)
    member = members(cfg, DumpNeverConfirmed)
    for i in range(50):
        await member.command("manifest_put", tag_cmd(i))
    await wait_until(lambda: os.path.exists(member.dump_path), "a dump file")
    for i in range(50, 70):
        await member.command("manifest_put", tag_cmd(i))
    assert member.status().log_len > 70  # journal never truncated
    await member.close()
    again = members(cfg)
    await again.barrier()
    tags = (await again.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{i}" for i in range(70))


async def test_a_journal_of_pysyncobjs_format_is_migrated_with_its_data(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """An operator upgrading keeps their metadata: a log in pysyncobj's own FileJournal
    format (what earlier releases wrote) is read once and rewritten into ours."""
    cfg = member_config(tmp_path)
    member = members(cfg)
    for i in range(30):
        await member.command("manifest_put", tag_cmd(i))
    await member.close()
    raft_dir = tmp_path / "raft"
    written = RaftJournal(str(raft_dir))
    old = FileJournal(str(raft_dir / "journal"))
    for entry in written[:]:
        old.add(*entry)
    old.setRaftCommitIndex(written.getRaftCommitIndex())
    old.setCurrentTerm(written.getCurrentTerm(), written.getVotedForNodeId())
    old.onOneSecondTimer()
    old._destroy()
    written._destroy()
    for name in ("log", "term"):
        (raft_dir / name).unlink()
    again = members(cfg)
    await again.barrier()
    tags = (await again.query("tags_list", {"repo": REPO}, linearizable=True))["tags"]
    assert sorted(tags) == sorted(f"t{i}" for i in range(30))
    assert not (raft_dir / "journal").exists()


async def test_a_full_log_refuses_writes_and_keeps_reads(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """No extent can be claimed and the floor is reached: commands fail with
    MetadataStorageFull (507) and linearizable reads still answer, without a log append."""
    member = members(member_config(tmp_path))
    await member.command("manifest_put", tag_cmd(1))
    journal = member._journal
    journal._claim_error = "ENOSPC (test)"
    journal._allocated = journal._end + 10  # less than the floor left
    assert member.journal_space().low
    with pytest.raises(MetadataStorageFull):
        await member.command("manifest_put", tag_cmd(2))
    log_len = member.status().log_len
    record = await member.query("tag_get", {"repo": REPO, "tag": "t1"}, linearizable=True)
    assert record["digest"] == dg("t1")
    assert member.status().log_len == log_len  # the read appended nothing
    assert (await member.query("catalog", {}, linearizable=True))["repositories"] == [REPO]


async def test_followers_short_of_space_make_the_leader_refuse_at_once(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """Both followers' logs are short of space, the leader's is not: no majority could
    store an entry, so the leader refuses with MetadataStorageFull (507) instead of
    appending entries that never commit (a command timeout, 503). Reads still answer, and
    once a follower has room again, writes succeed."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    group = []
    for i, address in enumerate(addresses):
        # Slow elections: three members in one loaded process must keep one leader for
        # the whole test (the leader's view of its followers is what is tested).
        cfg = member_config(
            tmp_path / f"m{i}",
            raft_command_timeout=60.0,
            raft_min_timeout=1.5,
            raft_max_timeout=3.0,
            raft_leader_fallback_timeout=30.0,
        )
        cfg.node.raft_listen = cfg.node.raft_advertise = address
        cfg.node.peers = [a for a in addresses if a != address]
        group.append(members(cfg))
    await wait_until(lambda: any(m.is_leader() for m in group), "a leader")
    leader = next(m for m in group if m.is_leader())
    followers = [m for m in group if m is not leader]
    await leader.command("manifest_put", tag_cmd(1))
    for follower in followers:
        # Short of space as the journal reports it (its claim thread is not involved: on
        # this disk a background claim would succeed and end the shortage at once).
        space = follower.journal_space()
        short = space._replace(room=10, low=True)
        follower._journal.space = lambda short=short: short  # type: ignore[method-assign]
        assert follower.journal_space().low
    transport = leader._SyncObj__transport  # type: ignore[attr-defined]
    await wait_until(
        lambda: sum(transport.peer_low.values()) == 2, "the leader hearing both followers low"
    )
    assert not leader.journal_space().low
    log_len = leader.status().log_len
    with pytest.raises(MetadataStorageFull):
        await leader.command("manifest_put", tag_cmd(2))
    record = await leader.query("tag_get", {"repo": REPO, "tag": "t1"}, linearizable=True)
    assert record["digest"] == dg("t1")
    assert leader.status().log_len == log_len  # neither the refusal nor the read appended

    del followers[0]._journal.space  # its disk has room again
    await wait_until(lambda: sum(transport.peer_low.values()) == 1, "one follower with room")
    assert leader.is_leader()  # the same leader throughout
    await leader.command("manifest_put", tag_cmd(3))
    record = await leader.query("tag_get", {"repo": REPO, "tag": "t3"}, linearizable=True)
    assert record["digest"] == dg("t3")


async def test_join_and_leader_housekeeping(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    cfg = member_config(tmp_path, housekeeping_interval=0.05, upload_expire_after=60.0)
    cfg.node.id = "n7"
    cfg.node.grpc_advertise = "127.0.0.1:7777"
    member = members(cfg)
    await join_cluster(member, cfg)
    assert await member.query("members", {}, linearizable=True) == [
        {"id": "n7", "grpc": "127.0.0.1:7777", "raft": cfg.node.raft_advertise, "state": "active"}
    ]
    await member.command(
        "upload_append",
        {"upload": "stale", "repo": REPO, "offset": 0, "chunks": [], "request": "r", "now": 1.0},
    )
    await member.command(
        "upload_append",
        {
            "upload": "fresh",
            "repo": REPO,
            "offset": 0,
            "chunks": [],
            "request": "r",
            "now": time.time(),
        },
    )
    task = asyncio.ensure_future(housekeeping(member, cfg))
    try:
        await wait_until(
            lambda: member.local_query("upload_get", {"upload": "stale"}) == {"state": "new"},
            "the stale upload to expire",
        )
    finally:
        task.cancel()
    assert member.local_query("upload_get", {"upload": "fresh"})["state"] == "open"


# -- real processes --------------------------------------------------------------------------------
CLUSTER_NODE_SETTINGS = {
    # Small thresholds so snapshots and journal truncation happen during the tests.
    "raft_compaction_min_entries": 200,
    "raft_compaction_min_time": 2.0,
    "raft_command_timeout": 3.0,
}


def stub(cluster: LocalCluster, address: str) -> registry_pb2_grpc.MetadataStub:
    """A Metadata stub whose calls are signed as a gateway (registry commands)."""
    return registry_pb2_grpc.MetadataStub(cluster.channel(address, "gateway"))


def command(
    cluster: LocalCluster, address: str, op: str, args: dict[str, Any], timeout: float = 5.0
) -> Any:
    reply = stub(cluster, address).Command(
        registry_pb2.MetadataRequest(op=op, args=json.dumps(args).encode()), timeout=timeout
    )
    return json.loads(reply.result)


def query(
    cluster: LocalCluster, address: str, op: str, args: dict[str, Any], linearizable: bool = True
) -> Any:
    reply = stub(cluster, address).Query(
        registry_pb2.MetadataRequest(
            op=op, args=json.dumps(args).encode(), linearizable=linearizable
        ),
        timeout=10,
    )
    return json.loads(reply.result)


def listed_tags(cluster: LocalCluster, address: str, limit: float = 30.0) -> set[str]:
    """Every tag of REPO, read linearizably through `address`; waits while the node (just
    restarted, say) does not answer yet."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return set(
                query(cluster, address, "tags_list", {"repo": REPO, "n": None, "last": None})[
                    "tags"
                ]
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Writers:
    """Threads committing `tag_cmd`s to random nodes; `acked` holds every acknowledged tag."""

    def __init__(self, cluster: LocalCluster, prefix: str, threads: int = 4) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.acked: set[str] = set()
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.count()} of {n} commands acknowledged")
            time.sleep(0.02)

    def _run(self) -> None:
        with self._lock:
            mine = self._next
            self._next += 1
        i = mine
        while not self._stop.is_set():
            args = tag_cmd(i, self.prefix)
            address = self.cluster.node_grpc(random.randrange(self.cluster.node_count))
            try:
                command(self.cluster, address, "manifest_put", args, timeout=3.0)
            except grpc.RpcError:
                time.sleep(0.05)
                continue  # outcome unknown: retried (idempotent), maybe through another node
            with self._lock:
                self.acked.add(args["tag"])
            i += len(self._threads)


@pytest.fixture
def three_nodes(make_cluster: Callable[..., LocalCluster]) -> Iterator[LocalCluster]:
    cluster = make_cluster(nodes=3, gateways=0, extra={"node": CLUSTER_NODE_SETTINGS})
    yield cluster


@pytest.mark.cluster
def test_follower_command_is_visible_through_another_node(three_nodes: LocalCluster) -> None:
    leader = three_nodes.leader_index()
    assert leader is not None
    follower, other = [i for i in range(3) if i != leader]
    command(three_nodes, three_nodes.node_grpc(follower), "manifest_put", tag_cmd(1))
    record = query(
        three_nodes, three_nodes.node_grpc(other), "tag_get", {"repo": REPO, "tag": "t1"}
    )
    assert record["digest"] == dg("t1")
    with pytest.raises(grpc.RpcError) as err:
        query(three_nodes, three_nodes.node_grpc(other), "tag_get", {"repo": REPO, "tag": "absent"})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("ManifestUnknown:")
    with pytest.raises(grpc.RpcError) as err:
        command(
            three_nodes,
            three_nodes.node_grpc(other),
            "upload_append",
            {"upload": "u", "repo": REPO, "offset": 3, "chunks": [], "request": "r", "now": 1},
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "RangeInvalid:size=0"
    for call in (
        lambda: command(three_nodes, three_nodes.node_grpc(other), "manifest_put", {"repo": REPO}),
        lambda: query(three_nodes, three_nodes.node_grpc(other), "no_such_query", {}),
        lambda: command(three_nodes, three_nodes.node_grpc(other), "blob_mount", {"repo": "UP"}),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().split(":")[0] in ("RequestInvalid", "NameInvalid")
    status = three_nodes.node_status(other)
    assert status.leader_raft_address == three_nodes.node_raft(leader)
    assert json.loads(status.extra)["metadata"]["manifests"] == 1
    # SIGTERM: a clean shutdown, exit status 0.
    three_nodes.kill_node(other, signal.SIGTERM)
    proc = three_nodes.node_procs[other]
    assert proc is not None and proc.returncode == 0


@pytest.mark.cluster
@pytest.mark.chaos
def test_leader_sigkill_elects_a_new_leader_and_keeps_acknowledged(
    three_nodes: LocalCluster,
) -> None:
    old_leader = three_nodes.leader_index()
    assert old_leader is not None
    with Writers(three_nodes, "k") as writers:
        writers.wait_for(100)
        three_nodes.kill_node(old_leader, signal.SIGKILL)
        at_kill = writers.count()
        writers.wait_for(at_kill + 100)
    acked = writers.acked
    survivors = [i for i in range(3) if i != old_leader]
    new_leader = three_nodes.leader_index()
    assert new_leader in survivors
    for i in survivors:
        assert acked <= listed_tags(three_nodes, three_nodes.node_grpc(i))
    three_nodes.start_node(old_leader)
    three_nodes.wait_ready(timeout=60)
    assert acked <= listed_tags(three_nodes, three_nodes.node_grpc(old_leader))


@pytest.mark.cluster
@pytest.mark.chaos
def test_whole_cluster_sigkill_under_writes_keeps_acknowledged(three_nodes: LocalCluster) -> None:
    acked: set[str] = set()
    for round_ in range(3):
        with Writers(three_nodes, f"r{round_}-") as writers:
            writers.wait_for(400)
            procs = [p for p in three_nodes.node_procs if p is not None]
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
            three_nodes.kill_all()
        acked |= writers.acked
        three_nodes.start(timeout=60)
        for i in range(3):
            missing = acked - listed_tags(three_nodes, three_nodes.node_grpc(i))
            assert not missing, f"round {round_}: node {i} lost {len(missing)} acknowledged"
    dumps = [three_nodes.node_data_dir(i) / "raft" / "state.dump" for i in range(3)]
    assert any(path.exists() for path in dumps), "no snapshot was written: dump path untested"


@pytest.mark.cluster
def test_a_fourth_node_joins_after_a_raft_add(three_nodes: LocalCluster, tmp_path: Path) -> None:
    leader = three_nodes.leader_index()
    assert leader is not None
    command(three_nodes, three_nodes.node_grpc(leader), "manifest_put", tag_cmd(1))
    raft_addr = f"127.0.0.1:{free_port()}"
    grpc_addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / "n4.toml"
    config.write_text(
        to_toml(
            {
                "cluster": {"secret": three_nodes.layout.secret},
                "node": {
                    "id": "n4",
                    "data_dir": str(tmp_path / "n4"),
                    "grpc_listen": grpc_addr,
                    "raft_listen": raft_addr,
                    "peers": [three_nodes.node_raft(i) for i in range(3)],
                },
            }
        )
    )
    with open(tmp_path / "n4.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cargohold_cli", "node", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        result = raft_utility(
            three_nodes.node_raft(leader), three_nodes.layout.secret, ["add", raft_addr]
        )
        assert result == f"SUCCESS ADD {raft_addr}"
        deadline = time.monotonic() + 30
        while "n4" not in {m["id"] for m in three_nodes.members(0)}:
            assert time.monotonic() < deadline, "n4 never committed its member_join"
            time.sleep(0.1)
        # The new member serves linearizable reads of what was committed before it came.
        assert "t1" in listed_tags(three_nodes, grpc_addr)
        status = raft_utility(three_nodes.node_raft(leader), three_nodes.layout.secret, ["status"])
        assert status["partner_nodes_count"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.cluster
@pytest.mark.chaos
def test_a_node_far_behind_catches_up_from_a_snapshot(three_nodes: LocalCluster) -> None:
    leader = three_nodes.leader_index()
    assert leader is not None
    behind = (leader + 1) % 3
    three_nodes.kill_node(behind, signal.SIGKILL)
    dump = three_nodes.node_data_dir(leader) / "raft" / "state.dump"
    with Writers(three_nodes, "far") as writers:
        writers.wait_for(CLUSTER_NODE_SETTINGS["raft_compaction_min_entries"] + 50)
        # The leader's journal no longer reaches back to where `behind` stopped.
        deadline = time.monotonic() + 30
        while not dump.exists():
            assert time.monotonic() < deadline, "the leader never compacted its log"
            time.sleep(0.1)
    acked = writers.acked
    three_nodes.start_node(behind)
    assert acked <= listed_tags(three_nodes, three_nodes.node_grpc(behind))
    received = three_nodes.node_data_dir(behind) / "raft" / "state.dump"
    assert received.exists(), "caught up without a snapshot: the install path is untested"


@pytest.mark.cluster
def test_a_node_with_an_unreadable_snapshot_exits(tmp_path: Path) -> None:
    raft_dir = tmp_path / "n1" / "raft"
    raft_dir.mkdir(parents=True)
    (raft_dir / "state.dump").write_bytes(b"not a snapshot")
    config = tmp_path / "n1.toml"
    config.write_text(
        to_toml(
            {
                "cluster": {"secret": "s"},
                "node": {
                    "id": "n1",
                    "data_dir": str(tmp_path / "n1"),
                    "grpc_listen": f"127.0.0.1:{free_port()}",
                    "raft_listen": f"127.0.0.1:{free_port()}",
                    "peers": [],
                },
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cargohold_cli", "node", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert b"cannot load the raft snapshot" in stderr


async def test_waiting_for_a_forced_snapshot_ends_when_its_writer_fails(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """`Admin.Trigger(snapshot, wait)` returned only once a snapshot was taken: a writer
    that failed (a full disk, a crashed child) left the caller waiting for an hour."""
    from node.metadata.snapshot_role import SnapshotRole

    member = members(member_config(tmp_path, raft_snapshot_fork=False))
    await member.command("manifest_put", tag_cmd(1))

    def broken(head: bytes, snap: dict[str, Any]) -> int:
        raise OSError("ENOSPC (test)")

    member._write_file = broken  # type: ignore[method-assign]
    progress = await asyncio.wait_for(SnapshotRole(member).trigger(wait=True), 30)
    assert progress["failed"] == 1 and progress["taken"] == 0
    assert not member.snapshot_stats()["writing"]


async def test_a_hung_snapshot_child_is_killed_and_the_snapshot_retried_later(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """A forked child of a process with gRPC threads can hang on a lock held at the fork;
    past `raft_snapshot_child_timeout` it is killed and the snapshot counts as failed
    (before, the member answered SERIALIZING for ever and never snapshotted again)."""
    from node.metadata.snapshot_role import SnapshotRole

    cfg = member_config(tmp_path, raft_snapshot_fork=True, raft_snapshot_child_timeout=1.0)
    member = members(cfg)
    await member.command("manifest_put", tag_cmd(1))

    def hang(head: bytes, snap: dict[str, Any]) -> int:
        time.sleep(3600)
        return 0

    member._write_file = hang  # type: ignore[method-assign]
    progress = await asyncio.wait_for(SnapshotRole(member).trigger(wait=True), 30)
    assert progress["failed"] == 1 and progress["taken"] == 0
    assert not member.snapshot_stats()["writing"]
    assert member._dump_pid == 0  # reaped, not left running


async def test_the_snapshot_child_runs_below_the_node_cpu_priority(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> None:
    """`raft_snapshot_nice`: the forked child that writes a snapshot yields the CPU to the
    node's serving threads (PUTs overlapping a snapshot at 1 M manifests)."""
    from node.metadata.snapshot_role import SnapshotRole

    member = members(member_config(tmp_path, raft_snapshot_fork=True, raft_snapshot_nice=7))
    await member.command("manifest_put", tag_cmd(1))
    seen = tmp_path / "child-nice"
    write = member._write_file

    def recording(head: bytes, snap: dict[str, Any]) -> int:
        seen.write_text(str(os.nice(0)))  # in the child
        return write(head, snap)

    member._write_file = recording  # type: ignore[method-assign]
    progress = await asyncio.wait_for(SnapshotRole(member).trigger(wait=True), 30)
    assert progress["taken"] == 1
    assert int(seen.read_text()) == min(19, os.nice(0) + 7)


def test_the_snapshot_pacer_keeps_the_writer_busy_its_duty_share() -> None:
    """`raft_snapshot_duty_cycle`: after each piece the writer sleeps so that it works that
    share of the time (a fake clock: nothing is timed)."""
    from node.metadata.raft import Pacer

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(0.25, clock=lambda: now[0], sleep=sleep)
    for work in (0.1, 0.3, 0.0):
        now[0] += work
        pacer.pause()
    assert slept == pytest.approx([0.3, 0.9, 0.0])
    flat_out: list[float] = []
    full = Pacer(1.0, clock=lambda: now[0], sleep=flat_out.append)
    now[0] += 5.0
    full.pause()
    assert flat_out == []  # duty 1: never sleeps


async def test_the_snapshot_writer_pauses_after_every_piece_it_writes(
    tmp_path: Path, members: Callable[..., RaftMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pacer is used where it matters: `_write_file` builds one with the configured
    duty and calls `pause` once after each encoded piece goes to the file (so no piece of
    the encoding runs unpaced), and the file it writes is a complete, checked dump."""
    from node.metadata import raft as raft_module
    from node.metadata.dump_file import check_dump, head_bytes
    from node.metadata.state import MetadataState

    built: list[float] = []
    events: list[str] = []

    class RecordingPacer:
        def __init__(self, duty: float) -> None:
            built.append(duty)

        def pause(self) -> None:
            events.append("pause")

    encode = MetadataState.encode_snapshot

    def counting_encode(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        for piece in encode(*args, **kwargs):
            events.append("piece")
            yield piece

    monkeypatch.setattr(raft_module, "Pacer", RecordingPacer)
    monkeypatch.setattr(MetadataState, "encode_snapshot", staticmethod(counting_encode))
    member = members(member_config(tmp_path, raft_snapshot_duty_cycle=0.3))
    for i in range(300):
        member.state.apply("manifest_put", tag_cmd(i))
    head = head_bytes((("entry-b", 2, 1), ("entry-a", 1, 1), {"127.0.0.1:1"}))
    size = member._write_file(head, member.state.snapshot())
    assert built == [0.3]
    pieces = events.count("piece")
    assert pieces > 1
    assert events == ["piece", "pause"] * pieces  # a pause after every piece, no other
    check = check_dump(member._dump_writing)
    assert check.verified and check.size == size
