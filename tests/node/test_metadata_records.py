"""The compact records (node/metadata/records.py) and the listing order (sorted_names.py):
same fields, rows and pickles as the named tuples they replace; pages as a sorted list's."""

from __future__ import annotations

import pickle
import random

from node.metadata.records import (
    CHUNK,
    SHARED_SIZES,
    Manifest,
    OneChunk,
    Recipe,
    make_recipe,
    recipe_from_row,
)
from node.metadata.sorted_names import SortedNames
from tests.node.churn import churn_step


def _packed(*lengths: int) -> bytes:
    return b"".join(CHUNK.pack(bytes([i]) * 32, n) for i, n in enumerate(lengths))


def test_recipe_size_is_the_sum_of_its_chunks() -> None:
    assert Recipe(b"").size == 0
    assert Recipe(_packed(7)).size == 7
    assert Recipe(_packed(3, 4, 5)).size == 12
    assert Recipe(_packed(3)).packed == _packed(3)


def test_recipe_rows_round_trip_and_keep_an_odd_recorded_size() -> None:
    recipe = Recipe(_packed(3, 4))
    assert recipe.row() == (7, _packed(3, 4))
    assert type(recipe.row()[1]) is bytes
    assert recipe_from_row(recipe.row(), "sha256:" + "ab" * 32) == recipe
    odd = recipe_from_row((99, _packed(1)), "sha256:" + "00" * 32)
    assert odd.size == 99 and odd.row() == (99, _packed(1))
    assert pickle.loads(pickle.dumps(odd, protocol=5)).size == 99


def test_a_self_addressed_chunk_keeps_only_its_size() -> None:
    """A one-chunk blob whose chunk id is its own sha256 is stored as its size."""
    digest = "sha256:" + "01" * 32
    packed = CHUNK.pack(bytes([1]) * 32, 300)
    recipe = make_recipe(packed, digest)
    assert type(recipe) is OneChunk and recipe.size == 300
    assert recipe.chunks_for(digest) == packed and recipe.row(digest) == (300, packed)
    assert recipe_from_row((300, packed), digest) == recipe
    assert pickle.loads(pickle.dumps(recipe, protocol=5)) == recipe
    # Another id, two chunks or a sha512 digest keep the chunk list.
    assert type(make_recipe(CHUNK.pack(bytes(32), 300), digest)) is Recipe
    assert type(make_recipe(packed + packed, digest)) is Recipe
    assert type(make_recipe(packed, "sha512:" + "01" * 64)) is Recipe


def test_one_chunk_records_of_a_size_are_one_object() -> None:
    """However a record is built (a command, a row, a pickle of any protocol), a size below
    `SHARED_SIZES` makes one object: a blob costs its table slot, not a record of its own."""
    first, second = "sha256:" + "02" * 32, "sha256:" + "03" * 32
    a = make_recipe(CHUNK.pack(bytes([2]) * 32, 4321), first)
    b = recipe_from_row((4321, CHUNK.pack(bytes([3]) * 32, 4321)), second)
    assert type(a) is OneChunk and a is b and OneChunk(4321) is a
    assert a.chunks_for(first) != b.chunks_for(second)  # the digest still makes the list
    for protocol in (2, 5):
        assert pickle.loads(pickle.dumps(a, protocol=protocol)) is a
    # Beyond the bound each record is its own object, equal all the same.
    big = OneChunk(SHARED_SIZES + 1)
    assert big == OneChunk(SHARED_SIZES + 1) and big.size == SHARED_SIZES + 1


def test_manifest_reads_like_the_named_tuple_it_replaces() -> None:
    recipe = Recipe(_packed(10))
    image = Manifest("mt", 10, recipe, None, "cfg", None, ("sha256:a",), ())
    assert len(image) == 4  # trailing empty fields are not stored
    assert image.fields() == ("mt", 10, recipe, None, "cfg", None, ("sha256:a",), ())
    full = Manifest("mt", 10, recipe, "sha256:s", None, '{"a":"b"}', (), ("sha256:c",))
    assert (full.subject, full.annotations_json, full.children) == (
        "sha256:s",
        '{"a":"b"}',
        ("sha256:c",),
    )
    assert full.artifact_type is None and full.blobs == ()
    for record in (image, full):
        assert Manifest.from_row(record.row(""), "sha256:" + "ff" * 32) == record
        again = pickle.loads(pickle.dumps(record, protocol=5))
        assert type(again) is type(record) and again == record
        assert record.row("")[2] == (10, _packed(10))


def test_sorted_names_pages_like_a_sorted_list() -> None:
    rng = random.Random(7)
    names = SortedNames()
    model: set[str] = set()
    for step in range(6000):
        name = f"t{rng.randrange(3000):05d}"
        churn_step(rng, names, model, name, discard=0.3)
        if step % 500 == 0:
            assert list(names) == sorted(model) and len(names) == len(model)
    ordered = sorted(model)
    assert list(names) == ordered
    assert all(n in names for n in ordered[:50]) and "zzz" not in names
    for n in (None, 0, 1, 7, 1000, 5000):
        for last in (None, "", ordered[0], ordered[len(ordered) // 2], ordered[-1], "t0", "u"):
            start = sum(1 for x in ordered if last and x <= last) if last else 0
            if n == 0:
                expected: tuple[list[str], bool] = ([], False)
            elif n is None:
                expected = (ordered[start:], False)
            else:
                expected = (ordered[start : start + n], start + n < len(ordered))
            assert names.page(n, last) == expected, (n, last)


def test_sorted_names_walks_a_large_set_page_by_page() -> None:
    names = SortedNames(f"v{i}" for i in range(5003))
    seen: list[str] = []
    last = None
    while True:
        page, more = names.page(1000, last)
        seen += page
        if not more:
            break
        last = page[-1]
    assert seen == sorted(f"v{i}" for i in range(5003))
