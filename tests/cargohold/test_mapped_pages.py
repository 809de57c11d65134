"""cargohold/mapped_pages.py: releasing the folios of a shared file mapping unmaps them,
within the mapping, without changing a byte or dropping them from the page cache."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from cargohold.map_offsets import FileMaps, Mapping
from cargohold.mapped_pages import FOLIO_BYTES, PAGE_SIZE, buffer_address, release_folios
from tests.page_state import cached_pages, mapped_rss

MiB = 1024 * 1024


def test_buffer_address_of_a_read_only_view(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * PAGE_SIZE * 2)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        assert buffer_address(view[PAGE_SIZE:]) - buffer_address(view) == PAGE_SIZE
        view.release()


def test_released_folios_leave_the_mapping_not_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(4 * FOLIO_BYTES)
    path.write_bytes(data)
    st = os.stat(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        # Like an LMDB value: after a page header, ending inside a folio.
        value = view[FOLIO_BYTES + 16 : 2 * FOLIO_BYTES + 5000]
        rest = view[3 * FOLIO_BYTES + 16 :]
        assert bytes(value) == data[FOLIO_BYTES + 16 : 2 * FOLIO_BYTES + 5000]
        assert bytes(rest[:100]) == data[3 * FOLIO_BYTES + 16 : 3 * FOLIO_BYTES + 116]
        before = mapped_rss(path)
        mapping = FileMaps(str(path), st.st_dev, st.st_ino).mapping_of(
            buffer_address(value), len(value)
        )
        assert mapping is not None
        # The two folios the value touches, whole; the one read after them stays mapped.
        assert release_folios(value, mapping) == 2 * FOLIO_BYTES
        assert before - 2 * FOLIO_BYTES <= mapped_rss(path) <= FOLIO_BYTES + 2 * PAGE_SIZE
        assert mapped_rss(path) >= PAGE_SIZE
        assert cached_pages(path, 0, len(data)) == len(data) // PAGE_SIZE
        assert bytes(value) == data[FOLIO_BYTES + 16 : 2 * FOLIO_BYTES + 5000]  # refaulted
        del value, rest
        view.release()


def test_a_buffer_outside_the_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(2 * PAGE_SIZE))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        start = buffer_address(view)
        elsewhere = Mapping(start + PAGE_SIZE, start + 2 * PAGE_SIZE, PAGE_SIZE)
        with pytest.raises(ValueError):
            release_folios(view[:10], elsewhere)
        view.release()
