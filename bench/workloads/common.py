"""What every workload gets: the system, the profile, HTTP sessions, progress reporting."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.auth import TokenSource
from bench.oci import READ_BUFFER, OciClient
from bench.profiles import Profile
from bench.systems import SystemUnderTest

MiB = 1024 * 1024
# The longest wait for a system's replica copies after a push phase (a copy that never
# ends is left to repair; the measurement then goes on and says it waited this long).
SETTLE_LIMIT_SECONDS = 120.0
_SETTLE_POLL_SECONDS = 0.05

# Nonce namespaces, so that no two workloads ever produce the same bytes by accident.
NS_BLOBS, NS_STORM, NS_PUSH_STORM, NS_DEDUP, NS_MANIFESTS = 1, 2, 3, 4, 5


def nonce(namespace: int, *parts: int) -> int:
    """A 64-bit nonce from a namespace and small integers (deterministic)."""
    h = hashlib.blake2b(repr((namespace, *parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def size_label(size: int) -> str:
    if size >= 1024 * MiB and size % (1024 * MiB) == 0:
        return f"{size // (1024 * MiB)}GiB"
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB}MiB"
    return f"{size // 1024}KiB"


@dataclass
class Context:
    system: SystemUnderTest
    profile: Profile
    advance: Callable[[str], None] = field(default=lambda _label: None)
    # Token auth like docker's (bench/auth.py) when the system has credentials; shared by
    # every client of the run, so each scope's token is fetched once.
    tokens: TokenSource | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        credentials = getattr(self.system, "credentials", None)
        if credentials is not None:
            self.tokens = TokenSource(self.system.urls[0], *credentials)

    @property
    def urls(self) -> list[str]:
        return self.system.urls


@contextlib.asynccontextmanager
async def sessions(ctx: Context, connections: int) -> AsyncIterator[list[OciClient]]:
    """One client per gateway URL sharing one pool of `connections` connections."""
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=0, ttl_dns_cache=None, enable_cleanup_closed=False
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=READ_BUFFER
    ) as session:
        yield [OciClient(url, session, ctx.tokens) for url in ctx.urls]


def pick(clients: list[OciClient], index: int) -> OciClient:
    return clients[index % len(clients)]


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def settle() -> None:
    """Flush dirty pages before the next measurement (untimed). A system that does not
    fsync (Distribution's filesystem driver) leaves its writes to the kernel's writeback,
    which would otherwise slow down whatever is measured next, on any system."""
    await asyncio.to_thread(os.sync)


async def settle_writes(ctx: Context, limit: float = SETTLE_LIMIT_SECONDS) -> float:
    """After a push phase (untimed): wait until the system writes no replica copies any
    more (`copies_in_flight`), then `settle`. Returns the seconds it took.

    Every system gets the same call; only one that acknowledges a push before its last
    copy is written (Cargohold at R=3 W=2) waits at all. Without it, a pull measured right
    after a push also pays for the copies of that push still being written, which
    Distribution, having written everything when it answers, never does."""
    started = time.monotonic()
    while await ctx.system.copies_in_flight() > 0:
        if time.monotonic() - started > limit:
            break
        await asyncio.sleep(_SETTLE_POLL_SECONDS)
    await settle()
    return time.monotonic() - started
