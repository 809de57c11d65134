"""The leader's access leases (node/metadata/access_leases.py): a ping is answered only once
leadership is confirmed after it arrived; the fence pushes the revisions (access and
unlink) to every gateway holding a lease and returns once each acknowledged them (or its
lease ran out), never for a gateway that holds none; a new leader's fence waits out its
predecessors' leases; a follower refuses the stream and a leader that cannot confirm its
office ends it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cargohold.errors import Unavailable
from node.metadata.access_leases import AccessLeases, at_least
from protos import registry_pb2 as pb

HOUR = 3600.0


class FakeLeader:
    def __init__(self) -> None:
        self.leader = True
        self.leader_since: float | None = time.monotonic() - 2 * HOUR  # long in office
        self.raftCurrentTerm = 3
        self.revision = "e.1"
        self.unlinks = "e.0"
        self.confirmed = asyncio.Event()
        self.confirmed.set()
        self.refuse = False

    def is_leader(self) -> bool:
        return self.leader

    def leader_address(self) -> str | None:
        return "n1:1" if self.leader else None

    async def confirm_leadership(self, within: float) -> None:
        if self.refuse:
            raise Unavailable("not confirmed")
        await self.confirmed.wait()

    def local_query(self, op: str, args: dict[str, Any]) -> Any:
        assert op in ("access_revision", "unlink_revision")
        return {"revision": self.revision if op == "access_revision" else self.unlinks}


class Gateway:
    """One WatchAccess stream seen from the gateway's side."""

    def __init__(self, leases: AccessLeases) -> None:
        self._pings: asyncio.Queue[pb.AccessPing | None] = asyncio.Queue()
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.seq = 0
        self._task = asyncio.ensure_future(self._pump(leases.watch(self._iter())))

    async def _iter(self) -> AsyncIterator[pb.AccessPing]:
        while True:
            ping = await self._pings.get()
            if ping is None:
                return
            yield ping

    async def _pump(self, stream: AsyncIterator[Any]) -> None:
        try:
            async for message in stream:
                self.received.put_nowait(message)
        except Unavailable as exc:
            self.received.put_nowait(exc)

    def ping(self, seen: str = "", seen_unlinks: str = "e.0") -> int:
        self.seq += 1
        self._pings.put_nowait(pb.AccessPing(seq=self.seq, seen=seen, seen_unlinks=seen_unlinks))
        return self.seq

    def close(self) -> None:
        self._pings.put_nowait(None)

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_ping_is_answered_only_after_leadership_is_confirmed() -> None:
    leader = FakeLeader()
    leader.confirmed.clear()
    gw = Gateway(AccessLeases(leader, HOUR, 0.0))
    gw.ping()
    await _settle()
    assert gw.received.empty()  # no confirmation, no lease
    leader.confirmed.set()
    answer = await gw.received.get()
    assert (answer.seq, answer.revision, answer.lease_seconds, answer.term) == (1, "e.1", HOUR, 3)
    await gw.stop()


async def test_the_fence_pushes_and_waits_for_the_gateways_acknowledgement() -> None:
    leader = FakeLeader()
    leases = AccessLeases(leader, HOUR, 0.0)  # an hour-long lease: only the ack can end it
    gw = Gateway(leases)
    gw.ping()
    assert (await gw.received.get()).revision == "e.1"
    gw.ping(seen="e.1")
    await gw.received.get()
    leader.revision = "e.2"  # a revocation applied on the leader
    fence = asyncio.ensure_future(leases.fence(HOUR))
    pushed = await gw.received.get()
    assert (pushed.seq, pushed.revision) == (0, "e.2")
    await _settle()
    assert not fence.done()  # the gateway has not acknowledged it yet
    gw.ping(seen="e.2")
    await fence
    await gw.stop()


async def test_an_unlink_is_fenced_like_an_access_change() -> None:
    leader = FakeLeader()
    leases = AccessLeases(leader, HOUR, 0.0)
    gw = Gateway(leases)
    gw.ping(seen="e.1")
    assert (await gw.received.get()).unlinks == "e.0"
    leader.unlinks = "e.1"  # a blob link or manifest removed on the leader
    fence = asyncio.ensure_future(leases.fence(HOUR))
    pushed = await gw.received.get()
    assert (pushed.seq, pushed.revision, pushed.unlinks) == (0, "e.1", "e.1")
    gw.ping(seen="e.1")  # the access revision alone does not acknowledge the unlink
    await gw.received.get()
    await _settle()
    assert not fence.done()
    gw.ping(seen="e.1", seen_unlinks="e.1")
    await fence
    await gw.stop()


async def test_a_later_revision_acknowledges_an_earlier_fence() -> None:
    leader = FakeLeader()
    leases = AccessLeases(leader, HOUR, 0.0)
    gw = Gateway(leases)
    gw.ping()
    await gw.received.get()
    leader.revision = "e.2"
    fence = asyncio.ensure_future(leases.fence(HOUR))
    await gw.received.get()
    gw.ping(seen="e.3")  # two changes later (a concurrent fence pushed e.3)
    await fence
    assert at_least("e.10", "e.9") and not at_least("f.10", "e.9") and not at_least("e.1", "e.2")
    await gw.stop()


async def test_the_fence_does_not_wait_for_a_gateway_holding_no_lease() -> None:
    leader = FakeLeader()
    leader.confirmed.clear()  # its ping is never answered: it trusts nothing
    leases = AccessLeases(leader, HOUR, 0.0)
    gw = Gateway(leases)
    gw.ping()
    await _settle()
    leader.revision = "e.2"
    await leases.fence(HOUR)
    await gw.stop()


async def test_a_gateway_gone_with_a_lease_is_waited_out() -> None:
    leader = FakeLeader()
    leases = AccessLeases(leader, 1.0, 0.0)
    gw = Gateway(leases)
    gw.ping()
    await gw.received.get()
    gw.close()  # it went away holding a lease it may still trust
    assert isinstance(await gw.received.get(), Unavailable)
    assert leases.watchers() == 0
    leader.revision = "e.2"
    fence = asyncio.ensure_future(leases.fence(HOUR))
    await _settle()
    assert not fence.done()  # its lease (a second) has not run out
    await fence  # then it has


async def test_a_new_leaders_fence_waits_out_its_predecessors_leases() -> None:
    leader = FakeLeader()
    leader.leader_since = time.monotonic()  # just took office
    leases = AccessLeases(leader, HOUR, 0.0)
    fence = asyncio.ensure_future(leases.fence(2 * HOUR))
    await _settle()
    assert not fence.done()  # a lease the old leader granted might still be trusted
    fence.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fence


async def test_followers_refuse_and_an_unconfirmed_leader_ends_the_stream() -> None:
    leader = FakeLeader()
    leader.leader = False
    gw = Gateway(AccessLeases(leader, HOUR, 0.0))
    assert isinstance(await gw.received.get(), Unavailable)
    with pytest.raises(Unavailable):
        await AccessLeases(leader, HOUR, 0.0).fence(HOUR)
    leader.leader, leader.refuse = True, True  # deposed without knowing it yet
    gw = Gateway(AccessLeases(leader, HOUR, 0.0))
    gw.ping()
    assert isinstance(await gw.received.get(), Unavailable)
