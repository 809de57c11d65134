"""`SortedIds` (node/metadata/sorted_ids.py) against a sorted list: adds, discards, lookups
and walks in both directions with bounds, with chunks small enough to split and empty."""

from __future__ import annotations

import random

import pytest

from node.metadata import sorted_ids
from node.metadata.sorted_ids import SortedIds


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sorted_ids, "_LOAD", 3)


def _model_walk(keys: list[str], after: str | None, reverse: bool, stop: str | None) -> list[str]:
    if not reverse:
        return [k for k in keys if (after is None or k > after) and (stop is None or k <= stop)]
    return [
        k for k in reversed(keys) if (after is None or k < after) and (stop is None or k >= stop)
    ]


def test_keyed_ids_follow_a_sorted_list() -> None:
    rng = random.Random(7)
    names = {i: f"n{rng.randint(0, 10**6):07d}" for i in range(200)}
    ids = SortedIds(names.__getitem__, range(0, 200, 2))
    live = set(range(0, 200, 2))
    for step in range(600):
        row = rng.randrange(200)
        if rng.random() < 0.5:
            ids.add(row)
            live.add(row)
        else:
            ids.discard(row)
            live.discard(row)
        keys = sorted(names[i] for i in live)
        assert len(ids) == len(live)
        assert [names[i] for i in ids] == keys
        assert (row in ids) == (row in live)
        assert ids.get(names[row]) == (row if row in live else None)
        if step % 10 == 0:
            bounds = [None, *rng.sample(keys or ["x"], 1), f"n{rng.randint(0, 10**6):07d}"]
            for after in bounds:
                for stop in bounds:
                    for reverse in (False, True):
                        walked = [names[i] for i in ids.walk(after, reverse, stop)]
                        assert walked == _model_walk(keys, after, reverse, stop)


def test_plain_ids_sort_by_value_and_empty_out() -> None:
    ids = SortedIds(ids=[5, 1, 9, 1])
    assert list(ids) == [1, 5, 9]
    for row in (9, 1, 5, 5):
        ids.discard(row)
    assert len(ids) == 0 and list(ids) == [] and list(ids.walk(None, True)) == []
    for row in range(20, 0, -1):
        ids.add(row)
    assert list(ids) == list(range(1, 21))
    assert list(ids.walk(10, True, 7)) == [9, 8, 7]
