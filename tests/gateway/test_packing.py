"""The call packer (gateway/cluster/packing.py) with a fake call kind whose calls wait for
the test to answer them: the single-call path, queueing behind the in-flight bound, pack
limits, per-item errors, a pack failing as a whole, the UNIMPLEMENTED fallback, deadlines
and cancellation. Then the real gateway over fake nodes: concurrent small pushes ride
packs (or, to nodes from before packs, single calls) and read back intact."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import grpc.aio
import pytest
from fakenodes import DataPath, data_path

from cargohold.config import GatewayConfig
from cargohold.digests import digest_of
from cargohold.errors import StorageFull, from_grpc_details
from cargohold.grpc_channels import NodeChannel
from cargohold.pack_items import error_item, item_error, ok_item, status_item
from gateway.cluster.packing import CallPacker, PackKind
from protos import registry_pb2 as pb


@dataclass
class Pending:
    """One call the fake kind received, waiting for the test's answer."""

    kind: str  # "single" or "pack"
    address: str
    items: list[str]
    request_ids: list[str]
    seconds: float
    answer: asyncio.Future[Any] = field(default_factory=asyncio.Future)


class FakeKind(PackKind[str, str]):
    """Items and replies are strings; every call waits in `calls` until answered."""

    method = "Fake/Many"

    def __init__(self) -> None:
        self.calls: asyncio.Queue[Pending] = asyncio.Queue()
        self.in_flight = 0
        self.most_in_flight = 0

    async def _wait(self, call: Pending) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.calls.put_nowait(call)
        try:
            return await call.answer
        finally:
            self.in_flight -= 1

    async def single(self, node: NodeChannel, item: str, seconds: float, metadata: Any) -> str:
        result: str = await self._wait(Pending("single", node.address, [item], [], seconds))
        return result

    async def pack(
        self, node: NodeChannel, items: Sequence[str], request_ids: Sequence[str], seconds: float
    ) -> pb.PackReply:
        call = Pending("pack", node.address, list(items), list(request_ids), seconds)
        reply: pb.PackReply = await self._wait(call)
        return reply

    def reply(self, raw: bytes) -> str:
        return raw.decode()


@dataclass
class FakeNodeChannel:
    address: str


def node(address: str = "n1:7001") -> NodeChannel:
    return cast(NodeChannel, FakeNodeChannel(address))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def packer(kind: FakeKind, clock: Clock | None = None, **gw: Any) -> CallPacker[str, str]:
    return CallPacker(kind, GatewayConfig(**gw), item_max_bytes=100, clock=clock or Clock())


def answer_pack(call: Pending) -> None:
    """Answer a pack: each item "ok:<item>"."""
    call.answer.set_result(pb.PackReply(items=[ok_item(f"ok:{i}".encode()) for i in call.items]))


async def blocked(calls: CallPacker[str, str], kind: FakeKind) -> tuple[asyncio.Task[str], Pending]:
    """A request "first" in flight (its call held unanswered): with one call in flight
    per node allowed, the next requests queue behind it."""
    blocker = asyncio.create_task(calls.call(node(), "first", 1, 5.0, None))
    return blocker, await kind.calls.get()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_below_the_bound_each_request_is_its_own_single_call() -> None:
    kind = FakeKind()
    calls = packer(kind)
    task = asyncio.create_task(calls.call(node(), "a", 1, 5.0, None))
    first = await kind.calls.get()
    assert (first.kind, first.items, first.seconds) == ("single", ["a"], 5.0)
    first.answer.set_result("A")
    assert await task == "A"
    # Two in flight (the default bound): both single, neither waits for the other.
    tasks = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "bc"]
    got = [await kind.calls.get(), await kind.calls.get()]
    assert [(c.kind, c.items) for c in got] == [("single", ["b"]), ("single", ["c"])]
    for c in got:
        c.answer.set_result(c.items[0].upper())
    assert await asyncio.gather(*tasks) == ["B", "C"]
    assert (calls.stats.singles, calls.stats.packs) == (3, 0)


async def test_requests_queue_behind_the_bound_and_go_as_one_pack() -> None:
    kind = FakeKind()
    calls = packer(kind)
    singles = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "ab"]
    first, second = await kind.calls.get(), await kind.calls.get()
    queued = [asyncio.create_task(calls.call(node(), f"q{i}", 1, 5.0, None)) for i in range(5)]
    # Another node is not held up by this one's queue.
    other = asyncio.create_task(calls.call(node("n2:7001"), "z", 1, 5.0, None))
    elsewhere = await kind.calls.get()
    assert (elsewhere.kind, elsewhere.address) == ("single", "n2:7001")
    elsewhere.answer.set_result("Z")
    await settle()
    assert kind.calls.empty()  # the five wait: two calls are in flight to n1
    first.answer.set_result("A")
    pack = await kind.calls.get()
    assert (pack.kind, pack.items) == ("pack", [f"q{i}" for i in range(5)])
    assert pack.seconds == pytest.approx(5.0, abs=0.5)
    answer_pack(pack)
    assert await asyncio.gather(*queued) == [f"ok:q{i}" for i in range(5)]
    second.answer.set_result("B")
    assert await asyncio.gather(*singles, other) == ["A", "B", "Z"]
    assert kind.most_in_flight <= 3  # two to n1, one to n2
    assert (calls.stats.packs, calls.stats.packed) == (1, 5)


async def test_packs_keep_to_their_item_and_byte_limits() -> None:
    kind = FakeKind()
    calls = packer(kind, packs_in_flight_per_node=1, pack_max_items=3, pack_max_bytes=25)
    blocker, held = await blocked(calls, kind)
    sizes = [1, 1, 1, 1, 10, 10, 10, 40]
    queued = [
        asyncio.create_task(calls.call(node(), f"i{n}", size, 5.0, None))
        for n, size in enumerate(sizes)
    ]
    await settle()
    held.answer.set_result("F")
    seen = []
    while len(seen) < 4:
        call = await kind.calls.get()
        seen.append((call.kind, call.items))
        if call.kind == "pack":
            answer_pack(call)
        else:
            call.answer.set_result(f"ok:{call.items[0]}")
    # 3 items at most; 25 bytes at most unless one item alone is larger (then a single).
    assert seen == [
        ("pack", ["i0", "i1", "i2"]),
        ("pack", ["i3", "i4", "i5"]),
        ("single", ["i6"]),
        ("single", ["i7"]),
    ]
    assert await asyncio.gather(blocker, *queued) == ["F", *(f"ok:i{n}" for n in range(8))]
    assert kind.most_in_flight == 1


async def test_each_item_fails_as_its_single_call_would() -> None:
    kind = FakeKind()
    calls = packer(kind, packs_in_flight_per_node=1)
    blocker, held = await blocked(calls, kind)
    queued = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in ("ok", "full")]
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    full = StorageFull("node n1 has no space", detail={"free_bytes": 10})
    pack.answer.set_result(pb.PackReply(items=[ok_item(b"fine"), error_item(full)]))
    fine, failed = await asyncio.gather(*queued, return_exceptions=True)
    assert fine == "fine"
    assert isinstance(failed, grpc.aio.AioRpcError)
    assert failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    err = from_grpc_details(failed.details(), failed.trailing_metadata())
    assert isinstance(err, StorageFull) and err.message == "node n1 has no space"
    assert err.detail == {"free_bytes": 10}
    assert await blocker == "F"


async def test_a_pack_failing_as_a_whole_fails_each_of_its_requests() -> None:
    kind = FakeKind()
    calls = packer(kind, packs_in_flight_per_node=1)
    blocker, held = await blocked(calls, kind)
    queued = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "abc"]
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    gone = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection reset"
    )
    pack.answer.set_exception(gone)
    errors = await asyncio.gather(*queued, return_exceptions=True)
    for error in errors:
        assert isinstance(error, grpc.aio.AioRpcError)
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "connection reset")
    assert len({id(e) for e in errors}) == 3  # a copy each
    assert await blocker == "F"
    # A pack answering the wrong number of items fails each request too (INTERNAL).
    blocker, held = await blocked(calls, kind)
    queued = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "ab"]
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    pack.answer.set_result(pb.PackReply(items=[ok_item(b"x")]))
    for error in await asyncio.gather(*queued, return_exceptions=True):
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.INTERNAL
    await blocker


async def test_a_node_without_packs_gets_single_calls_and_the_pack_is_resent() -> None:
    kind, clock = FakeKind(), Clock()
    calls = packer(kind, clock, packs_in_flight_per_node=1)
    blocker, held = await blocked(calls, kind)
    queued = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "ab"]
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    pack.answer.set_exception(
        grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no"
        )
    )
    resent = [await kind.calls.get(), await kind.calls.get()]
    assert sorted((c.kind, c.items[0]) for c in resent) == [("single", "a"), ("single", "b")]
    # From then on: single calls at once, whatever is in flight (nothing queues).
    later = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "cd"]
    more = [await kind.calls.get(), await kind.calls.get()]
    assert [(c.kind, c.items) for c in more] == [("single", ["c"]), ("single", ["d"])]
    for c in [*resent, *more]:
        c.answer.set_result(c.items[0].upper())
    assert await asyncio.gather(blocker, *queued, *later) == ["F", "A", "B", "C", "D"]
    assert calls.stats.unimplemented == 1
    # Until the retry time has passed: then packs are tried again.
    clock.now += GatewayConfig().pack_unimplemented_retry_seconds + 1
    blocker, held = await blocked(calls, kind)
    queued = [asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "ef"]
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    assert (pack.kind, pack.items) == ("pack", ["e", "f"])
    answer_pack(pack)
    assert await asyncio.gather(blocker, *queued) == ["F", "ok:e", "ok:f"]


async def test_cancelled_callers_leave_the_queue_or_have_their_answer_dropped() -> None:
    kind = FakeKind()
    calls = packer(kind, packs_in_flight_per_node=1)
    blocker, held = await blocked(calls, kind)
    queued = {x: asyncio.create_task(calls.call(node(), x, 1, 5.0, None)) for x in "abc"}
    await settle()
    queued["b"].cancel()  # while queued: it never leaves
    await settle()
    held.answer.set_result("F")
    pack = await kind.calls.get()
    assert pack.items == ["a", "c"]
    queued["c"].cancel()  # while its pack is in flight: the answer is dropped
    await settle()
    answer_pack(pack)
    assert await queued["a"] == "ok:a"
    for x in "bc":
        with pytest.raises(asyncio.CancelledError):
            await queued[x]
    assert await blocker == "F"
    # Nothing is left queued or counted in flight: the next request goes at once.
    task = asyncio.create_task(calls.call(node(), "d", 1, 5.0, None))
    call = await kind.calls.get()
    assert call.kind == "single"
    call.answer.set_result("D")
    assert await task == "D"


async def test_a_request_out_of_time_while_queued_is_deadline_exceeded() -> None:
    kind = FakeKind()
    calls = packer(kind, packs_in_flight_per_node=1)
    blocker, held = await blocked(calls, kind)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await calls.call(node(), "late", 1, 0.05, None)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    held.answer.set_result("F")
    assert await blocker == "F"
    await settle()
    assert kind.calls.empty()  # the request that ran out of time was never sent


async def test_large_items_and_packing_off_bypass_the_queue() -> None:
    for size, on in ((101, True), (1, False)):
        kind = FakeKind()
        calls = packer(kind, packs_in_flight_per_node=1, pack_calls=on)
        tasks = [asyncio.create_task(calls.call(node(), x, size, 5.0, None)) for x in "abc"]
        got = [await kind.calls.get() for _ in range(3)]
        assert [c.kind for c in got] == ["single"] * 3
        for c in got:
            c.answer.set_result(c.items[0])
        assert await asyncio.gather(*tasks) == ["a", "b", "c"]
        assert kind.most_in_flight == 3


async def test_an_unknown_status_code_is_unknown() -> None:
    item = status_item(grpc.StatusCode.NOT_FOUND, "BlobUnknown:x")
    item.code = 99
    assert item_error(item).code() == grpc.StatusCode.UNKNOWN


# -- the real gateway over fake nodes ---------------------------------------------------------
@pytest.fixture(params=[True, False], ids=["packing-nodes", "nodes-before-packs"])
async def dp(request: pytest.FixtureRequest) -> AsyncIterator[DataPath]:
    async for value in data_path(3, gateway__packs_in_flight_per_node=1):
        for fake in value.nodes.nodes:
            fake.packs = request.param
        yield value


async def test_concurrent_small_pushes_ride_packs_and_read_back(dp: DataPath) -> None:
    blobs = [os.urandom(size) for size in (10, 1000, 30_000) for _ in range(8)]

    async def push(i: int, blob: bytes) -> None:
        url = f"/v2/pack/r{i % 3}/blobs/uploads/?digest={digest_of(blob)}"
        assert (await dp.http.post(url, data=blob)).status == 201

    await asyncio.gather(*(push(i, b) for i, b in enumerate(blobs)))
    for i, blob in enumerate(blobs):
        got = await (await dp.http.get(f"/v2/pack/r{i % 3}/blobs/{digest_of(blob)}")).read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    packs = sum(n.put_many_calls for n in dp.nodes.nodes)
    commands = sum(n.command_packs for n in dp.nodes.nodes)
    if dp.nodes.nodes[0].packs:
        assert packs > 0 and commands > 0
        assert dp.cluster.writer.puts.stats.packed > 0
    else:
        # Each node answered UNIMPLEMENTED once per kind at most, then got single calls.
        assert dp.cluster.writer.puts.stats.unimplemented <= 3
        assert dp.cluster.writer.puts.stats.packs == 0
    # Every chunk has its 3 copies, each written once per node (a pack is no extra write).
    for blob in blobs:
        cid = hashlib.sha256(blob).digest()
        assert sum(cid in n.chunks for n in dp.nodes.nodes) == 3
