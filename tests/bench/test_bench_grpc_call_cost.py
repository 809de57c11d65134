"""bench.grpc_call_cost's pure parts: framing, batches, the multiplexer's matching by id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench import grpc_call_cost as gcc


def test_frame_round_trips_ids_past_one_varint_byte() -> None:
    for call_id in (0, 1, 127, 128, 300, 2**40):
        raw = gcc.frame(call_id, b"\x00payload")
        got_id, body = gcc.unframe(raw)
        assert got_id == call_id
        assert bytes(body) == b"\x00payload"
    assert bytes(gcc.unframe(gcc.frame(5, b""))[1]) == b""


def test_unframe_refuses_a_truncated_id() -> None:
    with pytest.raises(ValueError):
        gcc.unframe(b"\x80")


def test_batch_round_trips_empty_and_large_members() -> None:
    bodies = [b"", b"a", b"x" * 200, bytes(range(256)) * 5]
    assert [bytes(b) for b in gcc.unpack_batch(gcc.pack_batch(bodies))] == bodies
    assert gcc.unpack_batch(gcc.pack_batch([])) == []


def test_unpack_batch_refuses_a_member_longer_than_the_rest() -> None:
    with pytest.raises(ValueError):
        gcc.unpack_batch(gcc.pack_batch([b"abcdef"])[:-1])


def test_per_op_us() -> None:
    assert gcc.per_op_us(0.5, 1000) == pytest.approx(500.0)
    assert gcc.per_op_us(1.0, 0) == 0.0


def test_median_cells_takes_each_figure_per_cell() -> None:
    def cell(mode: str, ops: float, client: float) -> gcc.Cell:
        return gcc.Cell(mode, 256, 8, ops, client, 2 * client)

    runs = [
        [cell("bare", 10, 1), cell("stream", 100, 9)],
        [cell("bare", 30, 3), cell("stream", 300, 7)],
        [cell("bare", 20, 2), cell("stream", 200, 8)],
    ]
    by_mode = {c.mode: c for c in gcc.median_cells(runs)}
    assert by_mode["bare"] == gcc.Cell("bare", 256, 8, 20, 2, 4)
    assert by_mode["stream"].ops_per_s == 200
    assert by_mode["stream"].total_us_per_op == pytest.approx(24.0)
    assert "| 256 B | 8 | stream | 200 | 8 | 16 | 24 |" in gcc.table(gcc.median_cells(runs))


class _ReversingCall:
    """A stream call whose replies come back in reverse order of two requests at a time."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self._replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.done = False

    async def write(self, message: bytes) -> None:
        self.written.append(message)
        if len(self.written) % 2 == 0:
            for raw in reversed(self.written[-2:]):
                call_id, body = gcc.unframe(raw)
                self._replies.put_nowait(gcc.frame(call_id, b"re:" + bytes(body)))

    async def done_writing(self) -> None:
        self.done = True
        self._replies.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (raw := await self._replies.get()) is not None:
            yield raw


def test_multiplexer_matches_replies_by_id_not_by_order() -> None:
    async def run() -> tuple[list[bytes], _ReversingCall]:
        call = _ReversingCall()
        mux = gcc.Multiplexer(call)
        replies = await asyncio.gather(*(mux.request(b"r%d" % i) for i in range(6)))
        await mux.close()
        return [bytes(r) for r in replies], call

    replies, call = asyncio.run(run())
    assert replies == [b"re:r%d" % i for i in range(6)]
    assert len(call.written) == 6
    assert call.done


def test_multiplexer_fails_pending_requests_when_the_stream_ends() -> None:
    class _Broken(_ReversingCall):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            raise ConnectionResetError("gone")
            yield b""  # pragma: no cover - makes this an async generator

    async def run() -> None:
        mux = gcc.Multiplexer(_Broken())
        with pytest.raises(ConnectionResetError):
            await mux.request(b"x")
        await mux.close()

    asyncio.run(run())


class _PackEchoCall(_ReversingCall):
    """A stream call answering each written pack of frames with one pack, reversed."""

    async def write(self, message: bytes) -> None:
        self.written.append(message)
        frames = [gcc.unframe(raw) for raw in gcc.unpack_batch(message)]
        replies = [gcc.frame(i, b"re:" + bytes(body)) for i, body in reversed(frames)]
        self._replies.put_nowait(gcc.pack_batch(replies))


def test_coalescing_multiplexer_packs_queued_requests_into_one_message() -> None:
    async def run() -> tuple[list[bytes], _PackEchoCall]:
        call = _PackEchoCall()
        mux = gcc.Multiplexer(call, coalesce=True)
        # All five are queued before the writer task first runs: one message carries them.
        replies = await asyncio.gather(*(mux.request(b"r%d" % i) for i in range(5)))
        await mux.close()
        return [bytes(r) for r in replies], call

    replies, call = asyncio.run(run())
    assert replies == [b"re:r%d" % i for i in range(5)]
    assert len(call.written) == 1
    assert len(gcc.unpack_batch(call.written[0])) == 5
    assert call.done


def test_a_short_run_measures_the_bulk_port_beside_grpc() -> None:
    """The whole tool, briefly: its server child, one gRPC mode and the bulk port."""
    runs = gcc.run(0.2, 1, sizes=[64 * 1024], modes=["bare", "bulk"], in_flights=[2])
    cells = {c.mode: c for c in runs[0]}
    assert set(cells) == {"bare", "bulk"}
    for cell in cells.values():
        assert cell.ops_per_s > 0 and cell.server_us_per_op > 0
