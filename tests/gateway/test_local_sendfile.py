"""Zero-copy local sends (gateway/cluster/local_reads.py `send`, cargohold/map_offsets.py) against a
real node chunk store written by another process (test_local_reads.Writer), to real
loopback TCP sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from test_local_reads import Writer, blob
from test_local_reads import writer as writer  # the same fixture: a real node's store

from cargohold.digests import checksum_of
from cargohold.map_offsets import FileMaps, buffer_address
from cargohold.mapped_pages import FOLIO_BYTES, PAGE_SIZE
from gateway.cluster.local_reads import (
    CHECKSUM_LEN,
    SENDFILE_BYTES,
    SENDS,
    WRITTEN_BYTES,
    LocalChunkStore,
    LocalCopyCorrupt,
)
from tests.page_state import cached_pages, file_offset_of, mapped_rss

MiB = 1024 * 1024


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: (sender, non-blocking like an event loop's; receiver)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    sender.setblocking(False)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def receive(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        part = sock.recv(n - len(got))
        assert part, "connection closed early"
        got += part
    return bytes(got)


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def never() -> bool:
    return False


async def send_and_receive(
    store: LocalChunkStore, receiver: socket.socket, chunk_id: bytes, length: int, lo: int,
    hi: int, sender: socket.socket, mapped: bool = False,
) -> tuple[int, bytes]:  # fmt: skip
    """(bytes sent by sendfile, or written from the map when `mapped`; everything for
    [lo, hi): received + the copied rest)."""
    reading = asyncio.get_running_loop().run_in_executor(None, receive, receiver, hi - lo)
    done = await store.send(chunk_id, length, lo, hi, sender.fileno(), 10.0, never, mapped)
    assert done is not None
    sender.setblocking(True)
    sender.sendall(done.rest)
    sender.setblocking(False)
    return done.sent, await reading


def test_file_offsets_match_the_bytes_in_data_mdb(tmp_path: Path, writer: Writer) -> None:
    """Values in leaf pages and in overflow pages: the computed offset holds their bytes."""
    sizes = {10: 100, 11: 3000, 12: 256 * 1024, 13: 4 * MiB, 14: 4 * MiB + 1}
    for seed, size in sizes.items():
        writer.do("put", seed, size)
    path = tmp_path / "chunks" / "data.mdb"
    st = os.stat(path)
    maps = FileMaps(str(path), st.st_dev, st.st_ino)
    env = lmdb.open(str(tmp_path / "chunks"), readonly=True, max_dbs=3, map_size=0)
    fd = os.open(path, os.O_RDONLY)
    try:
        db = env.open_db(b"chunks", create=False)
        with env.begin(db=db, buffers=True) as txn:
            for seed, size in sizes.items():
                chunk_id, data = blob(seed, size)
                value = memoryview(txn.get(chunk_id))
                assert bytes(value[CHECKSUM_LEN:]) == data
                offset = maps.offset_of(buffer_address(value), len(value))
                assert offset is not None
                assert os.pread(fd, 64, offset) == bytes(value[:64])
                assert os.pread(fd, len(value), offset) == bytes(value)
        # A file not mapped here has no offsets.
        other = os.stat(tmp_path / "chunks" / "lock.mdb")
        assert FileMaps("/nowhere", other.st_dev, other.st_ino + 1).offset_of(1, 1) is None
    finally:
        os.close(fd)
        env.close()


@pytest.mark.parametrize("size", [100, 256 * 1024, 4 * MiB])
async def test_whole_chunks_and_ranges_go_out_by_sendfile(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    sender, receiver = pair
    chunk_id, data = blob(20 + size % 7, size)
    writer.do("put", 20 + size % 7, size)
    store = LocalChunkStore(str(tmp_path))
    before, whole = SENDFILE_BYTES._value.get(), SENDS.labels("whole")._value.get()
    for lo, hi in [(0, size), (1, size - 1), (size // 3, size // 2 + 1), (size - 1, size)]:
        sent, got = await send_and_receive(store, receiver, chunk_id, size, lo, hi, sender)
        assert got == data[lo:hi]
        assert sent == hi - lo  # all of it zero-copy
    assert SENDFILE_BYTES._value.get() - before == 2 * size - 2 + size // 2 + 1 - size // 3 + 1
    assert SENDS.labels("whole")._value.get() == whole + 4
    # A chunk not held: nothing sent, a miss.
    assert await store.send(blob(99)[0], None, 0, 10, sender.fileno(), 1.0, never) is None
    assert nothing_waiting(receiver)
    store.close()


async def test_loopback_writes_from_the_map_are_exact_and_counted_apart(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket]
) -> None:
    """`mapped` (a loopback client where writes cost this host less: gateway/send_probe.py):
    the same verified bytes, written from the LMDB map, none by sendfile."""
    sender, receiver = pair
    size = 4 * MiB
    chunk_id, data = blob(31, size)
    writer.do("put", 31, size)
    store = LocalChunkStore(str(tmp_path))
    by_sendfile, written = SENDFILE_BYTES._value.get(), WRITTEN_BYTES._value.get()
    for lo, hi in [(0, size), (size // 3, size // 2 + 1), (size - 1, size)]:
        sent, got = await send_and_receive(
            store, receiver, chunk_id, size, lo, hi, sender, mapped=True
        )
        assert got == data[lo:hi] and sent == hi - lo
    assert WRITTEN_BYTES._value.get() - written == size + size // 2 + 1 - size // 3 + 1
    assert SENDFILE_BYTES._value.get() == by_sendfile
    store.close()


async def test_sent_chunks_do_not_stay_mapped_in_the_gateway(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket]
) -> None:
    """The check before each send reads the chunk through the map; once sent, its pages
    are let go, so the gateway's resident size does not grow with every chunk it sends
    (they stay in the page cache)."""
    sender, receiver = pair
    size, count = 2 * MiB, 6
    chunks = [blob(40 + i, size) for i in range(count)]
    for i in range(count):
        writer.do("put", 40 + i, size)
    store = LocalChunkStore(str(tmp_path))
    data_mdb = tmp_path / "chunks" / "data.mdb"
    try:
        for chunk_id, data in chunks:
            sent, got = await send_and_receive(store, receiver, chunk_id, size, 0, size, sender)
            assert (sent, got) == (size, data)
        # At most the folios of LMDB's own pages around the last lookups stay mapped.
        assert mapped_rss(data_mdb) <= 2 * FOLIO_BYTES, mapped_rss(data_mdb)
        first = file_offset_of(data_mdb, chunks[0][1][:4096])
        assert cached_pages(data_mdb, first, size) >= size // PAGE_SIZE  # still cached
    finally:
        store.close()


@pytest.mark.parametrize("verify", ["xxh3", "sha256"])
async def test_a_corrupt_copy_is_never_sent(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket], verify: str
) -> None:
    sender, receiver = pair
    chunk_id, data = blob(30, 4 * MiB)
    rotten = bytearray(data)
    rotten[3 * MiB] ^= 0x01
    writer.do("raw", chunk_id.hex(), (checksum_of(data) + bytes(rotten)).hex())
    store = LocalChunkStore(str(tmp_path), verify=verify)
    sent = SENDFILE_BYTES._value.get()
    with pytest.raises(LocalCopyCorrupt):
        await store.send(chunk_id, len(data), 0, len(data), sender.fileno(), 1.0, never)
    # Neither a byte of the damaged chunk nor of a range before the damage left.
    with pytest.raises(LocalCopyCorrupt):
        await store.send(chunk_id, len(data), 0, 1000, sender.fileno(), 1.0, never)
    assert SENDFILE_BYTES._value.get() == sent
    assert nothing_waiting(receiver)
    store.close()


async def test_a_slow_client_gets_the_rest_copied_after_the_hold_limit(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = pair
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    chunk_id, data = blob(40, 4 * MiB)
    writer.do("put", 40, 4 * MiB)
    store = LocalChunkStore(str(tmp_path))
    cut = SENDS.labels("cut")._value.get()
    # Nobody reads: the socket fills, and the hold ends the sendfile.
    done = await store.send(chunk_id, len(data), 0, len(data), sender.fileno(), 0.05, never)
    assert done is not None
    assert 0 < done.sent < len(data)
    assert done.sent + len(done.rest) == len(data)
    assert SENDS.labels("cut")._value.get() == cut + 1
    # The snapshot was let go: a later read sees the node's delete at once.
    writer.do("delete", chunk_id.hex())
    assert await store.read(chunk_id, len(data)) is None
    # What went out plus the copied rest is the chunk, in order.
    reading = asyncio.get_running_loop().run_in_executor(None, receive, receiver, len(data))
    sender.setblocking(True)
    sender.sendall(done.rest)
    assert await reading == data
    store.close()


async def test_a_client_gone_mid_send_is_an_oserror(
    tmp_path: Path, writer: Writer, pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = pair
    chunk_id, data = blob(50, 4 * MiB)
    writer.do("put", 50, 4 * MiB)
    store = LocalChunkStore(str(tmp_path))
    # The transport closing while the send waits for room: stopped, not held to the limit.
    closing = [False]

    def closing_soon() -> bool:
        return closing[0]

    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    task = asyncio.create_task(
        store.send(chunk_id, len(data), 0, len(data), sender.fileno(), 60.0, closing_soon)
    )
    await asyncio.sleep(0.2)
    closing[0] = True
    with pytest.raises(ConnectionResetError):
        await task
    # The peer reset the connection: the socket error comes back (EPIPE / ECONNRESET).
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    receiver.close()
    with pytest.raises(OSError):
        for _ in range(3):  # the first send after the RST may still be accepted
            await store.send(chunk_id, len(data), 0, len(data), sender.fileno(), 5.0, never)
    # The store is still usable.
    assert await store.read(chunk_id, len(data)) == data
    store.close()
