"""Which nodes are full: they refuse chunk writes, so placement writes around them.

A node above its disk watermark answers chunk writes with `StorageFull` (its disk
figures in the detail) and says `disk_full` in `Admin.Status`. Either marks it here for
`gateway.full_node_recheck_seconds`; the membership refresh re-asks every active member
each `gateway.members_refresh_seconds`, marking the full ones again and clearing the ones
with space, so writes go back to a node within a refresh of space returning. A full node
is not a failed one: reads still go to it first, it only leaves the write order
(`Placement.write_order`), and comes back last when too few others remain, so a write
re-checks it rather than being refused on an old mark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class FullNodes:
    """Per node address: until when it gets no chunk writes, and what it last reported."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._until: dict[str, float] = {}
        self._figures: dict[str, dict[str, Any]] = {}

    def mark(self, address: str, figures: dict[str, Any] | None = None) -> None:
        self._until[address] = self._clock() + self._seconds
        if figures:
            self._figures[address] = dict(figures)

    def clear(self, address: str) -> None:
        self._until.pop(address, None)

    def is_full(self, address: str) -> bool:
        return self._until.get(address, 0.0) > self._clock()

    def figures(self, address: str) -> dict[str, Any]:
        """What the node last reported about its disk (empty when nothing)."""
        return dict(self._figures.get(address, {}))

    def split(self, items: Iterable[T], address: Callable[[T], str]) -> tuple[list[T], list[T]]:
        """(items with space, full items), each in their order."""
        ordered = list(items)
        full = [self.is_full(address(i)) for i in ordered]
        return (
            [i for i, f in zip(ordered, full, strict=True) if not f],
            [i for i, f in zip(ordered, full, strict=True) if f],
        )
