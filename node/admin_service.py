"""The gRPC `Admin` service: one node's status (identity, Raft, chunk store, disk space and
reserve, state counts, the chunk store's LMDB file against the pages its data uses),
background-role triggers (`Trigger`: repair, scrub, gc, gc-dry-run, snapshot) and
membership changes (delegated to node/membership.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import grpc

from cargohold.config import Config
from cargohold.errors import NotFound, RegistryError, Unavailable
from cargohold.grpc_status import abort_with
from cargohold.metadata_api import Status, local
from node.disk import DiskSpace
from node.membership import Membership
from node.metadata.raft import RaftMember, resent_truncations
from protos import registry_pb2, registry_pb2_grpc


class _StatsSource(Protocol):
    """The part of the chunk store this service reads: stats() -> .count, .bytes."""

    async def stats(self) -> Any: ...


class _Role(Protocol):
    """A background role (node/repair.py, node/scrub.py) as the Admin service sees it."""

    def progress(self) -> dict[str, Any]: ...

    async def trigger(self, wait: bool = False) -> dict[str, Any]: ...


class AdminServicer(registry_pb2_grpc.AdminServicer):
    def __init__(
        self,
        cfg: Config,
        raft: RaftMember,
        store: _StatsSource,
        roles: dict[str, _Role] | None = None,
        membership: Membership | None = None,
        space: DiskSpace | None = None,
    ) -> None:
        self._cfg = cfg
        self._raft = raft
        self._store = store
        self._roles = roles or {}
        self._membership = membership
        self._space = space

    async def Status(
        self, request: registry_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.StatusReply:
        try:
            raft = self._raft.status()
            stats = await self._store.stats()
            counts = local(self._raft, Status()).to_json()
            disk = await asyncio.to_thread(self._space.usage) if self._space else None
        except RegistryError as err:
            await abort_with(context, err)
        extra = {
            "grpc_address": self._cfg.node.grpc_advertise,
            "metadata": counts,
            "raft": {
                "term": raft.term,
                "log_len": raft.log_len,
                "members": raft.members,
                "has_quorum": raft.has_quorum,
                "resent_truncations": resent_truncations(),
                "log": self._raft.journal_space()._asdict(),
            },
            "chunks_quarantined": getattr(stats, "quarantined", 0),
        }
        for name, role in self._roles.items():
            if not getattr(role, "alias", False):  # "gc-dry-run" is "gc" reached another way
                extra[name] = role.progress()
        file_usage = getattr(self._store, "file_usage", None)
        if file_usage is not None:
            try:
                extra["lmdb"] = await asyncio.to_thread(file_usage)
            except (RegistryError, OSError):
                pass
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
            disk_capacity_bytes=disk.capacity if disk else 0,
            disk_used_bytes=disk.used if disk else 0,
            disk_free_bytes=disk.free if disk else 0,
            disk_reserve_bytes=disk.reserve if disk else 0,
            disk_full=disk.full if disk else False,
        )

    async def Trigger(
        self, request: registry_pb2.TriggerRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.TriggerReply:
        role = self._roles.get(request.role)
        if role is None:
            await abort_with(
                context,
                NotFound(
                    f"no background role {request.role!r}", detail={"roles": sorted(self._roles)}
                ),
            )
        progress = await role.trigger(wait=request.wait)
        return registry_pb2.TriggerReply(
            progress=json.dumps(progress, separators=(",", ":")).encode()
        )

    async def _member_change(
        self, context: grpc.aio.ServicerContext, change: Any
    ) -> registry_pb2.MemberReply:
        if self._membership is None:
            await abort_with(context, Unavailable("membership changes are not served here"))
        try:
            members = await change(self._membership)
        except RegistryError as err:
            await abort_with(context, err)
        return registry_pb2.MemberReply(members=json.dumps(members, separators=(",", ":")).encode())

    async def AddMember(
        self, request: registry_pb2.MemberRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MemberReply:
        return await self._member_change(
            context, lambda m: m.add(request.id, request.grpc, request.raft)
        )

    async def SetMemberState(
        self, request: registry_pb2.MemberRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MemberReply:
        return await self._member_change(context, lambda m: m.set_state(request.id, request.state))

    async def RemoveMember(
        self, request: registry_pb2.MemberRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.MemberReply:
        return await self._member_change(
            context, lambda m: m.remove(request.id, force=request.force)
        )
