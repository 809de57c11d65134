"""`SortedIds`: a sorted set of row ids (u32) held as 4 bytes each, walked by order key.

The search index (node/metadata/search_index.py) numbers its rows and keeps every order and
every posting list as one of these instead of a sorted list or a set of strings. Ids are
sorted either by their value (`key` None: posting lists) or by `key(id)`, a comparable
(the order key string a search cursor holds) that the caller computes from its own columns
on demand, so no key is stored: `key(id)` must not change while the id is in the set
(discard it before its row changes, add it back after).

The chunked sorted set itself is node/metadata/sorted_chunks.py's (the listing orders use
it too); here its chunks are `array('I')`, so an id costs 4 bytes, not a pointer and an int.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, MutableSequence
from itertools import chain
from typing import Any

from node.metadata.sorted_chunks import SortedChunks


class SortedIds(SortedChunks[int]):
    """A sorted set of u32 ids, by value or by `key(id)` (module docstring)."""

    __slots__ = ()

    def __init__(
        self,
        key: Callable[[int], Any] | None = None,
        ids: Iterable[int] = (),
        ordered: bool = False,
    ) -> None:
        """The set of `ids`; `ordered`: they are distinct and in order already."""
        super().__init__(key, ids, ordered)

    def _chunk(self, items: list[int]) -> MutableSequence[int]:
        return array("I", items)

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int) and self._has(row)

    def to_set(self) -> set[int]:
        return set(chain.from_iterable(self._chunks))
