"""`MemoryChunkStore`: the `ChunkStore` contract held in a dict, for tests of other parts.

Same semantics as `LmdbChunkStore` (values are `checksum || data`, a failing copy moves to a
quarantine dict, counters kept alongside) minus durability. `capacity_bytes` makes it raise
`StorageFull` like a full LMDB map; `corrupt()` is the test hook that flips a stored byte.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from cargohold.errors import ChunkCorrupt, ChunkMissing, StorageFull, Unavailable
from node.chunk_touch import ChunkTouches
from node.chunkstore import (
    CHECKSUM_LEN,
    CHUNK_ID_LEN,
    ChunkStats,
    is_intact,
    is_sound,
    prepare_value_async,
)


class MemoryChunkStore:
    def __init__(self, capacity_bytes: int | None = None) -> None:
        self._values: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []  # sorted, for list_ids
        self._quarantine: dict[bytes, bytes] = {}
        self._bytes = 0
        self._capacity = capacity_bytes
        self._closed = False
        self.touches = ChunkTouches()

    async def put(
        self,
        chunk_id: bytes,
        data: bytes | memoryview,
        checksum: bytes | None = None,
        verify_id: bool = True,
    ) -> bool:
        self._check_open()
        value = await prepare_value_async(chunk_id, data, checksum, verify_id)
        existing = self._values.get(chunk_id)
        self.touches.touch((chunk_id,))
        if existing is not None:
            if is_intact(existing):
                return True
            self._move_to_quarantine(chunk_id)
        if self._capacity is not None and self._bytes + len(data) > self._capacity:
            raise StorageFull(detail={"capacity": self._capacity})
        self._values[chunk_id] = value
        bisect.insort(self._keys, chunk_id)
        self._bytes += len(data)
        return False

    async def put_value(
        self, chunk_id: bytes, value: bytes | bytearray | memoryview, verify_id: bool = True
    ) -> bool:
        view = memoryview(value)
        return await self.put(chunk_id, view[CHECKSUM_LEN:], bytes(view[:CHECKSUM_LEN]), verify_id)

    async def get(self, chunk_id: bytes) -> bytes:
        data, _ = await self.get_with_checksum(chunk_id)
        return data

    async def get_with_checksum(self, chunk_id: bytes) -> tuple[bytes, bytes]:
        value = self._value(chunk_id)
        if not is_intact(value):
            self._move_to_quarantine(chunk_id)
            raise ChunkCorrupt(detail={"chunk": chunk_id.hex()})
        return value[CHECKSUM_LEN:], value[:CHECKSUM_LEN]

    async def get_encoded(
        self, chunk_id: bytes, encode: Callable[[memoryview, bytes], bytes]
    ) -> bytes:
        data, checksum = await self.get_with_checksum(chunk_id)
        return encode(memoryview(data), checksum)

    async def verify(self, chunk_id: bytes) -> bool:
        if is_sound(chunk_id, self._value(chunk_id)):
            return True
        self._move_to_quarantine(chunk_id)
        return False

    async def has(self, ids: list[bytes], *, touch: bool = True) -> list[bool]:
        self._check_open()
        if touch:
            self.touches.touch(ids)
        return [i in self._values for i in ids]

    async def delete(self, ids: list[bytes]) -> int:
        self._check_open()
        deleted = 0
        for chunk_id in ids:
            if chunk_id in self._values:
                self._remove(chunk_id)
                deleted += 1
        return deleted

    async def sweep(self, ids: list[bytes], idle_before: float) -> tuple[int, int]:
        self._check_open()
        count = freed = 0
        for chunk_id in ids:
            if chunk_id in self._values and self.touches.idle_before(chunk_id, idle_before):
                freed += len(self._remove(chunk_id)) - CHECKSUM_LEN
                count += 1
        return count, freed

    async def list_ids(self, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        self._check_open()
        if limit <= 0:
            return []
        start = bisect.bisect_right(self._keys, after)
        return [(k, len(self._values[k]) - CHECKSUM_LEN) for k in self._keys[start : start + limit]]

    async def stats(self) -> ChunkStats:
        self._check_open()
        return ChunkStats(
            count=len(self._values), bytes=self._bytes, quarantined=len(self._quarantine)
        )

    def close(self) -> None:
        self._closed = True

    def corrupt(self, chunk_id: bytes, index: int = -1) -> None:
        """Test hook: flip one bit of the stored `checksum || data` value at `index`."""
        value = bytearray(self._values[chunk_id])
        value[index] ^= 0x01
        self._values[chunk_id] = bytes(value)

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("chunk store is closed")

    def _value(self, chunk_id: bytes) -> bytes:
        self._check_open()
        value = self._values.get(chunk_id) if len(chunk_id) == CHUNK_ID_LEN else None
        if value is None:
            raise ChunkMissing(detail={"chunk": chunk_id.hex()})
        return value

    def _remove(self, chunk_id: bytes) -> bytes:
        value = self._values.pop(chunk_id)
        del self._keys[bisect.bisect_left(self._keys, chunk_id)]
        self._bytes -= len(value) - CHECKSUM_LEN
        return value

    def _move_to_quarantine(self, chunk_id: bytes) -> None:
        self._quarantine[chunk_id] = self._remove(chunk_id)
