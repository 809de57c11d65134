"""Where a buffer inside a memory-mapped file lies in that file: its file offset.

A zero-copy send (gateway/cluster/local_reads.py) hands the kernel a file descriptor and
an offset instead of the bytes, so it needs the offset of an LMDB value inside
`data.mdb`. LMDB maps the file from offset 0, but py-lmdb does not tell where:
`Environment.info()["map_addr"]` is only set for MDB_FIXEDMAP and is 0 otherwise. So:

- `buffer_address` (cargohold/mapped_pages.py) reads a buffer's start address.
- `FileMaps` finds the mapping of the file that contains that address in
  `/proc/self/maps` (matched by device and inode, or by path: on overlay or btrfs file
  systems the table may name another device than `stat` does), with its file offset, and
  remembers it; an address outside the remembered ones reads the table again.

A remembered mapping can go stale when its environment is unmapped (closed or resized)
and something else is mapped there; callers therefore compare a few bytes read at the
computed offset (`os.pread`) with the buffer before trusting it, and `forget` on a
mismatch. Linux only (`/proc/self/maps`); elsewhere every lookup is None and callers
copy instead.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from cargohold.mapped_pages import buffer_address

__all__ = ["FileMaps", "Mapping", "buffer_address"]


@dataclass(frozen=True)
class Mapping:
    """One mapped range [start, end) of a file, mapped from `file_offset`."""

    start: int
    end: int
    file_offset: int

    def offset_at(self, address: int) -> int:
        """The file offset of `address`, an address inside this mapping."""
        return address - self.start + self.file_offset


class FileMaps:
    """File offsets of addresses inside this process's mappings of one file."""

    def __init__(self, path: str, dev: int, ino: int, maps_path: str = "/proc/self/maps") -> None:
        self.path, self.dev, self.ino = os.path.realpath(path), dev, ino
        self._maps_path = maps_path
        self._known: list[Mapping] = []
        self._lock = threading.Lock()

    def offset_of(self, address: int, length: int) -> int | None:
        """The file offset of [address, address + length), or None when no mapping of
        the file holds all of it."""
        found = self.mapping_of(address, length)
        if found is None:
            return None
        return found.offset_at(address)

    def mapping_of(self, address: int, length: int) -> Mapping | None:
        """The mapping of the file holding [address, address + length), or None."""
        with self._lock:
            found = self._find(address, length)
            if found is None:
                self._known = self._read_maps()
                found = self._find(address, length)
        return found

    def forget(self) -> None:
        """Drop the remembered mappings (after a mismatch): the next lookup re-reads."""
        with self._lock:
            self._known = []

    def _find(self, address: int, length: int) -> Mapping | None:
        for m in self._known:
            if m.start <= address and address + length <= m.end:
                return m
        return None

    def _read_maps(self) -> list[Mapping]:
        found = []
        try:
            with open(self._maps_path, encoding="ascii", errors="replace") as f:
                for line in f:
                    # start-end perms offset major:minor inode [path]
                    fields = line.split(maxsplit=5)
                    if len(fields) < 5 or not self._is_the_file(fields):
                        continue
                    lo, _, hi = fields[0].partition("-")
                    found.append(Mapping(int(lo, 16), int(hi, 16), int(fields[2], 16)))
        except (OSError, ValueError):
            return []
        return found

    def _is_the_file(self, fields: list[str]) -> bool:
        if len(fields) == 6 and fields[5].rstrip("\n") == self.path:
            return True
        if int(fields[4]) != self.ino:
            return False
        major, _, minor = fields[3].partition(":")
        return os.makedev(int(major, 16), int(minor, 16)) == self.dev
