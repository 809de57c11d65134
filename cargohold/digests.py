"""OCI digests and chunk ids: parsing, validation and incremental hashing.

A digest is `algorithm:hex`. sha256 (64 lower-case hex) is required, sha512 (128) is
supported. Chunk ids are always the sha256 of the chunk's bytes, kept as 32 raw bytes
inside the system and as 64 hex characters in JSON and logs. The xxh3-128 checksum
stored beside a chunk is for detecting corruption only, never for addressing.
"""

from __future__ import annotations

import hashlib
import re

import xxhash

from cargohold.errors import DigestInvalid

_HEX_LEN = {"sha256": 64, "sha512": 128}
# Both used with `fullmatch`: `$` would also accept a trailing "\n".
_DIGEST_RE = re.compile(r"(sha256|sha512):([a-f0-9]+)", re.ASCII)
# Anything shaped like a digest (any algorithm): used to tell a digest from a tag.
_DIGEST_SHAPE_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", re.ASCII)


def parse_digest(value: str) -> tuple[str, str]:
    """Validate `algorithm:hex`; return (algorithm, hex) or raise DigestInvalid."""
    match = _DIGEST_RE.fullmatch(value or "")
    if not match or len(match.group(2)) != _HEX_LEN[match.group(1)]:
        raise DigestInvalid("invalid digest", detail={"digest": value})
    return match.group(1), match.group(2)


def is_digest(reference: str) -> bool:
    """True when a manifest reference is a digest rather than a tag."""
    return ":" in reference and bool(_DIGEST_SHAPE_RE.fullmatch(reference))


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    if algorithm not in _HEX_LEN:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm}")
    return hashlib.new(algorithm)


def digest_of(data: bytes | memoryview, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def chunk_id_of(data: bytes | memoryview) -> bytes:
    """The 32-byte sha256 that addresses a chunk."""
    return hashlib.sha256(data).digest()


def checksum_of(data: bytes | memoryview) -> bytes:
    """The 16-byte xxh3-128 checksum stored beside a chunk."""
    return xxhash.xxh3_128_digest(data)


EMPTY_SHA256 = digest_of(b"")
