"""Membership changes (add, drain, remove), run on the Raft leader for the Admin RPCs.

The authoritative member list is the replicated state (`member_join`, `member_set_state`);
pysyncobj's own node set is kept in step with it here, one change at a time:

- add: pysyncobj `addNodeToCluster(raft)` (skipped when already a Raft member), then
  `member_join` and, when the id was known in another state, `member_set_state active`.
  From then on gateways place writes on it and every node's repair moves the chunks it now
  owns to it.
- drain: `member_set_state draining`: gateways stop writing to it, reads still find it,
  and its own repair copies every chunk to the owners computed without it, deleting each
  local copy once those confirm.
- remove: refused (`Conflict`) while the member is `active`, or answers `Admin.Status` with
  chunks left, or does not answer (unless `force`: a dead host, whose chunks repair rebuilds
  from the other copies). Then `member_set_state removed` and `removeNodeFromCluster(raft)`.
  pysyncobj refuses to remove the leader itself, so on the leader this first hands
  leadership to the most caught-up follower (pysyncobj's `transfer` utility message, which
  runs on its tick thread) and answers `Unavailable`: the caller retries on the new leader.

Requests reaching a follower answer `Unavailable("not the raft leader")` with the leader's
Raft address in the detail; `cargohold_cli.admin` retries them on the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pysyncobj import FAIL_REASON
from pysyncobj.utility import UtilityException

from cargohold import metadata_api as api
from cargohold.config import Config
from cargohold.errors import Conflict, NotFound, RegistryError, RequestInvalid, Unavailable
from cargohold.log import log_event
from node.metadata.raft import RaftMember, raft_utility
from node.peers import PeerPool

logger = logging.getLogger("cargohold.node.membership")

_SETTABLE_STATES = ("active", "draining")


def _resolve(fut: asyncio.Future[int], error: int) -> None:
    if not fut.done():
        fut.set_result(error)


class Membership:
    def __init__(self, cfg: Config, raft: RaftMember, peers: PeerPool) -> None:
        self._cfg = cfg
        self._raft = raft
        self._meta = api.Metadata(raft)
        self._peers = peers
        self._lock = asyncio.Lock()  # one membership change at a time (pysyncobj's rule)

    # -- helpers ---------------------------------------------------------------------------
    def _require_leader(self) -> None:
        if not self._raft.is_leader():
            raise Unavailable("not the raft leader", detail={"leader": self._raft.leader_address()})

    def _member(self, node_id: str) -> api.MemberInfo:
        for m in api.local(self._raft, api.Members()):
            if m.id == node_id:
                return m
        raise NotFound(f"member {node_id} unknown")

    async def _members(self) -> list[dict[str, Any]]:
        """The member list as the Admin RPCs answer it (the `members` query's JSON)."""
        return [m.to_json() for m in await self._meta.members()]

    async def _raft_change(self, kind: str, address: str) -> None:
        """pysyncobj add/remove of one Raft node; returns once the change is applied here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        def done(_result: Any, error: int) -> None:  # tick thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, error)

        if kind == "add":
            self._raft.addNodeToCluster(address, callback=done)
        else:
            self._raft.removeNodeFromCluster(address, callback=done)
        timeout = self._cfg.node.raft_command_timeout
        try:
            error = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Unavailable(
                f"raft {kind} of {address} not applied within {timeout}s; retry"
            ) from None
        if error != FAIL_REASON.SUCCESS:
            raise Unavailable(
                f"raft {kind} of {address} failed ({error}): another change "
                "may be in progress; retry"
            )
        log_event(logger, "membership.raft_changed", logging.WARNING, kind=kind, address=address)

    async def _transfer_leadership(self) -> None:
        node = self._cfg.node

        def ask() -> str:
            return str(
                raft_utility(
                    node.raft_advertise,
                    self._cfg.cluster.secret,
                    ["transfer", ""],
                    timeout=node.raft_command_timeout,
                    cipher=self._cfg.cluster.raft_cipher,
                )
            )

        try:
            answer = await asyncio.to_thread(ask)
        except UtilityException as exc:
            raise Unavailable(f"leadership transfer failed: {exc}") from None
        log_event(logger, "membership.leadership_transfer", logging.WARNING, answer=answer)

    # -- operations ------------------------------------------------------------------------
    async def add(self, node_id: str, grpc: str, raft: str) -> list[dict[str, Any]]:
        if not (node_id and grpc and raft):
            raise RequestInvalid("add needs id, grpc and raft addresses")
        async with self._lock:
            self._require_leader()
            if raft not in self._raft.status().members:
                await self._raft_change("add", raft)
            await self._meta.member_join(node_id, grpc, raft)
            if self._member(node_id).state != "active":
                await self._meta.member_set_state(node_id, "active")
        log_event(logger, "membership.added", logging.WARNING, id=node_id, grpc=grpc, raft=raft)
        return await self._members()

    async def set_state(self, node_id: str, state: str) -> list[dict[str, Any]]:
        if state not in _SETTABLE_STATES:
            raise RequestInvalid(
                f"state must be one of {_SETTABLE_STATES} (removal is RemoveMember)"
            )
        async with self._lock:
            self._require_leader()
            member = self._member(node_id)
            if member.state == "removed":
                raise Conflict(f"member {node_id} was removed; add it again instead")
            await self._meta.member_set_state(node_id, state)
        log_event(logger, "membership.state_set", logging.WARNING, id=node_id, state=state)
        return await self._members()

    async def remove(self, node_id: str, force: bool = False) -> list[dict[str, Any]]:
        async with self._lock:
            self._require_leader()
            member = self._member(node_id)
            if member.state == "active" and not force:
                raise Conflict(
                    f"member {node_id} is active: drain it first (admin nodes drain {node_id})"
                )
            if member.state != "removed" and not force:
                await self._check_empty(node_id, member.grpc)
            raft = member.raft
            if raft and raft == self._cfg.node.raft_advertise:
                await self._transfer_leadership()
                raise Unavailable(
                    "this node was the raft leader: leadership handed over, retry on the new leader"
                )
            await self._meta.member_set_state(node_id, "removed")
            if raft and raft in self._raft.status().members:
                await self._raft_change("remove", raft)
        log_event(logger, "membership.removed", logging.WARNING, id=node_id, force=force)
        return await self._members()

    async def _check_empty(self, node_id: str, grpc: str) -> None:
        try:
            status = await self._peers.status(grpc, deadline=self._cfg.node.peer_rpc_timeout)
        except RegistryError:
            raise Conflict(
                f"member {node_id} does not answer at {grpc}: cannot confirm it "
                "holds no chunks (use --force for a dead host)"
            ) from None
        if status.chunk_count:
            raise Conflict(
                f"member {node_id} still holds {status.chunk_count} chunks: its "
                "repair has not moved them all yet (admin repair, then retry)",
                detail={"chunks": status.chunk_count},
            )
