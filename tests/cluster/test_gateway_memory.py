"""The gateway's memory is bounded by its configuration, not by its clients (real processes).

400 clients each start an upload, PATCH about one chunk of a body that declares 64 MiB,
and stall (the reproduction of issue 10: the gateway grew by ~4 MiB per client and kept
most of it after they left). With `gateway.max_buffered_bytes` = B the gateway's RSS must
stay within start + B + 64 MiB while they stall, and be back within 64 MiB of the start
at most 30 s after they vanish, and stay there (sampled every 0.5 s, then for
`_SETTLED` s more). RSS is read from /proc: a memory bound, not a timing assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cargohold_cli.devcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MiB = 1024 * 1024
CLIENTS = 400
BUDGET = 128 * MiB
SENT = 4 * MiB - 1024  # just short of a chunk, so nothing is ever stored
DECLARED = 64 * MiB
PIECE = b"\0" * (64 * 1024)
# A client whose writes do not drain for this long is being pushed back: it stalls there.
_PUSHED_BACK = 3.0
_GUARD = 60.0
# Once RSS is back within bound after the clients vanished, it must stay there this long.
_SETTLED = 3.0
_RETURN_LIMIT = 30.0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _head(reader: asyncio.StreamReader) -> dict[str, str]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _GUARD)
    status, *lines = raw.decode().strip().split("\r\n")
    assert " 202 " in status, status
    return {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}


async def stalled_upload(
    host: str, port: int, index: int, vanish: asyncio.Event, stalled: list[int]
) -> int:
    """Start an upload, send SENT of DECLARED bytes (or less if pushed back), then hang."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _GUARD)
    try:
        writer.write(
            f"POST /v2/memtest/r{index}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        location = (await _head(reader))["location"]
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {DECLARED}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        sent = 0
        while sent < SENT:
            piece = PIECE[: min(len(PIECE), SENT - sent)]
            writer.write(piece)
            sent += len(piece)
            try:
                await asyncio.wait_for(writer.drain(), _PUSHED_BACK)
            except TimeoutError:
                break  # the gateway stopped reading this socket: backpressure
        stalled.append(index)
        await vanish.wait()
        return sent
    finally:
        writer.transport.abort()  # vanish: no FIN handshake, no rest of the body


def test_stalled_uploads_stay_within_the_budget_and_memory_returns(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(
        extra={"gateway": {"max_buffered_bytes": BUDGET, "body_idle_timeout_seconds": 120}}
    )
    proc = cluster.gateway_procs[0]
    assert proc is not None
    url = urlsplit(cluster.gateway_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    result: dict[str, Any] = asyncio.run(_run(host, port, proc.pid))
    start, peak, after = result["start"], result["peak"], result["after"]
    print(
        f"gateway RSS: start {start / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, "
        f"{result['returned']:.1f} s after the clients left {after / MiB:.0f} MiB; "
        f"client bytes sent {result['sent'] / MiB:.0f} MiB"
    )
    assert proc.poll() is None, cluster.tail_logs()
    assert peak <= start + BUDGET + 64 * MiB
    assert after <= start + 64 * MiB


async def _run(host: str, port: int, pid: int) -> dict[str, Any]:
    # Warm up (imports, first connections to the nodes) before the baseline.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await asyncio.wait_for(reader.read(), _GUARD)
    writer.close()
    await asyncio.sleep(1.0)
    start = rss(pid)
    peak = start
    vanish = asyncio.Event()
    stalled: list[int] = []
    clients = [
        asyncio.create_task(stalled_upload(host, port, i, vanish, stalled)) for i in range(CLIENTS)
    ]

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    # Until every client sent all it will (or is pushed back), then a few seconds of stall.
    deadline = time.monotonic() + _GUARD
    while len(stalled) < CLIENTS and time.monotonic() < deadline:
        failed = [c for c in clients if c.done()]
        if failed:
            failed[0].result()  # a client that ended early: show why
        await asyncio.sleep(0.5)
    assert len(stalled) == CLIENTS
    await asyncio.sleep(5.0)
    peak = max(peak, rss(pid))
    vanish.set()
    sent = sum(await asyncio.gather(*clients))
    sampler.cancel()
    # Memory returns: at most _RETURN_LIMIT s after they vanished RSS is within bound, and
    # it stays there for _SETTLED s (the largest sample of that window is the result).
    vanished = time.monotonic()
    bound = start + 64 * MiB
    after = rss(pid)
    while after > bound and time.monotonic() - vanished < _RETURN_LIMIT:
        await asyncio.sleep(0.5)
        after = rss(pid)
    returned = time.monotonic() - vanished
    settled = time.monotonic() + _SETTLED
    while time.monotonic() < settled:
        await asyncio.sleep(0.5)
        after = max(after, rss(pid))
    return {"start": start, "peak": peak, "after": after, "sent": sent, "returned": returned}
