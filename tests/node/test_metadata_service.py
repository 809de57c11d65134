"""The Metadata gRPC service's packed commands (`Metadata.Commands`) on a real grpc.aio server
in front of an in-process one-member Raft group: each command answers as its own `Command`
would (result, or code, details and detail trailer), and the pack shares log entries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from cargohold.config import Config
from cargohold.errors import RangeInvalid, RequestInvalid, from_grpc_details
from cargohold.pack_items import item_error
from cargohold_cli.devcluster import free_port
from node.metadata.raft import RaftMember
from node.metadata.service import MetadataServicer
from node.metrics import PackCounts
from protos import registry_pb2 as pb
from protos import registry_pb2_grpc as pb_grpc

REPO = "pack/test"


def member_config(data_dir: Path) -> Config:
    cfg = Config()
    cfg.node.data_dir = str(data_dir)
    cfg.node.raft_listen = cfg.node.raft_advertise = f"127.0.0.1:{free_port()}"
    cfg.node.peers = []
    cfg.cluster.secret = "test-secret"
    return cfg


def tag_cmd(i: int) -> dict[str, Any]:
    """A manifest (no blobs) tagged `t<i>`."""
    digest = "sha256:" + hashlib.sha256(f"t{i}".encode()).hexdigest()
    return {
        "repo": REPO,
        "digest": digest,
        "media_type": "application/json",
        "recipe": {"size": 0, "chunks": []},
        "tag": f"t{i}",
        "now": 1.0,
    }


@pytest.fixture
async def metadata(
    tmp_path: Path, members: Callable[..., RaftMember]
) -> AsyncIterator[tuple[pb_grpc.MetadataStub, RaftMember, PackCounts]]:
    member = members(member_config(tmp_path))
    await member.barrier()
    packs = PackCounts()
    server = grpc.aio.server()
    pb_grpc.add_MetadataServicer_to_server(MetadataServicer(member, packs=packs), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.MetadataStub(channel), member, packs
    finally:
        await channel.close()
        await server.stop(None)


def request(op: str, args: Any) -> pb.MetadataRequest:
    raw = args if isinstance(args, bytes) else json.dumps(args).encode()
    return pb.MetadataRequest(op=op, args=raw)


def bad_append(upload: str) -> pb.MetadataRequest:
    """An append at the wrong offset: RangeInvalid."""
    args = {"upload": upload, "repo": REPO, "offset": 5, "chunks": [], "request": "r", "now": 1.0}
    return request("upload_append", args)


async def test_each_command_of_a_pack_answers_as_its_own_command(
    metadata: tuple[pb_grpc.MetadataStub, RaftMember, PackCounts],
) -> None:
    stub, member, packs = metadata
    before = member.status().commit_index
    good = [request("manifest_put", tag_cmd(i)) for i in range(20)]
    bad = [bad_append("u1"), request("no_such_op", {}), request("manifest_put", b"[1]")]
    reply = await stub.Commands(pb.MetadataPack(commands=[*good, *bad], request_ids=["a", "b"]))
    assert len(reply.items) == len(good) + len(bad)
    for item in reply.items[: len(good)]:
        assert item.code == 0
        assert pb.MetadataReply.FromString(item.reply).result == b"null"
    # Twenty commands of one pack: one log entry (two at most, should a flush run between).
    assert member.status().commit_index - before <= 2
    for item, single, kind in zip(
        reply.items[len(good) :], bad, (RangeInvalid, RequestInvalid, RequestInvalid), strict=True
    ):
        packed = item_error(item)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Command(single)
        assert packed.code() == info.value.code()
        assert packed.details() == info.value.details()
        got = from_grpc_details(packed.details(), packed.trailing_metadata())
        want = from_grpc_details(info.value.details(), info.value.trailing_metadata())
        assert isinstance(got, kind) and isinstance(want, kind)
        assert got.detail == want.detail
    listed = await member.query("status", {}, linearizable=True)
    assert listed["manifests"] == len(good)
    assert packs.calls["Metadata/Commands"] == 1
    assert packs.requests["Metadata/Commands"] == len(good) + len(bad)


async def test_an_empty_pack_answers_no_items(
    metadata: tuple[pb_grpc.MetadataStub, RaftMember, PackCounts],
) -> None:
    stub, _, _ = metadata
    assert list((await stub.Commands(pb.MetadataPack())).items) == []
