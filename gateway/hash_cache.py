"""The per-gateway LRU of running upload digests (invariant 5 of docs/architecture.md).

hashlib cannot export its state, so a gateway keeps the running sha256 of each upload it
served, keyed by upload id, together with the byte offset it covers and the chunk list
that makes up those bytes (`Session`). It is only a cache: a PATCH/PUT on a gateway that
lacks the entry, or whose offset differs from the size Raft holds for the upload (another
gateway appended meanwhile), rebuilds the digest by reading the upload's stored chunks
back (`rebuild`). Entries are *taken* out while a request uses them, so two concurrent
requests on one upload never share a mutable hash object (the loser of the Raft offset
CAS gets a 416 anyway).

An entry with its chunk list lets a PATCH or PUT skip the linearizable `upload_get` read
(gateway/uploads.py says why that stays safe when another gateway made it stale).
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass
from typing import Any

from cargohold.concurrency import hash_off_loop
from cargohold.digests import new_hasher
from gateway.cluster import ClusterClient


@dataclass(frozen=True)
class Session:
    """What this gateway last knew of an upload: `offset` bytes, hashed by `hasher`, stored
    as `chunks` ([[chunk_hex, length], ...]; None when not known here)."""

    offset: int
    hasher: Any
    chunks: list[list[Any]] | None = None


class HashCache:
    """upload id -> `Session`, least recently used evicted."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._entries: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def take(self, upload: str, offset: int) -> Any | None:
        """Remove and return the running hash if it covers exactly `offset` bytes."""
        entry = self._entries.pop(upload, None)
        if entry is None or entry.offset != offset:
            return None
        return entry.hasher

    def take_session(self, upload: str) -> Session | None:
        """Remove and return the entry when it knows the upload's chunks (else leave it)."""
        entry = self._entries.get(upload)
        if entry is None or entry.chunks is None:
            return None
        del self._entries[upload]
        return entry

    def put(
        self, upload: str, offset: int, hasher: Any, chunks: list[list[Any]] | None = None
    ) -> None:
        self._entries[upload] = Session(offset, hasher, chunks)
        self._entries.move_to_end(upload)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def drop(self, upload: str) -> None:
        self._entries.pop(upload, None)

    def __len__(self) -> int:
        return len(self._entries)


async def rebuild(cluster: ClusterClient, chunks: list[list[Any]], algorithm: str) -> Any:
    """A fresh `algorithm` hash over the stored bytes of `chunks` (read back, verified)."""
    hasher = new_hasher(algorithm)
    size = sum(int(c[1]) for c in chunks)
    recipe = {"size": size, "chunks": chunks}
    async with contextlib.aclosing(cluster.read_range(recipe, 0, size)) as pieces:
        async for piece in pieces:
            await hash_off_loop(len(piece), hasher.update, piece)
    return hasher
