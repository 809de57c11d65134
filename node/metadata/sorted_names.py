"""`SortedNames`: a sorted set of strings kept in order as names come and go, paged by `last`.

The metadata state (node/metadata/state.py) keeps one for the catalogue and one per listed
repository's tags, so a `tags_list` or `catalog` page is a bisect and a slice of at most
`n` names: no request sorts or copies a whole repository's tag list, and a push does not
throw an order away. Names are held in sorted chunks of at most `2 * _LOAD` (a chunked
list, as `sortedcontainers` does it): adding or removing a name moves at most one chunk's
pointers, not the whole list's, so a 1 M-tag repository costs a push microseconds. Python
orders str by code point, which is the UTF-8 byte order the distribution spec asks for.
About 9 bytes per name (a pointer, and the chunks' spare room).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from itertools import islice

_LOAD = 512


class SortedNames:
    """A sorted set of str (module docstring)."""

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self, names: Iterable[str] = ()) -> None:
        ordered = sorted(set(names))
        self._chunks = [ordered[i : i + _LOAD] for i in range(0, len(ordered), _LOAD)]
        self._maxes = [chunk[-1] for chunk in self._chunks]
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            yield from chunk

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not self._maxes:
            return False
        i = bisect_left(self._maxes, name)
        if i == len(self._maxes):
            return False
        chunk = self._chunks[i]
        j = bisect_left(chunk, name)
        return j < len(chunk) and chunk[j] == name

    def add(self, name: str) -> None:
        if not self._maxes:
            self._chunks.append([name])
            self._maxes.append(name)
            self._len = 1
            return
        i = bisect_left(self._maxes, name)
        if i == len(self._maxes):
            i -= 1
            chunk = self._chunks[i]
            chunk.append(name)
            self._maxes[i] = name
        else:
            chunk = self._chunks[i]
            j = bisect_left(chunk, name)
            if j < len(chunk) and chunk[j] == name:
                return
            insort(chunk, name)
        self._len += 1
        if len(chunk) > 2 * _LOAD:
            self._chunks[i : i + 1] = [chunk[:_LOAD], chunk[_LOAD:]]
            self._maxes[i : i + 1] = [chunk[_LOAD - 1], chunk[-1]]

    def discard(self, name: str) -> None:
        i = bisect_left(self._maxes, name)
        if i == len(self._maxes):
            return
        chunk = self._chunks[i]
        j = bisect_left(chunk, name)
        if j == len(chunk) or chunk[j] != name:
            return
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._chunks[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = chunk[-1]

    def page(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """At most `n` names after `last` (exclusive; None: from the start; `n` None: all),
        and whether more follow."""
        if n == 0:
            return [], False
        if last:
            i = bisect_right(self._maxes, last)
            j = bisect_right(self._chunks[i], last) if i < len(self._chunks) else 0
        else:
            i = j = 0
        out: list[str] = []
        while i < len(self._chunks):
            chunk = self._chunks[i]
            take = len(chunk) - j if n is None else min(len(chunk) - j, n - len(out))
            out += chunk[j : j + take]
            if n is not None and len(out) == n:
                more = j + take < len(chunk) or i + 1 < len(self._chunks)
                return out, more
            i, j = i + 1, 0
        return out, False

    def walk(self, after: str | None = None, reverse: bool = False) -> Iterator[str]:
        """Every name after `after` (exclusive; None: from the start), in order, or before
        it in reverse order; the set must not change while a walk is in progress."""
        chunks = self._chunks
        if not reverse:
            if after is None:
                i = j = 0
            else:
                i = bisect_right(self._maxes, after)
                j = bisect_right(chunks[i], after) if i < len(chunks) else 0
            for k in range(i, len(chunks)):
                yield from islice(chunks[k], j if k == i else 0, None)
            return
        if not chunks:
            return
        if after is None:
            i, j = len(chunks) - 1, len(chunks[-1])
        else:
            i = bisect_left(self._maxes, after)
            if i == len(chunks):
                i, j = i - 1, len(chunks[-1])
            else:
                j = bisect_left(chunks[i], after)
        for k in range(i, -1, -1):
            chunk = chunks[k]
            end = j if k == i else len(chunk)
            for m in range(end - 1, -1, -1):
                yield chunk[m]
