"""bench.blobdata: sizes, uniqueness of content, shared segments, cached digests."""

from __future__ import annotations

import hashlib

import pytest

from bench.blobdata import STAMP_EVERY, BlobSpec, digest_of, materialise

KiB = 1024
MiB = 1024 * KiB


@pytest.mark.parametrize("size", [0, 1, 16, STAMP_EVERY - 1, STAMP_EVERY + 5, 3 * MiB + 7])
def test_pieces_add_up_to_the_size(size: int) -> None:
    spec = BlobSpec.unique(7, size)
    pieces = list(spec.pieces())
    assert sum(len(p) for p in pieces) == size == spec.size
    assert all(len(p) <= MiB for p in pieces)


def test_piece_size_does_not_change_the_bytes() -> None:
    spec = BlobSpec.unique(3, 2 * MiB + 100)
    assert b"".join(spec.pieces(64 * KiB)) == b"".join(spec.pieces())


def test_no_64k_window_repeats_within_or_across_blobs() -> None:
    a = materialise(BlobSpec.unique(1, 4 * MiB))
    b = materialise(BlobSpec.unique(2, 4 * MiB))
    windows = [
        data[i : i + STAMP_EVERY] for data in (a, b) for i in range(0, len(data), STAMP_EVERY)
    ]
    assert len(set(windows)) == len(windows)


def test_shared_segment_gives_identical_prefix_and_different_tail() -> None:
    first = materialise(BlobSpec(((9, 2 * MiB), (10, MiB))))
    second = materialise(BlobSpec(((9, 2 * MiB), (11, MiB))))
    assert first[: 2 * MiB] == second[: 2 * MiB]
    assert first[2 * MiB :] != second[2 * MiB :]


def test_digest_matches_hashlib_and_is_cached() -> None:
    spec = BlobSpec.unique(5, MiB + 3)
    expected = "sha256:" + hashlib.sha256(materialise(spec)).hexdigest()
    assert digest_of(spec) == expected
    assert digest_of(BlobSpec.unique(5, MiB + 3)) == expected


def test_refuses_to_materialise_big_blobs() -> None:
    with pytest.raises(ValueError):
        materialise(BlobSpec.unique(1, 65 * MiB))
