"""Random adds and discards applied to a container and to a plain `set` model alike, so a
test can compare the two after every step (tests of the sorted containers)."""

from __future__ import annotations

import random
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class _Settish(Protocol[T]):
    def add(self, item: T, /) -> Any: ...
    def discard(self, item: T, /) -> Any: ...


def churn_step(
    rng: random.Random, container: _Settish[T], model: set[T], item: T, discard: float
) -> None:
    """Discard `item` from both with probability `discard`, else add it to both."""
    if rng.random() < discard:
        container.discard(item)
        model.discard(item)
    else:
        container.add(item)
        model.add(item)
