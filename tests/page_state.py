"""What the kernel holds of a file, for tests of page-cache and mapping advice: this
process's resident bytes of its mappings of a file (/proc/self/smaps), and how many pages
of a file range are in the page cache (mincore(2) on a fresh mapping)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

from cargohold.mapped_pages import PAGE_SIZE, buffer_address

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.mincore.restype = ctypes.c_int


def mapped_rss(path: str | os.PathLike[str]) -> int:
    """Bytes of this process's mappings of `path` that are resident (mapped) now."""
    target = os.path.realpath(path)
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) == 6 and head[5].strip() == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def cached_pages(path: str | os.PathLike[str], offset: int, length: int) -> int:
    """How many pages of [offset, offset + length) of the file are in the page cache."""
    start = offset // PAGE_SIZE * PAGE_SIZE
    size = min(offset + length, os.path.getsize(path)) - start  # none cached past the end
    if size <= 0:
        return 0
    with (
        open(path, "rb") as f,
        mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ, offset=start) as m,
    ):
        pages = -(-size // PAGE_SIZE)
        vec = ctypes.create_string_buffer(pages)
        if _libc.mincore(ctypes.c_void_p(buffer_address(m)), size, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return sum(b & 1 for b in vec.raw)


def file_offset_of(path: str | os.PathLike[str], data: bytes) -> int:
    """Where `data` (unique in the file) starts in it."""
    with open(path, "rb") as f:
        found = f.read().find(data)
    assert found >= 0, "bytes not in the file"
    return found


def read_at(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    """`length` bytes of the file from `offset` (through the page cache)."""
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)
