"""Hashing off the event loop: one helper and one threshold for every process.

hashlib and xxhash release the GIL on big buffers, so hashing a MiB-sized chunk in a
worker thread overlaps the event loop instead of stalling every other request; below
`INLINE_HASH_BYTES` the hop to a thread costs more than the hashing it moves.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Below this many bytes a hash runs inline on the loop.
INLINE_HASH_BYTES = 64 * 1024


async def hash_off_loop(fn: Any, data: bytes | memoryview) -> Any:
    """Run a hashing function inline for small buffers, in a worker thread for big ones."""
    if len(data) < INLINE_HASH_BYTES:
        return fn(data)
    return await asyncio.to_thread(fn, data)
