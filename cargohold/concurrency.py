"""Hashing off the event loop: one helper and one threshold for nodes and gateways.

hashlib and xxhash release the GIL on big buffers, so hashing a MiB-sized chunk in a
worker thread overlaps the event loop instead of stalling every other request for that
long; below `INLINE_HASH_BYTES` the hop to a thread costs more than the hashing it moves.
The threshold is a property of CPython and the hash functions, not of a deployment, so it
is a constant here rather than a config setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# Hashing fewer bytes than this runs inline on the loop.
INLINE_HASH_BYTES = 64 * 1024


async def hash_off_loop(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, which hashes `size` bytes: inline when that is few, else in a
    worker thread."""
    if size < INLINE_HASH_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
