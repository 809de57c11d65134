"""`SortedNames`: a sorted set of strings kept in order as names come and go, paged by `last`.

The metadata state (node/metadata/state.py) keeps one for the catalogue and one per listed
repository's tags, so a `tags_list` or `catalog` page is a bisect and a slice of at most
`n` names: no request sorts or copies a whole repository's tag list, and a push does not
throw an order away. The chunked sorted set is node/metadata/sorted_chunks.py's (the search
index's orders use it too), its chunks lists of the names: adding or removing a name moves
at most one chunk's pointers, not the whole list's, so a 1 M-tag repository costs a push
microseconds. Python orders str by code point, which is the UTF-8 byte order the
distribution spec asks for. About 9 bytes per name (a pointer, and the chunks' spare room).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from node.metadata.sorted_chunks import SortedChunks


class SortedNames(SortedChunks[str]):
    """A sorted set of str (module docstring)."""

    __slots__ = ()

    def __init__(self, names: Iterable[str] = ()) -> None:
        super().__init__(None, names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._has(name)

    def page(self, n: int | None, last: str | None = None) -> tuple[list[str], bool]:
        """At most `n` names after `last` (exclusive; None: from the start; `n` None: all),
        and whether more follow."""
        return super().page(n, last)

    def walk(
        self, after: str | None = None, reverse: bool = False, stop: str | None = None
    ) -> Iterator[str]:
        """Every name after `after` (exclusive; None: from the start), in order, or before
        it in reverse order; the set must not change while a walk is in progress."""
        return super().walk(after, reverse, stop)
