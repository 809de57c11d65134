"""Which nodes failed recently: the one tracker every part of the cluster client asks.

A node that did not answer, hung a write, or was outrun by a hedged read is *limited*:
for `seconds` it is tried after the others (probes, metadata calls, replica writes and
reads), never skipped, so a cluster with too few healthy nodes still uses it. A node that
did not answer at all is also reported to the membership view (`record_failure`), which
forgets it as leader and re-learns the cluster soon. After Swift's error limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class RecentFailures:
    """Per node address, until when it is tried last."""

    def __init__(
        self,
        seconds: float,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds = seconds
        self._on_failure = on_failure
        self._clock = clock
        self._until: dict[str, float] = {}

    def is_limited(self, address: str) -> bool:
        return self._until.get(address, 0.0) > self._clock()

    def limit(self, address: str) -> None:
        """Try this node last for a while (it is slow, hung, or did not answer a probe)."""
        self._until[address] = self._clock() + self._seconds

    def record_failure(self, address: str) -> None:
        """The node did not answer a call: limit it and tell the membership view."""
        self.limit(address)
        if self._on_failure is not None:
            self._on_failure(address)

    def clear(self, address: str) -> None:
        """The node answered as a healthy member: no longer tried last."""
        self._until.pop(address, None)

    def healthy_first(self, items: Iterable[T], address: Callable[[T], str]) -> list[T]:
        """`items` in their order, the limited ones moved to the end (in their order)."""
        ordered = list(items)
        limited = [self.is_limited(address(i)) for i in ordered]
        return [i for i, bad in zip(ordered, limited, strict=True) if not bad] + [
            i for i, bad in zip(ordered, limited, strict=True) if bad
        ]
