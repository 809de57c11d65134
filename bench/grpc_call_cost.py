"""What one gRPC call costs, against one message on a long-lived stream or in a batch.

A server child process (grpc.aio on uvloop, the node's server options) answers chunk Puts
with a trivial handler that parses the request and stores nothing, so the figures are the
transport's own cost. The client (this process, uvloop too) sends the same serialized
PutChunkRequest (`cargohold.wire.encode_put`) of 256 B, 16 KiB or 1 MiB of data, 1, 8 or
32 at a time, five ways:

- `unary`: `NodeChannel.put_serialized` as gateway/cluster/writes.py calls it: a channel
  from `cargohold.grpc_channels.open_channel` (per-call signing, latency histogram), the
  request id metadata (`call_metadata()`) and a deadline; the server behind
  node/access.py's `AccessInterceptor` (token check) and `adopt`-ing the request id;
- `bare`: the same call on a plain grpc.aio channel with the same options, without
  metadata, deadline or interceptor: what our per-call additions cost;
- `stream`: one bidirectional stream per run, each request framed with an integer id
  (`frame`), a writer task sending, a reader task matching replies to futures by id; the
  server answers each message in order on the same stream;
- `stream_batch`: the same stream, its writer packing every frame queued by the time it
  wakes into one message (`pack_batch`), the server answering each pack with one pack;
- `batch`: one unary call carrying N requests (`pack_batch`), one reply per request
  (N = the in-flight figure; skipped at 1, where it is `bare`);
- `bulk`: the same put on a node's bulk port (cargohold/bulk_wire.py), the product's
  server (node/bulk_puts.py: token-checked hello, frames read into their buffer, the
  PackItem reply) with a handler that stores nothing, sent by the gateway's client
  (gateway/cluster/bulk_puts.py) over one pooled connection per request in flight.

Per cell: ops/s, and CPU-µs per op of the client (`time.process_time`, all its threads)
and of the server (/proc/PID/stat, bench/procstats.py). Modes alternate inside each
repetition, so load from other processes hits all alike; the figure is the median over
repetitions. Run it alone on the machine:

    flock /tmp/cargohold-bench.lock .venv/bin/python -m bench.grpc_call_cost \
        [--seconds 1.5] [--repeats 3] [--json out.json] [--sizes 1048576,4194304] \
        [--modes unary,bulk] [--in-flight 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import grpc.aio
import uvloop

from bench.procstats import cpu_seconds
from cargohold.config import Config
from cargohold.digests import checksum_of, chunk_id_of
from cargohold.grpc_channels import NodeChannel, channel_options, open_channel
from cargohold.request_ids import REQUEST_ID, adopt, call_metadata
from cargohold.wire import decode_bytes_fields, encode_put, read_varint, varint
from gateway.cluster.bulk_puts import BulkPuts
from node.access import BULK_ROLES, AccessInterceptor
from node.bulk_puts import BulkPutServer
from protos import registry_pb2 as pb

SECRET = "bench-grpc-call-cost"
PUT = "/cargohold.v1.Chunks/Put"
STREAM = "/cargohold.bench.Mux/Stream"
STREAM_BATCH = "/cargohold.bench.Mux/StreamBatch"
BATCH = "/cargohold.bench.Mux/Batch"
SIZES = (256, 16 * 1024, 1024 * 1024)
IN_FLIGHT = (1, 8, 32)
MODES = ("unary", "bare", "stream", "stream_batch", "batch", "bulk")
_REPLY = pb.PutChunkReply(existed=False).SerializeToString()


# --- framing (pure) ---------------------------------------------------------------------


def frame(call_id: int, body: bytes | memoryview) -> bytes:
    """One multiplexed message: the varint `call_id`, then `body`."""
    return b"".join((varint(call_id), body))


def unframe(raw: bytes | memoryview) -> tuple[int, memoryview]:
    """(call id, view of the body) of a `frame`; ValueError when truncated."""
    view = memoryview(raw)
    call_id, pos = read_varint(view, 0)
    return call_id, view[pos:]


def pack_batch(bodies: Sequence[bytes | memoryview]) -> bytes:
    """Several messages in one: each as its varint length, then its bytes."""
    out: list[bytes | memoryview] = []
    for body in bodies:
        out.append(varint(len(body)))
        out.append(body)
    return b"".join(out)


def unpack_batch(raw: bytes | memoryview) -> list[memoryview]:
    """Views of the messages of a `pack_batch`; ValueError when truncated."""
    view = memoryview(raw)
    bodies: list[memoryview] = []
    pos = 0
    while pos < len(view):
        size, pos = read_varint(view, pos)
        if pos + size > len(view):
            raise ValueError("truncated batch")
        bodies.append(view[pos : pos + size])
        pos += size
    return bodies


def per_op_us(seconds: float, ops: int) -> float:
    """CPU-seconds spent over `ops` operations, in µs per operation (0 when none)."""
    return 1e6 * seconds / ops if ops else 0.0


# --- server (child process) -------------------------------------------------------------


def _identity(raw: bytes) -> bytes:
    return raw


def _handle(raw: bytes | memoryview) -> bytes:
    """The trivial handler every mode shares: parse the PutChunkRequest, store nothing."""
    decode_bytes_fields(raw)
    return _REPLY


async def _put(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _handle(raw)


async def _put_adopting(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    adopt(context)  # as node/chunk_service.py does for every call
    return _handle(raw)


async def _stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for raw in requests:
        call_id, body = unframe(raw)
        yield frame(call_id, _handle(body))


async def _stream_batch(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for raw in requests:
        frames = (unframe(one) for one in unpack_batch(raw))
        yield pack_batch([frame(call_id, _handle(body)) for call_id, body in frames])


async def _batch(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return pack_batch([_handle(body) for body in unpack_batch(raw)])


def _handlers(put: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> Any:
    return (
        grpc.method_handlers_generic_handler(
            "cargohold.v1.Chunks",
            {
                "Put": grpc.unary_unary_rpc_method_handler(
                    put, request_deserializer=_identity, response_serializer=_identity
                )
            },
        ),
        grpc.method_handlers_generic_handler(
            "cargohold.bench.Mux",
            {
                "Stream": grpc.stream_stream_rpc_method_handler(
                    _stream, request_deserializer=_identity, response_serializer=_identity
                ),
                "StreamBatch": grpc.stream_stream_rpc_method_handler(
                    _stream_batch, request_deserializer=_identity, response_serializer=_identity
                ),
                "Batch": grpc.unary_unary_rpc_method_handler(
                    _batch, request_deserializer=_identity, response_serializer=_identity
                ),
            },
        ),
    )


def _server_options(cfg: Config) -> list[tuple[str, int]]:
    node = cfg.node
    return [  # node/server.py's
        ("grpc.max_send_message_length", node.grpc_max_message),
        ("grpc.max_receive_message_length", node.grpc_max_message),
        ("grpc.http2.max_frame_size", node.grpc_max_frame_size),
        ("grpc.so_reuseport", 0),
    ]


async def _store_nothing(chunk_id: bytes, value: memoryview) -> bool:
    """The bulk port's handler: the frame was read and split; store nothing."""
    return False


async def _serve() -> None:
    """Three servers on loopback: the product's gRPC (token check, `adopt`), a bare gRPC
    one and the product's bulk port. Prints their ports, then serves until stdin closes."""
    cfg = _config()
    product = grpc.aio.server(
        interceptors=[AccessInterceptor(cfg, mtls=False)], options=_server_options(cfg)
    )
    product.add_generic_rpc_handlers(_handlers(_put_adopting))
    bare = grpc.aio.server(options=_server_options(cfg))
    bare.add_generic_rpc_handlers(_handlers(_put))
    ports = [s.add_insecure_port("127.0.0.1:0") for s in (product, bare)]
    for server in (product, bare):
        await server.start()
    cfg.node.bulk_listen = "127.0.0.1:0"
    bulk = BulkPutServer(cfg, _store_nothing, BULK_ROLES, "127.0.0.1")
    ports.append(int((await bulk.start()).rpartition(":")[2]))
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await bulk.stop()
    for server in (product, bare):
        await server.stop(None)


# --- client -----------------------------------------------------------------------------


def _config() -> Config:
    cfg = Config()
    cfg.cluster.secret = SECRET
    cfg.role = "gateway"
    return cfg


class Multiplexer:
    """Requests over one bidirectional stream: ids allocated here, a writer task sending
    in order, a reader task resolving each request's future with the reply of its id.

    With `coalesce`, the writer packs every frame queued by the time it wakes into one
    stream message (`pack_batch`), and each message read is such a pack of replies.
    """

    def __init__(self, call: Any, coalesce: bool = False) -> None:
        self._call = call
        self._coalesce = coalesce
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[memoryview]] = {}
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]

    async def request(self, body: bytes) -> memoryview:
        call_id = next(self._ids)
        future: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._queue.put_nowait(frame(call_id, body))
        return await future

    async def _write(self) -> None:
        closing = False
        while not closing and (message := await self._queue.get()) is not None:
            if self._coalesce:
                frames = [message]
                while not self._queue.empty():
                    queued = self._queue.get_nowait()
                    if queued is None:
                        closing = True
                        break
                    frames.append(queued)
                message = pack_batch(frames)
            await self._call.write(message)
        await self._call.done_writing()

    def _resolve(self, raw: bytes | memoryview) -> None:
        call_id, body = unframe(raw)
        future = self._pending.pop(call_id, None)
        if future is not None and not future.done():
            future.set_result(body)

    async def _read(self) -> None:
        error: Exception = ConnectionError("stream ended")
        try:
            async for raw in self._call:
                for one in unpack_batch(raw) if self._coalesce else (raw,):
                    self._resolve(one)
        except Exception as exc:
            error = exc
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _BulkNode:
    """What the gateway's bulk client asks of a node channel: its address, and where its
    bulk port is (`Chunks.BulkAddress`)."""

    def __init__(self, address: str, bulk: str) -> None:
        self.address = address
        self.chunks = self
        self._bulk = bulk

    async def BulkAddress(self, request: Any, **_: Any) -> pb.BulkAddressReply:
        return pb.BulkAddressReply(address=self._bulk)


@dataclass(frozen=True)
class Cell:
    mode: str
    size: int
    in_flight: int
    ops_per_s: float
    client_us_per_op: float
    server_us_per_op: float

    @property
    def total_us_per_op(self) -> float:
        return self.client_us_per_op + self.server_us_per_op


async def _timed(
    one: Callable[[], Awaitable[int]], workers: int, seconds: float, server_pid: int
) -> tuple[int, float, float, float]:
    """(ops, wall s, client CPU-s, server CPU-s) of `workers` loops of `one` (which
    returns how many operations it did) for `seconds`, after a short warm-up."""
    warm = time.monotonic() + min(0.3, seconds / 4)
    while time.monotonic() < warm:
        await one()
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            ops = await one()  # not `done += await one()`: that reads `done` before awaiting
            done += ops

    server0, client0, wall0 = cpu_seconds(server_pid) or 0.0, time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    wall, client = time.monotonic() - wall0, time.process_time() - client0
    server = (cpu_seconds(server_pid) or 0.0) - server0
    return done, wall, client, server


async def _cell(
    mode: str,
    size: int,
    in_flight: int,
    seconds: float,
    product: NodeChannel,
    bare: grpc.aio.Channel,
    server_pid: int,
    bulk: tuple[BulkPuts, _BulkNode] | None = None,
) -> Cell:
    data = os.urandom(size)
    request = encode_put(chunk_id_of(data), [data], checksum_of(data))
    timeout = _config().gateway.rpc_timeout_seconds
    mux: Multiplexer | None = None
    if mode == "unary":

        async def one() -> int:
            await product.put_serialized(request, timeout=timeout, metadata=call_metadata())
            return 1

        workers = in_flight
    elif mode == "bare":
        put = bare.unary_unary(
            PUT, request_serializer=None, response_deserializer=pb.PutChunkReply.FromString
        )

        async def one() -> int:
            await put(request)
            return 1

        workers = in_flight
    elif mode in ("stream", "stream_batch"):
        coalesce = mode == "stream_batch"
        method = STREAM_BATCH if coalesce else STREAM
        stream = mux = Multiplexer(bare.stream_stream(method)(), coalesce)

        async def one() -> int:
            pb.PutChunkReply.FromString(await stream.request(request))
            return 1

        workers = in_flight
    elif mode == "bulk":
        assert bulk is not None
        sender, node = bulk

        async def one() -> int:
            if await sender.put(node, request, timeout) is None:  # type: ignore[arg-type]
                raise RuntimeError("the bulk port refused the put")
            return 1

        workers = in_flight
    else:
        batch = bare.unary_unary(BATCH)

        async def one() -> int:
            replies = unpack_batch(await batch(pack_batch([request] * in_flight)))
            for reply in replies:
                pb.PutChunkReply.FromString(reply)
            return len(replies)

        workers = 1
    try:
        ops, wall, client, server = await _timed(one, workers, seconds, server_pid)
    finally:
        if mux is not None:
            await mux.close()
    return Cell(
        mode,
        size,
        in_flight,
        ops / wall,
        per_op_us(client, ops),
        per_op_us(server, ops),
    )


async def measure(
    seconds: float,
    repeats: int,
    server_pid: int,
    ports: list[int],
    sizes: Sequence[int] = SIZES,
    modes: Sequence[str] = MODES,
    in_flights: Sequence[int] = IN_FLIGHT,
) -> list[list[Cell]]:
    """Every cell `repeats` times against the `--serve` child's three ports; inside a
    repetition the modes alternate per cell."""
    product_port, bare_port, bulk_port = ports
    cfg = _config()
    bulk = (BulkPuts(cfg), _BulkNode("bench", f"127.0.0.1:{bulk_port}"))
    address = f"127.0.0.1:{product_port}"
    product = NodeChannel(address, open_channel(address, cfg))
    bare = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}", options=channel_options(cfg))
    REQUEST_ID.set("0123456789abcdef")  # as inside a gateway request
    runs: list[list[Cell]] = []
    try:
        for _ in range(repeats):
            cells = []
            for size, in_flight, mode in itertools.product(sizes, in_flights, modes):
                if mode == "batch" and in_flight == 1:
                    continue
                cells.append(
                    await _cell(mode, size, in_flight, seconds, product, bare, server_pid, bulk)
                )
            runs.append(cells)
    finally:
        bulk[0].close()
        await product.channel.close()
        await bare.close()
    return runs


def run(
    seconds: float,
    repeats: int,
    sizes: Sequence[int] = SIZES,
    modes: Sequence[str] = MODES,
    in_flights: Sequence[int] = IN_FLIGHT,
) -> list[list[Cell]]:
    """Start the server child, measure, stop it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_call_cost", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    try:
        ports = json.loads(server.stdout.readline())
        return uvloop.run(measure(seconds, repeats, server.pid, ports, sizes, modes, in_flights))
    finally:
        with contextlib.suppress(OSError):
            server.communicate(b"", timeout=30)


def median_cells(runs: list[list[Cell]]) -> list[Cell]:
    """Per (mode, size, in flight): the median of each figure over the runs."""
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for cell in itertools.chain.from_iterable(runs):
        groups.setdefault((cell.mode, cell.size, cell.in_flight), []).append(cell)
    return [
        Cell(
            mode,
            size,
            in_flight,
            statistics.median(c.ops_per_s for c in cells),
            statistics.median(c.client_us_per_op for c in cells),
            statistics.median(c.server_us_per_op for c in cells),
        )
        for (mode, size, in_flight), cells in groups.items()
    ]


def table(cells: list[Cell]) -> str:
    """A markdown table of the cells."""
    lines = [
        "| payload | in flight | mode | ops/s | client µs/op | server µs/op | total µs/op |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        size = f"{c.size // 1024} KiB" if c.size >= 1024 else f"{c.size} B"
        if c.size >= 1024 * 1024:
            size = f"{c.size // (1024 * 1024)} MiB"
        lines.append(
            f"| {size} | {c.in_flight} | {c.mode} | {c.ops_per_s:.0f} | "
            f"{c.client_us_per_op:.0f} | {c.server_us_per_op:.0f} | {c.total_us_per_op:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write every run's cells here")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="payload bytes")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--in-flight", default=",".join(map(str, IN_FLIGHT)))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve())
        return
    load_before = os.getloadavg()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    sizes = [int(x) for x in args.sizes.split(",")]
    in_flights = [int(x) for x in args.in_flight.split(",")]
    runs = run(args.seconds, args.repeats, sizes, modes, in_flights)
    load_after = os.getloadavg()
    print(f"load average before {load_before}, after {load_after}")
    print(table(median_cells(runs)))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "load_before": load_before,
                    "load_after": load_after,
                    "runs": [[asdict(c) for c in run] for run in runs],
                },
                out,
                indent=1,
            )


if __name__ == "__main__":
    main()
