"""The gateway's lease on the leader's access and unlink revisions (gateway/auth/lease.py)
and the directory's use of it (gateway/auth/directory.py): a fresh lease is trusted without a
read, a stale one is not; a pushed revision replaces the trusted one at once and is
acknowledged by the next ping; a stream that ends (the leader stepped down or died) ends
the lease, and the directory falls back to leader reads; a new leader's lease starts only
with its own first answer. Time is a fake clock: nothing here waits for a lease to run out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from cargohold.metadata_api import AccessData, UserInfo
from gateway.auth.directory import Directory
from gateway.auth.lease import AccessLease
from protos import registry_pb2 as pb
from tests.cancel_fakes import converted_cancel

LEASE = 0.25


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCall:
    """A WatchAccess call: the test answers with `answer`/`push`/`end`, sees the pings."""

    def __init__(self) -> None:
        self.pings: list[pb.AccessPing] = []
        self.pinged = asyncio.Event()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    async def write(self, ping: pb.AccessPing) -> None:
        self.pings.append(ping)
        self.pinged.set()

    async def read(self) -> Any:
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True

    def answer(self, seq: int, revision: str, leader: str = "n1", unlinks: str = "") -> None:
        self._inbox.put_nowait(
            pb.AccessLease(
                seq=seq, revision=revision, lease_seconds=LEASE, leader=leader, unlinks=unlinks
            )
        )

    def push(self, revision: str, unlinks: str = "") -> None:
        self._inbox.put_nowait(
            pb.AccessLease(seq=0, revision=revision, leader="n1", unlinks=unlinks)
        )

    def end(self, error: BaseException | None = None) -> None:
        self._inbox.put_nowait(error if error is not None else grpc.aio.EOF)

    async def next_ping(self) -> pb.AccessPing:
        while True:
            await self.pinged.wait()
            self.pinged.clear()
            return self.pings[-1]


class Broken(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
        )


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _lease(clock: Clock) -> AccessLease:
    # A long renew interval: only pings the lease sends at once (the first, acknowledgements)
    # show up in these tests.
    return AccessLease(lambda: ["n1"], lambda address: FakeCall(), 3600.0, clock)


async def test_a_fresh_lease_is_trusted_and_runs_from_the_ping_not_the_answer() -> None:
    clock = Clock()
    lease = _lease(clock)
    call = FakeCall()
    session = asyncio.ensure_future(lease.session(call))
    ping = await call.next_ping()
    assert ping.seq == 1 and lease.revision() is None  # nothing granted yet
    clock.now += 0.1  # the answer comes 0.1 s after the ping was sent
    call.answer(ping.seq, "e.1")
    await _settle()
    assert lease.revision() == "e.1"
    clock.now += LEASE - 0.1 - 0.01  # still inside ping time + lease
    assert lease.revision() == "e.1"
    clock.now += 0.02  # past ping time + lease: stale, although answered 0.1 s later
    assert lease.revision() is None
    call.end()
    await session


async def test_an_answer_to_an_unknown_ping_grants_nothing() -> None:
    clock = Clock()
    lease = _lease(clock)
    call = FakeCall()
    session = asyncio.ensure_future(lease.session(call))
    await call.next_ping()
    call.answer(7, "e.1")
    await _settle()
    assert lease.revision() is None
    call.end()
    await session


async def test_a_pushed_revision_replaces_the_trusted_one_and_is_acknowledged_at_once() -> None:
    clock = Clock()
    lease = _lease(clock)
    call = FakeCall()
    session = asyncio.ensure_future(lease.session(call))
    ping = await call.next_ping()
    call.answer(ping.seq, "e.1")
    await _settle()
    assert call.pings[-1].seen == "e.1"  # a first revision is acknowledged at once too
    call.pinged.clear()
    call.push("e.2")
    ack = await call.next_ping()  # without waiting for the (hour-long) renew interval
    assert ack.seen == "e.2"
    assert lease.revision() == "e.2"  # trusted at once; a push does not extend the lease
    clock.now += LEASE
    assert lease.revision() is None
    call.end()
    await session


async def test_the_unlink_revision_rides_the_same_lease_and_is_acknowledged_too() -> None:
    clock = Clock()
    lease = _lease(clock)
    call = FakeCall()
    session = asyncio.ensure_future(lease.session(call))
    ping = await call.next_ping()
    call.answer(ping.seq, "e.1")  # a leader from before unlink revisions sends none
    await _settle()
    assert lease.revision() == "e.1" and lease.unlinks() is None  # nothing to trust
    call.pinged.clear()
    call.push("e.1", unlinks="e.7")  # a removal about to be acknowledged
    ack = await call.next_ping()
    assert (ack.seen, ack.seen_unlinks) == ("e.1", "e.7")
    assert lease.unlinks() == "e.7"
    clock.now += LEASE  # the same lease: stale together
    assert lease.revision() is None and lease.unlinks() is None
    call.end()
    await session


async def test_a_stream_that_breaks_ends_the_lease_at_once() -> None:
    clock = Clock()
    lease = _lease(clock)
    call = FakeCall()
    session = asyncio.ensure_future(lease.session(call))
    ping = await call.next_ping()
    call.answer(ping.seq, "e.1")
    await _settle()
    assert lease.revision() == "e.1"
    call.end(Broken())  # the leader was SIGKILLed: the lease had time left, it goes now
    try:
        await session
    except grpc.aio.AioRpcError:
        pass
    assert lease.revision() is None and call.cancelled


async def test_a_new_leader_grants_its_own_lease_before_it_is_trusted() -> None:
    clock = Clock()
    lease = _lease(clock)
    old = FakeCall()
    session = asyncio.ensure_future(lease.session(old))
    ping = await old.next_ping()
    old.answer(ping.seq, "old.5", leader="n1")
    await _settle()
    old.end()  # the old leader stepped down: it ends the stream
    await session
    assert lease.revision() is None
    new = FakeCall()
    session = asyncio.ensure_future(lease.session(new))
    first = await new.next_ping()
    assert first.seen == "old.5" and lease.revision() is None
    new.answer(first.seq, "new.0", leader="n2")
    await _settle()
    assert lease.revision() == "new.0" and lease.leader == "n2"
    new.end()
    await session


class Meta:
    """The directory's metadata: `access_list`, and `access_revision` reads counted."""

    def __init__(self) -> None:
        self.revision = "e.1"
        self.reads = 0
        self.lists = 0

    async def access_list(self) -> AccessData:
        self.lists += 1
        return AccessData([UserInfo("ann", "h", False, False)], [], [], [])

    async def access_revision(self) -> str:
        self.reads += 1
        return self.revision


class StaticLease:
    def __init__(self, revision: str | None) -> None:
        self.value = revision

    def revision(self) -> str | None:
        return self.value


async def test_the_directory_trusts_a_fresh_lease_and_reads_without_one() -> None:
    meta = Meta()
    lease = StaticLease("e.1")
    directory = Directory(meta, 3600, meta, 0.0, lease)  # type: ignore[arg-type]
    await directory.refresh()
    for _ in range(5):
        await directory.confirm()
    assert meta.reads == 0 and meta.lists == 1  # no round trip while the lease is fresh
    lease.value = "e.2"  # a pushed revision: the next request re-reads the directory
    await directory.confirm()
    assert meta.reads == 0 and meta.lists == 2
    lease.value = None  # stream down or stale: each check reads the leader's revision
    meta.revision = "e.3"
    await directory.confirm()  # one read finds it moved, the re-read reads it again
    assert meta.reads == 2 and meta.lists == 3
    await directory.confirm()
    assert meta.reads == 3 and meta.lists == 3


async def test_stop_ends_the_lease_loop_whenever_it_lands() -> None:
    """A stop may land while a session that just broke collects its ping writer: the
    cancellation must end the loop there too, not be taken for the writer's own."""

    def broken_stream(address: str) -> FakeCall:
        call = FakeCall()
        call.end(Broken())  # every stream breaks at once: sessions end and start again
        return call

    for steps in range(40):
        lease = AccessLease(lambda: ["n1", "n2"], broken_stream, 0.0001, Clock())
        lease.start()
        for _ in range(steps):
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(lease.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert stopping in done, f"stop hung after {steps} steps"


class ConvertingCall(FakeCall):
    """A call whose read turns the task's cancellation into AioRpcError(CANCELLED), as
    grpc.aio does for a cancellation that lands inside a call."""

    reading = asyncio.Event()  # set once any such call waits in read() (one test's loop)

    async def read(self) -> Any:
        self.reading.set()
        cancelled = grpc.aio.AioRpcError(
            grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "cancelled"
        )
        return await converted_cancel(cancelled, super().read())


async def test_stop_ends_the_lease_loop_when_grpc_turned_the_cancellation_into_an_error() -> None:
    """The loop catches stream errors and goes on; a cancellation grpc reported as one must
    still end it (before: the loop slept and opened streams forever, and stop() waited)."""
    ConvertingCall.reading = asyncio.Event()
    lease = AccessLease(lambda: ["n1"], lambda address: ConvertingCall(), 0.01, Clock())
    lease.start()
    await asyncio.wait_for(ConvertingCall.reading.wait(), 5)  # the stop lands in read()
    stopping = asyncio.ensure_future(lease.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert stopping in done, "stop hung"
    assert lease.revision() is None
