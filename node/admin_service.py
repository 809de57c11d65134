"""The gRPC `Admin` service: one node's status (identity, Raft, chunk store, state counts)."""

from __future__ import annotations

import json
from typing import Any, Protocol

import grpc

from cargohold.config import Config
from cargohold.errors import RegistryError
from node.metadata.raft import RaftMember
from node.metadata.service import abort_with
from protos import registry_pb2, registry_pb2_grpc


class _StatsSource(Protocol):
    """The part of the chunk store this service reads: stats() -> .count, .bytes."""

    async def stats(self) -> Any: ...


class AdminServicer(registry_pb2_grpc.AdminServicer):
    def __init__(self, cfg: Config, raft: RaftMember, store: _StatsSource) -> None:
        self._cfg = cfg
        self._raft = raft
        self._store = store

    async def Status(self, request: registry_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> registry_pb2.StatusReply:
        try:
            raft = self._raft.status()
            stats = await self._store.stats()
            counts = self._raft.local_query("status", {})
        except RegistryError as err:
            await abort_with(context, err)
        extra = {
            "grpc_address": self._cfg.node.grpc_advertise,
            "metadata": counts,
            "raft": {"term": raft.term, "log_len": raft.log_len, "members": raft.members,
                     "has_quorum": raft.has_quorum},
            "chunks_quarantined": getattr(stats, "quarantined", 0),
        }
        return registry_pb2.StatusReply(
            node_id=self._cfg.node.id,
            raft_address=raft.self_address,
            leader_raft_address=raft.leader or "",
            is_leader=raft.is_leader,
            raft_commit_index=raft.commit_index,
            raft_last_applied=raft.last_applied,
            chunk_count=stats.count,
            chunk_bytes=stats.bytes,
            extra=json.dumps(extra, separators=(",", ":")).encode(),
        )
