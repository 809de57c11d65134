"""`SortedChunks`: a sorted set kept in sorted chunks, the one container behind the listing
orders (node/metadata/sorted_names.py: names) and the search index's orders and postings
(node/metadata/sorted_ids.py: u32 row ids).

Items sit in sorted chunks of at most `2 * _LOAD` (a chunked list, as `sortedcontainers`
does it): adding or removing one moves at most one chunk's entries, not the whole set's, so
upkeep stays O(log n + chunk) at any size, and a page or a walk from a bound is a bisect
and a slice. The chunks' last keys are kept to bisect between chunks (one key per chunk).
Items are ordered by their value (`key` None) or by `key(item)`, a comparable the caller
computes on demand, so no key is stored per item: `key(item)` must not change while the
item is in the set (discard it before it changes, add it back after). A subclass chooses
the chunk type (`_chunk`): a list of references, or an `array` of machine integers.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from itertools import chain, islice
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")

_LOAD = 512


class SortedChunks(Generic[T]):
    """A sorted set of items, by value or by `key(item)` (module docstring)."""

    __slots__ = ("_chunks", "_key", "_len", "_maxes")

    def __init__(
        self,
        key: Callable[[T], Any] | None = None,
        items: Iterable[T] = (),
        ordered: bool = False,
    ) -> None:
        """The set of `items`; `ordered`: they are distinct and in order already."""
        self._key = key
        # key None sorts by value (the items are comparable then): one C call either way.
        ordered_items: list[T] = list(items) if ordered else sorted(set(items), key=cast(Any, key))
        self._chunks: list[MutableSequence[T]] = [
            self._chunk(ordered_items[i : i + _LOAD]) for i in range(0, len(ordered_items), _LOAD)
        ]
        self._maxes: list[Any] = [self._k(chunk[-1]) for chunk in self._chunks]
        self._len = len(ordered_items)

    def _chunk(self, items: list[T]) -> MutableSequence[T]:
        """A chunk holding `items` (a subclass's storage)."""
        return items

    def _k(self, item: T) -> Any:
        return item if self._key is None else self._key(item)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        return chain.from_iterable(self._chunks)

    def _find(self, k: Any) -> tuple[int, int] | None:
        """(chunk, position) of the item whose key is `k`."""
        i = bisect_left(self._maxes, k)
        if i == len(self._maxes):
            return None
        chunk = self._chunks[i]
        j = bisect_left(chunk, k, key=self._key)
        if j < len(chunk) and self._k(chunk[j]) == k:
            return i, j
        return None

    def _has(self, item: T) -> bool:
        at = self._find(self._k(item))
        return at is not None and self._chunks[at[0]][at[1]] == item

    def get(self, k: Any) -> T | None:
        """The item whose key is `k` (None: none)."""
        at = self._find(k)
        return None if at is None else self._chunks[at[0]][at[1]]

    def add(self, item: T) -> None:
        k = self._k(item)
        if not self._maxes:
            self._chunks.append(self._chunk([item]))
            self._maxes.append(k)
            self._len = 1
            return
        i = bisect_left(self._maxes, k)
        if i == len(self._maxes):
            i -= 1
            chunk = self._chunks[i]
            chunk.append(item)
            self._maxes[i] = k
        else:
            chunk = self._chunks[i]
            j = bisect_left(chunk, k, key=self._key)
            if j < len(chunk) and chunk[j] == item:
                return
            chunk.insert(j, item)
        self._len += 1
        if len(chunk) > 2 * _LOAD:
            self._chunks[i : i + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
            self._maxes[i : i + 1] = [self._k(chunk[_LOAD - 1]), self._k(chunk[-1])]

    def discard(self, item: T) -> None:
        at = self._find(self._k(item))
        if at is None:
            return
        i, j = at
        chunk = self._chunks[i]
        if chunk[j] != item:
            return
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._chunks[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = self._k(chunk[-1])

    def _after(self, k: Any) -> tuple[int, int]:
        """The position of the first item whose key is above `k`."""
        i = bisect_right(self._maxes, k)
        return i, (bisect_right(self._chunks[i], k, key=self._key) if i < len(self._chunks) else 0)

    def _at_or_after(self, k: Any) -> tuple[int, int]:
        """The position of the first item whose key is `k` or above."""
        i = bisect_left(self._maxes, k)
        return i, (bisect_left(self._chunks[i], k, key=self._key) if i < len(self._chunks) else 0)

    def walk(self, after: Any = None, reverse: bool = False, stop: Any = None) -> Iterator[T]:
        """The items whose key is above `after` (exclusive; None: from the start) and at most
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

    def page(self, n: int | None, after: Any = None) -> tuple[list[T], bool]:
        """At most `n` items whose key is above `after` (exclusive; None or empty: from the
        start; `n` None: all), and whether more follow."""
        if n == 0:
            return [], False
        i, j = self._after(after) if after else (0, 0)
        out: list[T] = []
        while i < len(self._chunks):
            chunk = self._chunks[i]
            take = len(chunk) - j if n is None else min(len(chunk) - j, n - len(out))
            out.extend(chunk[j : j + take])
            if n is not None and len(out) == n:
                more = j + take < len(chunk) or i + 1 < len(self._chunks)
                return out, more
            i, j = i + 1, 0
        return out, False
