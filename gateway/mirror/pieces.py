"""A download's pieces kept in memory, found by offset (gateway/mirror/fetch.py).

The pieces are the `bytes` objects the upstream's socket reads produced, kept as they are:
readers (the clients, the cluster write) are handed memoryviews of them, so however many
read a piece it exists once. `Pieces(keep=None)` keeps every piece (a download held whole
in memory, gateway/mirror/pool.py); `Pieces(keep=n)` only the newest ones, about `n`
bytes (always at least the newest piece), for readers near the download's front while
older bytes are read from the spool. Finding a piece is a bisection, so a reader far
behind the front costs as little per read as one at the front, however small the pieces.
"""

from __future__ import annotations

import bisect

# Dropped pieces' slots are compacted away once this many have accumulated (and they
# are at least half the list), so a long spooled download's index stays small.
_COMPACT = 1024


class Pieces:
    """Pieces of one download by offset: all of them, or the newest `keep` bytes."""

    def __init__(self, keep: int | None) -> None:
        self._keep = keep
        self._offsets: list[int] = []
        self._data: list[bytes] = []
        self._first = 0  # index of the oldest piece still kept
        self.kept = 0  # bytes kept

    def append(self, offset: int, data: bytes) -> None:
        """Keep `data`, the bytes at `offset` (right after the previous piece)."""
        self._offsets.append(offset)
        self._data.append(data)
        self.kept += len(data)
        if self._keep is None:
            return
        while self._first < len(self._data) - 1 and self.kept > self._keep:
            self.kept -= len(self._data[self._first])
            self._data[self._first] = b""
            self._first += 1
        if self._first >= _COMPACT and self._first * 2 >= len(self._data):
            del self._offsets[: self._first], self._data[: self._first]
            self._first = 0

    def view(self, pos: int, end: int) -> memoryview | None:
        """Bytes [pos, min(end, the end of pos's piece)) if that piece is kept, else None."""
        i = bisect.bisect_right(self._offsets, pos) - 1
        if i < self._first:
            return None
        offset, data = self._offsets[i], self._data[i]
        if pos >= offset + len(data):
            return None
        return memoryview(data)[pos - offset : end - offset]

    def clear(self) -> None:
        self._offsets, self._data, self._first, self.kept = [], [], 0, 0

    def __len__(self) -> int:
        return len(self._data) - self._first
