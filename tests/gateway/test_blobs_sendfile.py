"""Blob GETs with local chunks sent by sendfile (gateway/local_send.py) through the real app:
fake nodes hold every chunk, a real node chunk store written by another process
(test_local_reads.Writer) holds some of them, so bodies mix local and remote pieces."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from fakenodes import DataPath, data_path, eventually, production_server, vanish_mid_body
from test_local_reads import Writer

from cargohold.digests import checksum_of, digest_of
from gateway.app import build_app
from gateway.cluster.local_reads import READS, SENDFILE_BYTES, WRITTEN_BYTES, LocalChunkStore
from gateway.context import GatewayContext
from gateway.server import _ssl_context, make_runner

CHUNK = 64 * 1024
DATA = os.urandom(6 * CHUNK + 1000)
DIGEST = digest_of(DATA)
URL = f"/v2/lib/app/blobs/{DIGEST}"
PIECES = [DATA[i : i + CHUNK] for i in range(0, len(DATA), CHUNK)]
LOCAL = [0, 1, 3, 6]  # chunks the local node holds (6: the short last one)


def local_value(index: int, rotten: bool = False) -> str:
    data = PIECES[index]
    stored = bytearray(data)
    if rotten:
        stored[len(stored) // 2] ^= 0x01
    return (checksum_of(data) + bytes(stored)).hex()


async def start(tmp_path: Path, sendfile: bool, loopback: str = "on") -> AsyncIterator[DataPath]:
    # The test client is on loopback: "on" whatever this host's probe would choose.
    async for dp in data_path(
        3,
        gateway__local_node_data_dir=str(tmp_path),
        gateway__local_sendfile=sendfile,
        gateway__local_sendfile_loopback=loopback,
        gateway__hedge_after_seconds=10.0,  # counts below are exact, not raced by hedges
        gateway__sendfile_hold_seconds=60.0,  # nor cut short by a loaded machine
    ):
        resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={DIGEST}", data=DATA)
        assert resp.status == 201
        yield dp


@pytest.fixture
def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    w = Writer(tmp_path)
    for index in LOCAL:
        w.do("raw", digest_of(PIECES[index]).removeprefix("sha256:"), local_value(index))
    try:
        yield w  # type: ignore[misc]
    finally:
        w.close()


def sent_by_sendfile() -> float:
    return float(SENDFILE_BYTES._value.get())


async def counted(before: float, expected: int) -> None:
    """The sendfile byte count reaches `expected`: the client can have the whole body (the
    kernel delivered it) a moment before the worker that sent the last piece counts it."""
    await eventually(lambda: sent_by_sendfile() - before == expected, f"{expected} bytes counted")


RANGES = [
    (100, 1100),  # inside a local chunk
    (CHUNK - 10, 4 * CHUNK + 10),  # local, remote, local, remote
    (2 * CHUNK + 5, 2 * CHUNK + 50),  # inside a remote chunk
    (len(DATA) - 500, len(DATA)),  # the tail, local
]


@pytest.mark.parametrize(("sendfile", "loopback"), [(True, "on"), (False, "on"), (True, "off")])
async def test_whole_and_ranged_gets_are_exact_in_order(
    tmp_path: Path, writer: Writer, sendfile: bool, loopback: str
) -> None:
    """With `local_sendfile_loopback` off, this loopback client gets writes from the map."""
    async for dp in start(tmp_path, sendfile, loopback):
        before, written = sent_by_sendfile(), WRITTEN_BYTES._value.get()
        resp = await dp.http.get(URL)
        assert resp.status == 200
        assert await resp.read() == DATA
        local_bytes = sum(len(PIECES[i]) for i in LOCAL)
        await counted(before, local_bytes if sendfile and loopback == "on" else 0)
        if sendfile and loopback == "off":  # written from the map instead, as many bytes
            want = written + local_bytes
            await eventually(lambda w=want: WRITTEN_BYTES._value.get() == w, "written bytes")
        for lo, hi in RANGES:
            resp = await dp.http.get(URL, headers={"Range": f"bytes={lo}-{hi - 1}"})
            assert resp.status == 206
            assert await resp.read() == DATA[lo:hi]
        # Keep-alive survives bytes sent beside aiohttp: the same connection serves again.
        resp = await dp.http.get(URL)
        assert await resp.read() == DATA


@pytest.mark.parametrize("sendfile", [True, False])
async def test_a_corrupt_local_chunk_is_served_from_a_replica(
    tmp_path: Path, writer: Writer, sendfile: bool
) -> None:
    rotten = 3
    writer.do("raw", digest_of(PIECES[rotten]).removeprefix("sha256:"), local_value(rotten, True))
    async for dp in start(tmp_path, sendfile):
        corrupt, before = READS.labels("corrupt")._value.get(), sent_by_sendfile()
        resp = await dp.http.get(URL)
        assert await resp.read() == DATA
        assert READS.labels("corrupt")._value.get() == corrupt + 1
        good = sum(len(PIECES[i]) for i in LOCAL if i != rotten)
        await counted(before, good if sendfile else 0)


async def test_a_chunk_gone_after_its_lookup_is_read_from_the_nodes(
    tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup in the read-ahead said held, the send found nothing (deleted meanwhile):
    the chunk is read as usual, in its place."""

    async def always(self: LocalChunkStore, chunk_id: bytes) -> bool:
        return True

    monkeypatch.setattr(LocalChunkStore, "holds", always)
    async for dp in start(tmp_path, True):
        resp = await dp.http.get(URL)
        assert await resp.read() == DATA
        resp = await dp.http.get(URL, headers={"Range": f"bytes={CHUNK - 10}-{3 * CHUNK}"})
        assert await resp.read() == DATA[CHUNK - 10 : 3 * CHUNK + 1]


async def test_a_client_gone_mid_body_is_only_logged(
    tmp_path: Path, writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    big = os.urandom(64 * CHUNK)
    async for dp in start(tmp_path, True):
        resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={digest_of(big)}", data=big)
        assert resp.status == 201
        for i in range(0, len(big), CHUNK):
            piece = big[i : i + CHUNK]
            writer.do(
                "raw", digest_of(piece).removeprefix("sha256:"), (checksum_of(piece) + piece).hex()
            )
        caplog.set_level(logging.DEBUG, logger="cargohold.gateway.blobs")
        async for url in production_server(dp.cfg, dp.cluster):
            await vanish_mid_body(url, f"/v2/lib/app/blobs/{digest_of(big)}", caplog.records)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        resp = await dp.http.get(f"/v2/lib/app/blobs/{digest_of(big)}")
        assert await resp.read() == big


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_connections_are_written_as_before(
    tmp_path: Path, writer: Writer, self_signed: tuple[Path, Path]
) -> None:
    """Bytes sent beside a TLS transport would be plaintext inside its record stream: a
    TLS connection never takes the sendfile path, and its body is exact."""
    cert, key = self_signed
    async for dp in start(tmp_path, True):
        dp.cfg.gateway.tls_cert, dp.cfg.gateway.tls_key = str(cert), str(key)
        runner = make_runner(build_app(GatewayContext(cfg=dp.cfg, cluster=dp.cluster)), dp.cfg)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_ssl_context(dp.cfg))
        await site.start()
        try:
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            client_ctx = ssl.create_default_context(cafile=str(cert))
            before = sent_by_sendfile()
            async with aiohttp.ClientSession() as session:
                url = f"https://127.0.0.1:{port}{URL}"
                async with session.get(url, ssl=client_ctx) as resp:
                    assert resp.status == 200
                    assert await resp.read() == DATA
            assert sent_by_sendfile() == before
            # The same gateway over plain HTTP does send them (the switch is on).
            resp = await dp.http.get(URL)
            assert await resp.read() == DATA
            await counted(before, sum(len(PIECES[i]) for i in LOCAL))
        finally:
            await runner.cleanup()
