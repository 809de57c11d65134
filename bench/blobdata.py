"""Deterministic, incompressible, never-accidentally-deduplicated blob contents.

A blob is described by a `BlobSpec`: a list of segments `(nonce, length)`. Its bytes are
produced piece by piece (1 MiB at most) from one random pool, with a 16-byte stamp
`(segment nonce, offset within the segment / 64 KiB)` written every 64 KiB. So any window of
64 KiB or more is unique to its (nonce, offset): two blobs share bytes only where they
share a segment on purpose (the dedup workload), and a registry that chunks or hashes them
cannot find accidental duplicates. Generation is a memory copy (~GB/s), so the client can
produce data faster than any system under test can take it.

Digests are computed once per spec, off the timed path, and cached (`digest_of`).
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

PIECE = 1024 * 1024
STAMP_EVERY = 64 * 1024
_POOL = random.Random(0x0C1).randbytes(PIECE)
_STAMP = struct.Struct("<QQ")


@dataclass(frozen=True)
class BlobSpec:
    """A blob's content recipe: segments of (nonce, length), lengths multiples of 64 KiB
    except possibly the last."""

    segments: tuple[tuple[int, int], ...]

    @classmethod
    def unique(cls, nonce: int, size: int) -> BlobSpec:
        return cls(((nonce, size),))

    @property
    def size(self) -> int:
        return sum(length for _, length in self.segments)

    def pieces(self, piece: int = PIECE) -> Iterator[bytes]:
        """The blob's bytes in pieces of at most `piece` bytes (a multiple of 64 KiB)."""
        if piece % STAMP_EVERY or piece > PIECE:
            raise ValueError("piece must be a multiple of 64 KiB and at most 1 MiB")
        for nonce, length in self.segments:
            offset = 0
            while offset < length:
                n = min(piece, length - offset)
                yield _make_piece(nonce, offset, n)
                offset += n


def _make_piece(nonce: int, offset: int, n: int) -> bytes:
    start = offset % PIECE
    if start + n <= PIECE:
        buf = bytearray(_POOL[start : start + n])
    else:
        buf = bytearray(_POOL[start:] + _POOL[: n - (PIECE - start)])
    for j in range(0, n, STAMP_EVERY):
        stamp = _STAMP.pack(nonce, (offset + j) // STAMP_EVERY)
        buf[j : j + len(stamp)] = stamp[: max(0, min(len(stamp), n - j))]
    return bytes(buf)


_DIGESTS: dict[BlobSpec, str] = {}


def digest_of(spec: BlobSpec) -> str:
    """sha256 digest of the spec's bytes (blocking: call through asyncio.to_thread)."""
    cached = _DIGESTS.get(spec)
    if cached is None:
        h = hashlib.sha256()
        for piece in spec.pieces():
            h.update(piece)
        cached = _DIGESTS[spec] = "sha256:" + h.hexdigest()
    return cached


def materialise(spec: BlobSpec) -> bytes:
    """The whole blob in memory: only for small blobs (configs, tiny layers)."""
    if spec.size > 64 * PIECE:
        raise ValueError("refusing to materialise a blob above 64 MiB")
    return b"".join(spec.pieces())
