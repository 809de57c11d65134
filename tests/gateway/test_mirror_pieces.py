"""gateway/mirror/pieces.py: pieces found by offset, the newest kept within the bound (at
least the newest one), all of them when unbounded, dropped slots compacted away."""

from __future__ import annotations

from gateway.mirror import pieces
from gateway.mirror.pieces import Pieces


def _fill(kept: Pieces, count: int, size: int) -> bytes:
    data = bytes(range(256)) * (count * size // 256 + 1)
    for i in range(count):
        kept.append(i * size, data[i * size : (i + 1) * size])
    return data[: count * size]


def test_unbounded_keeps_every_piece_and_finds_any_offset() -> None:
    kept = Pieces(keep=None)
    data = _fill(kept, 50, 10)
    assert len(kept) == 50 and kept.kept == 500
    for pos in (0, 9, 10, 255, 499):
        view = kept.view(pos, 500)
        assert view is not None and bytes(view) == data[pos : (pos // 10 + 1) * 10]
    view = kept.view(23, 25)  # cut at `end`
    assert view is not None and bytes(view) == data[23:25]
    assert kept.view(500, 600) is None  # beyond the last piece


def test_bounded_keeps_the_newest_bytes_and_compacts() -> None:
    kept = Pieces(keep=25)
    data = _fill(kept, 5, 10)
    assert len(kept) == 2 and kept.kept == 20  # 30 would exceed 25
    assert kept.view(29, 50) is None  # dropped: read from the spool instead
    view = kept.view(30, 50)
    assert view is not None and bytes(view) == data[30:40]
    huge = Pieces(keep=0)
    huge.append(0, b"x" * 100)  # the newest piece is always kept
    assert huge.view(0, 100) is not None
    many = Pieces(keep=10)
    _fill(many, 3 * pieces._COMPACT, 10)
    assert len(many) == 1 and len(many._data) < 2 * pieces._COMPACT  # slots compacted
    view = many.view((3 * pieces._COMPACT - 1) * 10, 10**9)
    assert view is not None and len(view) == 10
    many.clear()
    assert len(many) == 0 and many.kept == 0 and many.view(0, 10) is None
