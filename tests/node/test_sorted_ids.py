"""`SortedIds` and `SortedNames` (node/metadata/sorted_chunks.py's set, with array and list
chunks) against a sorted list: adds, discards, lookups, pages and walks in both directions
with bounds, with chunks small enough to split and empty."""

from __future__ import annotations

import random

import pytest

from node.metadata import sorted_chunks
from node.metadata.sorted_ids import SortedIds
from node.metadata.sorted_names import SortedNames
from tests.node.churn import churn_step


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sorted_chunks, "_LOAD", 3)


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
        churn_step(rng, ids, live, row, discard=0.5)
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


def test_names_are_the_same_container_with_list_chunks() -> None:
    """`SortedNames` (the listing orders) is the same chunked set: pages and walks match a
    sorted list across chunk splits and emptied chunks."""
    rng = random.Random(11)
    names = SortedNames(f"t{i:03d}" for i in range(0, 40, 3))
    model = {f"t{i:03d}" for i in range(0, 40, 3)}
    for _ in range(300):
        name = f"t{rng.randrange(60):03d}"
        churn_step(rng, names, model, name, discard=0.4)
        ordered = sorted(model)
        assert list(names) == ordered and len(names) == len(model)
        assert (name in names) == (name in model) and 3 not in names
        for last in (None, "", name, "t0", "u"):
            start = sum(1 for x in ordered if last and x <= last)
            assert names.page(4, last) == (ordered[start : start + 4], start + 4 < len(ordered))
        for reverse in (False, True):
            assert list(names.walk(name, reverse)) == _model_walk(ordered, name, reverse, None)
