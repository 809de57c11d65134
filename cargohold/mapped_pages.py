"""Addresses of buffers, and letting go of the pages a file mapping has faulted in.

LMDB (py-lmdb with `buffers=True`) hands out values as memoryviews into its read-only,
shared mapping of `data.mdb`. Reading such a value (a checksum, a copy; even looking it
up, as LMDB checks the first page of a big value) faults its pages into the process's
page tables, and they stay there: the process's file-backed resident set (`RssFile`)
grows towards the whole file. A fault maps the whole page-cache folio holding the page,
up to 2 MiB on file systems with large folios (ext4, xfs), not just the page touched.
Mapped page cache costs reclaim more (each page must be unmapped from every process
first: reverse-map walks, TLB shootdowns) and `posix_fadvise(DONTNEED)` skips it.

- `buffer_address` reads a buffer's start address with the C buffer protocol
  (`PyObject_GetBuffer`, released at once), which works on read-only views too.
- `release_folios` calls `madvise(MADV_DONTNEED)` on every folio a buffer touches (its
  range widened to `FOLIO_BYTES` boundaries of the file), kept inside this process's
  mapping of the file. On a shared file mapping that only removes page-table entries:
  the pages stay in the page cache, unchanged, and a later access (by this or another
  thread) takes a minor fault that maps them again. Callers release while the mapping is
  certainly still there (inside the LMDB read transaction, which keeps the environment
  open): on an address no longer mapped, or mapped by something else, MADV_DONTNEED
  would zero anonymous memory.

Linux only; elsewhere `release_folios` does nothing and returns 0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cargohold.map_offsets import Mapping


class _PyBuffer(ctypes.Structure):
    """CPython's `Py_buffer` (Include/pybuffer.h)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PYBUF_SIMPLE = 0

PAGE_SIZE = mmap.PAGESIZE
# The largest page cache folio, in bytes: a PMD (2 MiB on x86-64 and arm64 with 4 KiB
# pages), which file systems with large folios (ext4, xfs) use for big writes.
FOLIO_BYTES = 2 * 1024 * 1024


def buffer_address(obj: object) -> int:
    """The address of the first byte of a (contiguous) buffer such as a memoryview."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), _PYBUF_SIMPLE) != 0:
        raise BufferError("no simple buffer")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def _load_madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def _madvise_dontneed(start: int, length: int) -> int:
    if _madvise is None or length <= 0:
        return 0
    if _madvise(ctypes.c_void_p(start), length, mmap.MADV_DONTNEED) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return length


def release_folios(buf: object, mapping: Mapping) -> int:
    """Drop this process's mapping of every page cache folio `buf` touches: its range
    widened to `FOLIO_BYTES` boundaries of the file, kept inside `mapping` (this
    process's current mapping of the file that holds `buf`); the bytes released.

    Whole folios, because a fault maps the whole folio: releasing only the buffer's own
    pages would leave its neighbours' parts of the first and last folio mapped (and a
    mapped folio is neither dropped by fadvise nor cheap to reclaim). Other values' pages
    in them are released too: a reader of those just faults them back in.
    """
    if _madvise is None:
        return 0
    view = memoryview(buf)  # type: ignore[arg-type]
    address = buffer_address(view)
    if not (mapping.start <= address and address + view.nbytes <= mapping.end):
        raise ValueError("the buffer is not inside the mapping")
    base = mapping.start - mapping.file_offset  # where file offset 0 would be
    lo = (address - base) // FOLIO_BYTES * FOLIO_BYTES + base
    hi = -(-(address + view.nbytes - base) // FOLIO_BYTES) * FOLIO_BYTES + base
    lo, hi = max(lo, mapping.start), min(hi, mapping.end)
    return _madvise_dontneed(lo, hi - lo)
