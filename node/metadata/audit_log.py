"""The activity log's part of the replicated state (cargohold/audit.py has the chain).

    base        (seq, hash) the retained chain starts after (retention moved it)
    segments    [Segment]   sealed records, oldest first: their blob's digest and recipe,
                            first/last seq, the hash before and at their end
    tail        [bytes]     the canonical lines of the records not sealed yet, in seq order
    head        (seq, hash) the last record

Memory: one bytes object per tail record (~150-300 B) until a seal drops it, plus ~0.5 KB
per segment. `append` numbers and chains events (one sha256 of a ~200 B line each);
`seal` checks that the segment's digest is that of exactly the oldest tail records, so a
gateway cannot seal anything else. Deterministic like the rest of the state: times come
from the commands.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from cargohold.audit import GENESIS, SegmentInfo, encode, line_hash
from cargohold.errors import RequestInvalid

_CHUNK = struct.Struct(">32sQ")
# A query page of tail lines is at most this long.
TAIL_PAGE = 10_000


class Segment(NamedTuple):
    first: int
    last: int
    prev: str
    hash: str
    digest: str
    size: int
    packed: bytes  # the chunk list, as the state packs recipes
    sealed_at: float
    last_time: float


def _pack(recipe: dict[str, Any]) -> bytes:
    chunks = recipe.get("chunks")
    if not isinstance(chunks, list):
        raise RequestInvalid("recipe chunks must be a list")
    try:
        return b"".join(_CHUNK.pack(bytes.fromhex(c[0]), int(c[1])) for c in chunks)
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise RequestInvalid("recipe chunks must be [64-hex id, length]") from exc


def segment_info(seg: Segment) -> SegmentInfo:
    chunks = [[cid.hex(), n] for cid, n in _CHUNK.iter_unpack(seg.packed)]
    return SegmentInfo(
        seg.first,
        seg.last,
        seg.prev,
        seg.hash,
        seg.digest,
        seg.size,
        {"size": seg.size, "chunks": chunks},
        seg.sealed_at,
        seg.last_time,
    )


class AuditLog:
    """The chain's state; see the module docstring."""

    def __init__(self) -> None:
        self.base_seq = 0
        self.base_hash = GENESIS
        self.segments: list[Segment] = []
        self.tail: list[bytes] = []
        self.head_seq = 0
        self.head_hash = GENESIS
        # The time of each tail record (a segment keeps the newest: retention compares it).
        self._tail_times: list[float] = []

    def __bool__(self) -> bool:
        return self.head_seq > 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditLog) and list(self.rows()) == list(other.rows())

    __hash__ = None  # type: ignore[assignment]

    @property
    def tail_first(self) -> int:
        return self.head_seq - len(self.tail) + 1

    def append(self, event: list[Any]) -> int:
        seq = self.head_seq + 1
        line = encode(seq, self.head_hash, event)
        self.tail.append(line)
        self._tail_times.append(float(event[0]))
        self.head_seq, self.head_hash = seq, line_hash(line)
        return seq

    def seal(self, first: int, last: int, digest: str, recipe: dict[str, Any], now: float) -> bool:
        if first < self.tail_first:
            for seg in self.segments:
                if seg.first == first and seg.last == last and seg.digest == digest:
                    return False  # a retried (or raced) seal of the same records
            raise RequestInvalid(f"records {first}-{last} are not the oldest in memory")
        if first != self.tail_first or last < first or last > self.head_seq:
            raise RequestInvalid(
                f"a seal must start at seq {self.tail_first} and end by {self.head_seq}"
            )
        count = last - first + 1
        lines = self.tail[:count]
        sha = hashlib.sha256()
        size = 0
        for line in lines:
            sha.update(line)
            sha.update(b"\n")
            size += len(line) + 1
        if "sha256:" + sha.hexdigest() != digest:
            raise RequestInvalid(f"segment {digest} is not records {first}-{last}")
        if recipe.get("size") != size:
            raise RequestInvalid(f"segment recipe size is not {size}")
        # The record before `first`: the end of the last segment, else the retained base.
        prev = self.segments[-1].hash if self.segments else self.base_hash
        times = self._tail_times[:count]
        self.segments.append(
            Segment(
                first,
                last,
                prev,
                line_hash(lines[-1]),
                digest,
                size,
                _pack(recipe),
                now,
                max(times) if times else now,
            )
        )
        del self.tail[:count]
        del self._tail_times[:count]
        return True

    def expire(self, before: float) -> int:
        """Drop the oldest segments whose newest record is older than `before`."""
        dropped = 0
        while self.segments and self.segments[0].last_time < before:
            seg = self.segments.pop(0)
            self.base_seq, self.base_hash = seg.last, seg.hash
            dropped += 1
        return dropped

    def page(self, after: int, n: int | None) -> tuple[list[str], bool]:
        n = TAIL_PAGE if n is None else min(n, TAIL_PAGE)
        start = max(0, after + 1 - self.tail_first)
        lines = self.tail[start : start + n]
        return [line.decode() for line in lines], start + n < len(self.tail)

    def packed_recipes(self) -> Iterator[bytes]:
        """The chunk lists of the sealed segments (garbage collection keeps them)."""
        for seg in self.segments:
            yield seg.packed

    # -- snapshots ---------------------------------------------------------------------
    def copy(self) -> AuditLog:
        other = AuditLog()
        other.base_seq, other.base_hash = self.base_seq, self.base_hash
        other.segments = self.segments.copy()
        other.tail = self.tail.copy()
        other._tail_times = self._tail_times.copy()
        other.head_seq, other.head_hash = self.head_seq, self.head_hash
        return other

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Snapshot rows: one header row, one per segment, one per tail record."""
        yield ("head", self.base_seq, self.base_hash, self.head_seq, self.head_hash)
        for seg in self.segments:
            yield ("segment", *seg)
        for line, when in zip(self.tail, self._tail_times, strict=True):
            yield ("record", line, when)

    def load_row(self, row: tuple[Any, ...]) -> None:
        kind = row[0]
        if kind == "head":
            self.base_seq, self.base_hash, self.head_seq, self.head_hash = row[1:5]
        elif kind == "segment":
            self.segments.append(Segment._make(row[1:]))
        elif kind == "record":
            self.tail.append(row[1])
            self._tail_times.append(row[2])
        else:
            raise ValueError(f"unknown audit snapshot row {kind!r}")
