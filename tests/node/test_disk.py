"""The disk reserve (node/disk.py): the arithmetic, the cached look at the filesystem, the
log line per watermark crossing, and the chunk store refusing puts that would eat into
the reserve, and running out of disk for real (a small tmpfs) without dying."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.config import GiB, MiB
from cargohold.digests import chunk_id_of
from cargohold.errors import StorageFull
from node.chunkstore import LmdbChunkStore
from node.disk import DiskSpace, admits, is_full, reserve_bytes

BLOCK = 4096


class FakeFs:
    """A statvfs stand-in: a filesystem of `capacity` bytes with `free` available."""

    def __init__(self, capacity: int, free: int) -> None:
        self.capacity, self.free, self.calls = capacity, free, 0

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls += 1
        blocks, avail = self.capacity // BLOCK, self.free // BLOCK
        # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
        return os.statvfs_result((BLOCK, BLOCK, blocks, avail, avail, 0, 0, 0, 0, 255))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _space(fs: FakeFs, clock: Clock, headroom: int = MiB) -> DiskSpace:
    return DiskSpace(
        "/data",
        reserve_fraction=0.05,
        reserve_max_bytes=2 * GiB,
        headroom=headroom,
        check_interval=1.0,
        node_id="n9",
        statvfs=fs,
        clock=clock,
    )


def test_reserve_is_five_percent_capped_at_two_gib() -> None:
    assert reserve_bytes(60 * MiB, 0.05, 2 * GiB) == 3 * MiB
    assert reserve_bytes(100 * GiB, 0.05, 2 * GiB) == 2 * GiB
    assert reserve_bytes(40 * GiB, 0.05, 2 * GiB) == 2 * GiB
    assert reserve_bytes(10 * GiB, 0.05, 2 * GiB) == 512 * MiB
    assert reserve_bytes(10 * GiB, 0.0, 2 * GiB) == 0
    assert reserve_bytes(10 * GiB, 0.05, 0) == 0


def test_watermark_has_hysteresis_of_one_chunk() -> None:
    reserve, chunk = 3 * MiB, MiB
    assert not is_full(reserve + chunk, reserve, chunk, was_full=False)
    assert is_full(reserve + chunk - 1, reserve, chunk, was_full=False)
    # Once full, one chunk more must be free before writes resume (one crossing each way).
    assert is_full(reserve + chunk, reserve, chunk, was_full=True)
    assert is_full(reserve + 2 * chunk - 1, reserve, chunk, was_full=True)
    assert not is_full(reserve + 2 * chunk, reserve, chunk, was_full=True)


def test_a_write_may_not_take_the_reserve() -> None:
    assert admits(free=10, reserve=4, nbytes=6)
    assert not admits(free=10, reserve=4, nbytes=7)


def test_usage_is_cached_and_lowered_by_written_bytes() -> None:
    fs, clock = FakeFs(100 * MiB, 50 * MiB), Clock()
    space = _space(fs, clock)
    u = space.usage()
    assert (u.capacity, u.free, u.reserve, u.full) == (100 * MiB, 50 * MiB, 5 * MiB, False)
    assert u.used == 50 * MiB and u.writable == 45 * MiB
    space.charge(10 * MiB)
    u = space.usage()
    assert fs.calls == 1  # within the check interval: no second statvfs
    assert u.free == 40 * MiB and u.used == 60 * MiB
    clock.now += 1.0
    assert space.usage().free == 50 * MiB and fs.calls == 2  # a fresh look forgets charges


def test_crossing_is_logged_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    fs, clock = FakeFs(100 * MiB, 50 * MiB), Clock()
    space = _space(fs, clock)
    caplog.set_level(logging.WARNING, logger="cargohold.node.disk")
    space.usage()
    fs.free = 5 * MiB  # below reserve (5 MiB) + headroom (1 MiB)
    for _ in range(5):
        clock.now += 1.0
        assert space.usage().full
    fs.free = 6 * MiB + MiB // 2  # above the high watermark, not above the low one
    clock.now += 1.0
    assert space.usage().full
    fs.free = 7 * MiB
    for _ in range(3):
        clock.now += 1.0
        assert not space.usage().full
    events = [r.getMessage() for r in caplog.records]
    assert events == ["node.disk_full", "node.disk_ok"], events
    fields = caplog.records[0].fields  # type: ignore[attr-defined]
    assert fields["node"] == "n9" and fields["free"] == 5 * MiB and fields["reserve"] == 5 * MiB


def test_a_burst_crosses_the_watermark_between_looks() -> None:
    fs, clock = FakeFs(100 * MiB, 8 * MiB), Clock()
    space = _space(fs, clock)
    space.admit(2 * MiB)
    space.charge(2 * MiB)
    assert not space.usage().full  # 6 MiB left = 5 MiB reserve + 1 MiB headroom
    space.charge(MiB // 2)
    assert space.usage().full and fs.calls == 1  # no statvfs needed to see it
    with pytest.raises(StorageFull):
        space.admit(1)


def test_admit_refuses_with_the_figures_in_the_detail() -> None:
    fs, clock = FakeFs(100 * MiB, 7 * MiB), Clock()
    space = _space(fs, clock)
    space.admit(2 * MiB)  # 5 MiB would remain: exactly the reserve
    with pytest.raises(StorageFull) as caught:
        space.admit(2 * MiB + 1)
    err = caught.value
    assert err.status == 507 and err.code == "DENIED"
    assert err.detail["node"] == "n9"
    assert err.detail["free_bytes"] == 7 * MiB and err.detail["reserve_bytes"] == 5 * MiB
    assert "n9" in err.message and str(7 * MiB) in err.message


# --- the chunk store ------------------------------------------------------------------


def _chunk(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return chunk_id_of(data), data


async def test_store_refuses_puts_below_the_reserve_and_resumes(tmp_path: Path) -> None:
    fs, clock = FakeFs(100 * MiB, 50 * MiB), Clock()
    space = _space(fs, clock, headroom=64 * 1024)
    store = LmdbChunkStore(str(tmp_path / "chunks"), 1 << 28, 64, 64 * MiB, space=space)
    try:
        held_id, held = _chunk(64 * 1024)
        assert await store.put(held_id, held) is False
        fs.free = 5 * MiB  # at the reserve: full
        clock.now += 1.0
        new_id, new = _chunk(64 * 1024)
        with pytest.raises(StorageFull):
            await store.put(new_id, new)
        # A chunk already held needs no space; reads go on.
        assert await store.put(held_id, held) is True
        assert await store.get(held_id) == held
        assert await store.has([held_id, new_id]) == [True, False]
        fs.free = 40 * MiB  # space returns: the next look lets writes in again
        clock.now += 1.0
        assert await store.put(new_id, new) is False
        assert await store.get(new_id) == new
    finally:
        store.close()


def _fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem refuses (ENOSPC)."""
    with contextlib.suppress(OSError), open(path, "wb") as f:
        while True:
            f.write(b"\0" * 65536)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_store_on_a_full_filesystem_refuses_and_keeps_serving(tmp_path: Path) -> None:
    """Something else fills the disk between two looks: LMDB itself runs out (and reports
    it as an I/O error); the store answers StorageFull, keeps serving reads, and takes
    writes again once space is back."""
    with _tmpfs(tmp_path / "small", "6m") as mount:
        space = DiskSpace(str(mount), 0.0, 0, headroom=256 * 1024, check_interval=3600.0)
        store = LmdbChunkStore(str(mount / "chunks"), 1 << 30, 64, 64 * MiB, space=space)
        try:
            stored = dict(_chunk(256 * 1024) for _ in range(3))
            for chunk_id, data in stored.items():
                assert await store.put(chunk_id, data) is False
            filler = mount / "filler"
            _fill(filler)
            chunk_id, data = _chunk(256 * 1024)
            with pytest.raises(StorageFull):  # admitted on the cached figure; LMDB fails
                await store.put(chunk_id, data)
            assert space.usage().full
            for held_id, held in stored.items():
                assert await store.get(held_id) == held
            filler.unlink()
            assert not space.usage(fresh=True).full  # what the node's watcher does
            assert await store.put(chunk_id, data) is False
            assert await store.get(chunk_id) == data
        finally:
            store.close()
