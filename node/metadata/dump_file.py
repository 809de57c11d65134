"""The Raft snapshot file (`<data_dir>/raft/state.dump`): its layout and its check.

Layout (docs/raft.md, "Snapshots" and trap 8):

    CHRAFT2\\n                     magic (CHRAFT1\\n: version 1, same layout, still read)
    u64 big-endian                 length of the head
    head                           pickle((last entry, the one before it, members, check))
    state                          MetadataState.encode_snapshot (a stream of pickles)
    trailer (32 bytes)             CHRSUM1\\n, u64 length of everything before the
                                   trailer, xxh3_128 of everything before the trailer

The head's fourth element, `{"check": CHECK_TRAILER}`, says a trailer follows; the
trailer makes a damaged file (truncated, a hole, flipped bytes, pieces of two snapshots)
detectable before it is loaded. A follower checks the snapshot it received from the leader
with `check_dump` before the file replaces its own dump (pysyncobj_seam.CheckedSerializer),
and a node checks its own dump before loading it at start.

Compatibility: nodes before the trailer read these files unchanged (they read the head's
first three elements and stop after the state's last section, never reaching the
trailer). Files they wrote (no fourth head element, no trailer) still load here, unchecked
(`DumpCheck.verified` False): the check can then only say the head is readable.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash

DUMP_MAGIC = b"CHRAFT2\n"
# Version 1 (one pickle of the whole state) is still read; the header layout is the same.
DUMP_MAGICS = (DUMP_MAGIC, b"CHRAFT1\n")
# The head's fourth element: the file ends with a trailer (format above).
CHECK_TRAILER = "xxh3_128-trailer-1"
TRAILER_MAGIC = b"CHRSUM1\n"
TRAILER_BYTES = len(TRAILER_MAGIC) + 8 + 16
# Bytes read at a time when a file is checked.
_READ_BLOCK = 1 << 20


def head_bytes(raft_data: tuple[Any, ...]) -> bytes:
    """The head of a new dump: pysyncobj's `data[1:]` tuple, then the trailer flag."""
    return pickle.dumps((*raft_data, {"check": CHECK_TRAILER}), protocol=5)


class DumpWriter:
    """Writes a dump into an open binary file: `write` the magic, head and state, then
    `finish` appends the trailer. `size` counts every byte written, trailer included."""

    def __init__(self, f: BinaryIO, head: bytes) -> None:
        self._f = f
        self._hash = xxhash.xxh3_128()
        self._body = 0
        self.size = 0
        self.write(DUMP_MAGIC)
        self.write(len(head).to_bytes(8, "big"))
        self.write(head)

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._hash.update(data)
        self._body += len(data)
        self.size += len(data)

    def finish(self) -> int:
        self._f.write(TRAILER_MAGIC + self._body.to_bytes(8, "big") + self._hash.digest())
        self.size += TRAILER_BYTES
        return self.size


@dataclass(frozen=True)
class DumpCheck:
    """What `check_dump` found: `ok` (the file may be loaded), `verified` (its trailer's
    length and checksum matched; False for a file written before the trailer), `reason`
    (why not ok) and the file's `size` in bytes."""

    ok: bool
    verified: bool
    size: int
    reason: str = ""


def check_dump(path: str) -> DumpCheck:
    """Check the dump at `path` without loading it (any thread; reads the whole file once).

    A file with a valid trailer is ok and verified. Without one, the head is read: if it
    says a trailer follows, the file was cut short (or its end damaged) and is not ok; if
    it says nothing, the file is from a node before the trailer and is ok, unverified, when
    its magic and head are readable. The checksum is tested before anything is unpickled.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _check(f, size)
    except OSError as exc:
        return DumpCheck(False, False, 0, f"unreadable: {exc!r}")


def _check(f: BinaryIO, size: int) -> DumpCheck:
    magic = f.read(len(DUMP_MAGIC))
    if magic not in DUMP_MAGICS:
        return DumpCheck(False, False, size, "not a cargohold raft snapshot (magic)")
    if size >= len(DUMP_MAGIC) + 8 + TRAILER_BYTES:
        f.seek(size - TRAILER_BYTES)
        trailer = f.read(TRAILER_BYTES)
        if trailer.startswith(TRAILER_MAGIC):
            length = int.from_bytes(trailer[len(TRAILER_MAGIC) : len(TRAILER_MAGIC) + 8], "big")
            if length != size - TRAILER_BYTES:
                return DumpCheck(
                    False, False, size, f"length: trailer says {length} bytes before it"
                )
            digest = xxhash.xxh3_128()
            f.seek(0)
            left = length
            while left:
                block = f.read(min(_READ_BLOCK, left))
                if not block:
                    return DumpCheck(False, False, size, "the file shrank while checked")
                digest.update(block)
                left -= len(block)
            if digest.digest() != trailer[len(TRAILER_MAGIC) + 8 :]:
                return DumpCheck(False, False, size, "checksum mismatch")
            return DumpCheck(True, True, size)
    f.seek(len(DUMP_MAGIC))
    head_len = int.from_bytes(f.read(8), "big")
    if len(DUMP_MAGIC) + 8 + head_len > size:
        return DumpCheck(False, False, size, "truncated in its head")
    try:
        head = pickle.loads(f.read(head_len))
    except Exception as exc:  # any damage makes its own error
        return DumpCheck(False, False, size, f"unreadable head: {exc!r:.200}")
    if not isinstance(head, tuple) or len(head) < 3:
        return DumpCheck(False, False, size, "unreadable head: not pysyncobj's tuple")
    if len(head) > 3:
        return DumpCheck(False, False, size, "trailer missing (the file was cut short)")
    return DumpCheck(True, False, size)


def read_head(f: BinaryIO) -> tuple[Any, ...]:
    """Read the magic and head from `f` (left at the state's first byte): the three
    elements pysyncobj's deserializer returns (last entry, the one before, members)."""
    if f.read(len(DUMP_MAGIC)) not in DUMP_MAGICS:
        raise ValueError("not a cargohold raft snapshot")
    head_len = int.from_bytes(f.read(8), "big")
    head = pickle.loads(f.read(head_len))
    if not isinstance(head, tuple) or len(head) < 3:
        raise ValueError("not a cargohold raft snapshot head")
    return tuple(head[:3])
