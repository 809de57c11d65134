"""`SortedIds`: a sorted set of row ids (u32) held as 4 bytes each, walked by order key.

The search index (node/metadata/search_index.py) numbers its rows and keeps every order and
every posting list as one of these instead of a sorted list or a set of strings. Ids are
sorted either by their value (`key` None: posting lists) or by `key(id)`, a comparable
(the order key string a search cursor holds) that the caller computes from its own columns
on demand, so no key is stored: `key(id)` must not change while the id is in the set
(discard it before its row changes, add it back after).

Ids sit in sorted chunks (`array('I')`) of at most `2 * _LOAD`, as node/metadata/
sorted_names.py does it for names: adding or removing one moves at most one chunk's
entries, so upkeep stays O(log n + chunk) at any size. The chunks' last keys are kept to
bisect between chunks (one key per chunk).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from typing import Any

_LOAD = 512


class SortedIds:
    """A sorted set of u32 ids, by value or by `key(id)` (module docstring)."""

    __slots__ = ("_chunks", "_key", "_len", "_maxes")

    def __init__(
        self,
        key: Callable[[int], Any] | None = None,
        ids: Iterable[int] = (),
        ordered: bool = False,
    ) -> None:
        """The set of `ids`; `ordered`: they are distinct and in order already."""
        self._key = key
        ordered_ids = list(ids) if ordered else sorted(set(ids), key=key)
        self._fill(ordered_ids)

    def _fill(self, ordered: list[int]) -> None:
        self._chunks = [array("I", ordered[i : i + _LOAD]) for i in range(0, len(ordered), _LOAD)]
        self._maxes: list[Any] = [self._k(chunk[-1]) for chunk in self._chunks]
        self._len = len(ordered)

    def _k(self, row: int) -> Any:
        return row if self._key is None else self._key(row)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(self._chunks)

    def to_set(self) -> set[int]:
        return set(chain.from_iterable(self._chunks))

    def _find(self, k: Any) -> tuple[int, int] | None:
        """(chunk, position) of the id whose key is `k`."""
        i = bisect_left(self._maxes, k)
        if i == len(self._maxes):
            return None
        chunk = self._chunks[i]
        j = bisect_left(chunk, k, key=self._key)
        if j < len(chunk) and self._k(chunk[j]) == k:
            return i, j
        return None

    def __contains__(self, row: object) -> bool:
        if not isinstance(row, int):
            return False
        at = self._find(self._k(row))
        return at is not None and self._chunks[at[0]][at[1]] == row

    def get(self, k: Any) -> int | None:
        """The id whose key is `k` (None: none)."""
        at = self._find(k)
        return None if at is None else self._chunks[at[0]][at[1]]

    def add(self, row: int) -> None:
        k = self._k(row)
        if not self._maxes:
            self._chunks.append(array("I", (row,)))
            self._maxes.append(k)
            self._len = 1
            return
        i = bisect_left(self._maxes, k)
        if i == len(self._maxes):
            i -= 1
            chunk = self._chunks[i]
            chunk.append(row)
            self._maxes[i] = k
        else:
            chunk = self._chunks[i]
            j = bisect_left(chunk, k, key=self._key)
            if j < len(chunk) and chunk[j] == row:
                return
            chunk.insert(j, row)
        self._len += 1
        if len(chunk) > 2 * _LOAD:
            self._chunks[i : i + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
            self._maxes[i : i + 1] = [self._k(chunk[_LOAD - 1]), self._k(chunk[-1])]

    def discard(self, row: int) -> None:
        at = self._find(self._k(row))
        if at is None:
            return
        i, j = at
        chunk = self._chunks[i]
        if chunk[j] != row:
            return
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._chunks[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = self._k(chunk[-1])

    def _after(self, k: Any) -> tuple[int, int]:
        """The position of the first id whose key is above `k`."""
        i = bisect_right(self._maxes, k)
        return i, (bisect_right(self._chunks[i], k, key=self._key) if i < len(self._chunks) else 0)

    def _at_or_after(self, k: Any) -> tuple[int, int]:
        """The position of the first id whose key is `k` or above."""
        i = bisect_left(self._maxes, k)
        return i, (bisect_left(self._chunks[i], k, key=self._key) if i < len(self._chunks) else 0)

    def walk(self, after: Any = None, reverse: bool = False, stop: Any = None) -> Iterator[int]:
        """The ids whose key is above `after` (exclusive; None: from the start) and at most
        `stop` (inclusive; None: to the end), in order; or, `reverse`, those below `after`
        and at least `stop`, in reverse order. The set must not change during a walk."""
        chunks = self._chunks
        if not chunks:
            return
        if not reverse:
            i, j = (0, 0) if after is None else self._after(after)
            end_i, end_j = (len(chunks), 0) if stop is None else self._after(stop)
            for k in range(i, min(end_i + 1, len(chunks))):
                last = end_j if k == end_i else None
                yield from islice(chunks[k], j if k == i else 0, last)
            return
        i, j = (len(chunks) - 1, len(chunks[-1])) if after is None else self._at_or_after(after)
        if i == len(chunks):
            i, j = i - 1, len(chunks[-1])
        low_i, low_j = (0, 0) if stop is None else self._at_or_after(stop)
        for k in range(i, low_i - 1, -1):
            chunk = chunks[k]
            end = j if k == i else len(chunk)
            low = low_j if k == low_i else 0
            for m in range(end - 1, low - 1, -1):
                yield chunk[m]
