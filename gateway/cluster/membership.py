"""The gateway's view of the cluster: members, the Raft leader, and who failed recently.

Re-learned every `gateway.members_refresh_seconds` (more often right after start while a
configured node has not joined yet: `gateway.members_settle_seconds`) and soon after a
failure, from the first node that answers the `members` query and `Admin.Status` while
knowing a leader (seeds are `gateway.nodes`). A node that knows no leader (cut off by a
partition, or an election is running) may hold a stale view: it is used only when no node
knows a leader.
While it settles (a configured node missing from the list, within the settle period), a
chunk write that would reach fewer than `cluster.replicas` nodes re-learns the list first
(`refresh_shared`): the cluster can be ready, every node joined, before the next periodic
refresh, and a push meanwhile would be acknowledged with a copy short until repair runs.
Every other part of the client reads members and leader from here and reports failures
to `failures` (`RecentFailures`). Each periodic refresh also asks every active member
whether its disk is full (`Admin.Status.disk_full`) and records the answer in `full`
(`FullNodes`), so placement stops and resumes writing to a node by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import grpc.aio

from cargohold.config import Config
from cargohold.errors import Unavailable
from cargohold.grpc_channels import ChannelPool
from cargohold.log import log_event
from cargohold.metadata_api import Members
from cargohold.periodic import cancel_and_wait, raise_if_cancelling
from gateway.cluster.background import BackgroundTasks
from gateway.cluster.failures import RecentFailures
from gateway.cluster.fullness import FullNodes
from protos import registry_pb2

logger = logging.getLogger("cargohold.gateway.cluster")

# A node that failed is tried last for this long.
_DOWN_SECONDS = 2.0
# Status/members look-ups are small: they get a short deadline.
_PROBE_TIMEOUT = 2.0
# Failures within this long of the last refresh do not start another one.
_REFRESH_GAP_SECONDS = 0.5


@dataclass(frozen=True)
class Member:
    id: str
    grpc: str
    raft: str
    state: str


def disk_figures(node_id: str, status: registry_pb2.StatusReply) -> dict[str, object]:
    """A node's disk as its Admin.Status tells it, in the keys of its StorageFull detail."""
    return {
        "node": node_id,
        "free_bytes": status.disk_free_bytes,
        "reserve_bytes": status.disk_reserve_bytes,
        "capacity_bytes": status.disk_capacity_bytes,
        "used_bytes": status.disk_used_bytes,
    }


class MembershipView:
    """Members and leader as last learned; see the module docstring."""

    def __init__(self, cfg: Config, pool: ChannelPool, background: BackgroundTasks) -> None:
        self._cfg = cfg
        self._pool = pool
        self._background = background
        self.failures = RecentFailures(_DOWN_SECONDS, on_failure=self.suspect)
        self.full = FullNodes(cfg.gateway.full_node_recheck_seconds)
        self._members: list[Member] = []
        self._by_id: dict[str, Member] = {}
        self._leader: str | None = None  # grpc address
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0
        self._refresh_task: asyncio.Task[None] | None = None
        self._closed = False
        self._started = time.monotonic()

    # -- what the rest of the client reads ----------------------------------------------
    @property
    def members(self) -> list[Member]:
        return list(self._members)

    @property
    def leader(self) -> str | None:
        return self._leader

    def member(self, node_id: str) -> Member:
        return self._by_id[node_id]

    def active_ids(self) -> list[str]:
        """Members that take new chunks."""
        return [m.id for m in self._members if m.state == "active"]

    def present_ids(self) -> list[str]:
        """Members that may still hold chunks (all but removed ones)."""
        return [m.id for m in self._members if m.state != "removed"]

    def probe_addresses(self) -> list[str]:
        """Leader, members, seeds: each once, in that order, limited ones last."""
        seen: dict[str, None] = {}
        if self._leader:
            seen[self._leader] = None
        for m in self._members:
            if m.state != "removed":
                seen[m.grpc] = None
        for address in self._cfg.gateway.nodes:
            seen[address] = None
        return self.failures.healthy_first(seen, lambda a: a)

    # -- failures -----------------------------------------------------------------------
    def suspect(self, address: str) -> None:
        """`address` failed a call: it is no longer taken for the leader; re-learn soon."""
        if address == self._leader:
            self._leader = None
        self.refresh_soon()

    def refresh_soon(self) -> None:
        if self._closed or self._refresh_lock.locked():
            return
        if time.monotonic() - self._last_refresh < _REFRESH_GAP_SECONDS:
            return
        self._background.track(asyncio.create_task(self.refresh_quietly()))

    # -- refreshing ---------------------------------------------------------------------
    def start(self) -> None:
        """Refresh every `gateway.members_refresh_seconds` until `stop`."""
        self._started = time.monotonic()
        self._refresh_task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        self._closed = True
        await cancel_and_wait(self._refresh_task)

    async def _refresh_loop(self) -> None:
        while True:
            raise_if_cancelling()  # a close() that landed in a call (refresh catches those)
            await asyncio.sleep(self._next_refresh_in(time.monotonic() - self._started))
            try:
                await self.refresh()
            except Unavailable:
                log_event(logger, "cluster.refresh_failed", logging.DEBUG)
            await self.probe_disks()

    def _next_refresh_in(self, since_start: float) -> float:
        """`members_refresh_seconds`, or the settle period's short interval while a
        configured node is missing from the list shortly after start."""
        gw = self._cfg.gateway
        if since_start < gw.members_settle_seconds and not self.knows_every_seed():
            return min(gw.members_settle_refresh_seconds, gw.members_refresh_seconds)
        return gw.members_refresh_seconds

    def settling(self) -> bool:
        """Within the settle period and a configured node is not in the list yet."""
        settle = self._cfg.gateway.members_settle_seconds
        return time.monotonic() - self._started < settle and not self.knows_every_seed()

    def knows_every_seed(self) -> bool:
        """Every node named in `gateway.nodes` is in the member list (not removed)."""
        known = {m.grpc for m in self._members if m.state != "removed"}
        return set(self._cfg.gateway.nodes) <= known

    async def probe_disks(self) -> None:
        """Ask every active member whether it is full; a silent one keeps its mark."""

        async def one(member: Member) -> None:
            try:
                status = await self._pool.node(member.grpc).admin.Status(
                    registry_pb2.StatusRequest(), timeout=_PROBE_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                return
            if status.disk_full:
                self.full.mark(member.grpc, disk_figures(member.id, status))
            else:
                self.full.clear(member.grpc)

        await asyncio.gather(*(one(m) for m in self._members if m.state == "active"))

    async def refresh_quietly(self) -> None:
        with contextlib.suppress(Unavailable):
            await self.refresh()

    async def refresh_unless_recent(self) -> None:
        """`refresh_quietly`, unless the list was learned within `_REFRESH_GAP_SECONDS`
        (a burst of failing writes re-learns it once, not once each)."""
        if time.monotonic() - self._last_refresh >= _REFRESH_GAP_SECONDS:
            async with self._refresh_lock:
                pass  # one already running: wait for it, then judge its result's age
            if time.monotonic() - self._last_refresh >= _REFRESH_GAP_SECONDS:
                await self.refresh_quietly()

    async def refresh_shared(self) -> None:
        """`refresh_quietly`, or, when a refresh is already running, its result: callers
        that arrive together (the chunks of one blob) cause one refresh, not one each."""
        if self._refresh_lock.locked():
            async with self._refresh_lock:
                return
        await self.refresh_quietly()

    async def relearn_for_write(self) -> None:
        """Re-learn the list for a chunk write that found too few members in it. While a
        configured node is missing, even a list learned a moment ago may be the stale one
        (`refresh_shared`); with every configured node listed, one refresh per burst of
        failing writes is enough (`refresh_unless_recent`)."""
        if self.knows_every_seed():
            await self.refresh_unless_recent()
        else:
            await self.refresh_shared()

    async def ensure_members(self) -> None:
        if not self._members:
            await self.refresh()

    async def refresh(self) -> None:
        """Re-learn the member list and the leader from the first node that answers and
        knows a Raft leader. Answering without knowing one does not clear a node's
        "failed recently" mark (else a partitioned ex-leader, which still answers probes,
        would stay first in line for every query, each waiting out a barrier)."""
        async with self._refresh_lock:
            self._last_refresh = time.monotonic()
            leaderless: tuple[bytes, registry_pb2.StatusReply] | None = None
            for address in self.probe_addresses():
                node = self._pool.node(address)
                try:
                    reply = await node.metadata.Query(
                        registry_pb2.MetadataRequest(op=Members.op, args=Members().args_json()),
                        timeout=_PROBE_TIMEOUT,
                    )
                    status = await node.admin.Status(
                        registry_pb2.StatusRequest(), timeout=_PROBE_TIMEOUT
                    )
                except grpc.aio.AioRpcError:
                    self.failures.limit(address)
                    continue
                if not status.leader_raft_address:
                    if leaderless is None:
                        leaderless = (reply.result, status)
                    continue
                self.failures.clear(address)
                await self._apply_view(reply.result, status)
                return
            if leaderless is not None:
                await self._apply_view(*leaderless)
                return
        raise Unavailable("no storage node answers", detail={"seeds": self._cfg.gateway.nodes})

    async def _apply_view(self, members_json: bytes, status: registry_pb2.StatusReply) -> None:
        members = [
            Member(m.id, m.grpc, m.raft, m.state or "active")
            for m in Members.decode_result(json.loads(members_json or b"[]"))
        ]
        if not members:
            # Not joined yet: the seeds themselves, as they name themselves.
            members = await self._members_from_seeds()
        self._set_members(members)
        self._set_leader(status)

    async def _members_from_seeds(self) -> list[Member]:
        found: list[Member] = []
        for address in self._cfg.gateway.nodes:
            with contextlib.suppress(grpc.aio.AioRpcError):
                status = await self._pool.node(address).admin.Status(
                    registry_pb2.StatusRequest(), timeout=_PROBE_TIMEOUT
                )
                found.append(Member(status.node_id, address, status.raft_address, "active"))
        return found

    def _set_members(self, members: list[Member]) -> None:
        if members != self._members:
            log_event(
                logger,
                "cluster.members",
                members=",".join(f"{m.id}@{m.grpc}/{m.state}" for m in members),
            )
        self._members = members
        self._by_id = {m.id: m for m in members}

    def _set_leader(self, status: registry_pb2.StatusReply) -> None:
        leader = None
        if status.leader_raft_address:
            for m in self._members:
                if m.raft == status.leader_raft_address:
                    leader = m.grpc
        self._leader = leader
