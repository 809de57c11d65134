"""Physical bounds of this machine, measured the same run: what no registry can beat.

- `sha256_mb_s`: hashlib sha256 on one core (every pushed byte is hashed at least once);
- `xxh3_mb_s`: the chunk checksum, xxh3-128, on one core over data in memory, not in the
  CPU's caches (every pulled byte is checked);
- `lmdb_fsync_write_mb_s`: LMDB puts of 4 MiB values, one fsynced commit each, in the
  harness's work dir (the node's durable write path);
- `loopback_stream`: one TCP stream over 127.0.0.1, 1 MiB sends, receiver in another
  thread (sockets release the GIL): its rate (`loopback_copy`) and the CPU-seconds per GB
  of both ends' threads (`loopback_handover`), the least a hand-over of pushed bytes from
  one process to another on one host costs (a gateway's receive of a request body, each
  replica's send and receive);
- `memcpy_mb_s`: copy between two preallocated 64 MiB buffers;
- `page_cache_write_mb_s`: pwrite of 4 MiB buffers into a new file in the work dir, then
  again over the same still-cached range, as bytes per CPU-second of the writing thread.
  The first (`page_cache_fresh_write`) is what each replica's chunk bytes cost when they
  land in page cache memory the guest has not touched lately: on a VM whose kernel reports
  free pages to the host (virtio_balloon free page reporting) every first touch of such a
  page is a host fault, so this is CPU-bound by the hypervisor, not by the disk. The second
  (`page_cache_rewrite`) is the kernel's copy alone.
Each is bounded in bytes; all are blocking and run in a worker thread. The one-core
figures (sha256, xxh3, memcpy, loopback) are the best of `ROUNDS` runs of a third of the
bytes each: a bound is what the machine can do, and one run that another process or the
host preempted read 10.6 GB/s for xxh3 where the same VM build read 26.1 in the next run
(runs u and w of 2026-12-05).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from cargohold.digests import checksum_of

MiB = 1024 * 1024
# Runs of each one-core bound; the best counts (module docstring).
ROUNDS = 3

# Before its fresh write, `page_cache_write_mb_s` waits until the memory freed before it
# (LMDB's deleted files, the memcpy buffers) has been reported to the host: with free page
# reporting, the allocator hands out free pages not yet reported first, and a fresh write
# into them costs little more than a rewrite. At least FRESH_PAGE_PAUSE_S; where the kernel
# counts reported memory (REPORTED_KIB), also until it has grown by less than
# REPORTING_QUIET_KIB in the last REPORTING_QUIET_S (a reporting pass runs every ~2 s and
# reports only part of a large free, 46-260 MiB a pass here; other processes' frees add a
# few MiB every few seconds), at most FRESH_PAGE_PAUSE_MAX_S. 2026-12-05 on the 2-core
# VM, 128 MiB written after 512 MiB freed: 5.2 and 2.0 GB per CPU-s after 3 s, 0.33-0.53
# after 5-9 s.
FRESH_PAGE_PAUSE_S = 3.0
REPORTING_QUIET_S = 2.5
REPORTING_QUIET_KIB = 32 * 1024
FRESH_PAGE_PAUSE_MAX_S = 15.0
REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")


def sha256_mb_s(total: int) -> float:
    buf = bytes(range(256)) * (64 * MiB // 256)
    h = hashlib.sha256()
    start = time.perf_counter()
    done = 0
    while done < total:
        h.update(buf)
        done += len(buf)
    return done / (time.perf_counter() - start) / 1e6


def xxh3_mb_s(total: int) -> float:
    """The chunk checksum (xxh3-128) on one core: every pulled byte is checked once, a
    4 MiB chunk at a time, from memory (64 MiB cycled, more than the CPU caches hold: one
    4 MiB buffer hashed over and over stays in cache and read 47-66 GB/s here, against
    memory speed for a chunk read from the page cache)."""
    buf = memoryview(bytes(range(256)) * (64 * MiB // 256))
    chunk = 4 * MiB
    start = time.perf_counter()
    done = 0
    while done < total:
        at = done % len(buf)
        checksum_of(buf[at : at + chunk])
        done += chunk
    return done / (time.perf_counter() - start) / 1e6


def memcpy_mb_s(total: int) -> float:
    src = bytearray(64 * MiB)
    dst = bytearray(64 * MiB)
    start = time.perf_counter()
    done = 0
    while done < total:
        dst[:] = src
        done += len(dst)
    return done / (time.perf_counter() - start) / 1e6


def lmdb_fsync_write_mb_s(total: int, workdir: Path) -> float:
    value_size = 4 * MiB
    value = bytearray(hashlib.sha256(b"x").digest() * (value_size // 32))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        env = lmdb.open(tmp, map_size=total * 2 + 64 * MiB, sync=True, metasync=True)
        try:
            start = time.perf_counter()
            done = 0
            i = 0
            while done < total:
                value[:8] = i.to_bytes(8, "little")
                with env.begin(write=True) as txn:
                    txn.put(i.to_bytes(8, "big"), bytes(value))
                done += value_size
                i += 1
            elapsed = time.perf_counter() - start
        finally:
            env.close()
    return done / elapsed / 1e6


def _reported_kib() -> int | None:
    try:
        return int(REPORTED_KIB.read_text())
    except (OSError, ValueError):
        return None


def wait_for_free_page_reporting(pause_s: float = FRESH_PAGE_PAUSE_S) -> float:
    """Sleep at least `pause_s`, and until free page reporting is quiet (see REPORTED_KIB);
    returns the seconds waited."""
    start = time.monotonic()
    samples = [(start, _reported_kib())]
    while True:
        time.sleep(0.1)
        now, current = time.monotonic(), _reported_kib()
        samples.append((now, current))
        waited = now - start
        if waited >= FRESH_PAGE_PAUSE_MAX_S:
            return waited
        if waited < pause_s:
            continue
        before = next(v for t, v in samples if t >= now - REPORTING_QUIET_S)
        if current is None or before is None or current - before < REPORTING_QUIET_KIB:
            return waited


def _pwrite_cpu_s(fd: int, buf: bytes, total: int) -> tuple[int, float]:
    """pwrite `buf` at successive offsets from 0 up to `total` bytes; (bytes, thread CPU-s)."""
    start = time.thread_time()
    done = 0
    while done < total:
        done += os.pwrite(fd, buf, done)
    return done, time.thread_time() - start


def page_cache_write_mb_s(
    total: int, workdir: Path, pause_s: float = FRESH_PAGE_PAUSE_S
) -> tuple[float, float]:
    """(fresh write, rewrite) of `total` bytes into the page cache, MB per CPU-second.

    Both are pwrites of 4 MiB buffers into one new file in `workdir`, no fsync: the fresh
    write comes after `wait_for_free_page_reporting(pause_s)` (so the kernel has reported
    the memory freed before to the host), the rewrite goes over the same range,
    still cached. The figure is bytes over the calling thread's CPU time (user + system):
    the fresh write is CPU-bound by the host fault on each first-touched page, not by the
    disk, and the rewrite is the kernel's copy into cached pages alone. The file is
    deleted afterwards without being synced.
    """
    buf = hashlib.sha256(b"page cache").digest() * (4 * MiB // 32)
    fd, name = tempfile.mkstemp(prefix="page-cache-", dir=workdir)
    try:
        wait_for_free_page_reporting(pause_s)
        fresh_bytes, fresh_cpu = _pwrite_cpu_s(fd, buf, total)
        rewrite_bytes, rewrite_cpu = _pwrite_cpu_s(fd, buf, total)
    finally:
        os.close(fd)
        os.unlink(name)
    return fresh_bytes / fresh_cpu / 1e6, rewrite_bytes / rewrite_cpu / 1e6


def loopback_stream(total: int) -> tuple[float, float]:
    """(MB per second, CPU-seconds per GB of the sending and the receiving thread) of
    `total` bytes sent over one loopback TCP stream."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    received = 0
    receive_cpu = 0.0

    def receive() -> None:
        nonlocal received, receive_cpu
        conn, _ = server.accept()
        start = time.thread_time()
        buf = bytearray(MiB)
        view = memoryview(buf)
        with conn:
            while True:
                n = conn.recv_into(view)
                if not n:
                    break
                received += n
        receive_cpu = time.thread_time() - start

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    piece = bytes(MiB)
    start = time.perf_counter()
    send_start = time.thread_time()
    with socket.create_connection(("127.0.0.1", port)) as client:
        sent = 0
        while sent < total:
            client.sendall(piece)
            sent += len(piece)
    send_cpu = time.thread_time() - send_start
    thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    server.close()
    return received / elapsed / 1e6, (send_cpu + receive_cpu) / max(received / 1e9, 1e-9)


def best_of(rate: Callable[[int], float], total: int, rounds: int = ROUNDS) -> float:
    """The highest of `rounds` (at least 1) runs of `rate`, each over an equal share of
    `total` bytes."""
    return max(rate(max(total // rounds, 1)) for _ in range(rounds))


def measure(workdir: Path, scale: int) -> dict[str, Any]:
    """All bounds; `scale` bytes per measurement (LMDB and the page cache writes get a
    quarter: LMDB hits the disk, the page cache writes pause and leave dirty pages).

    The page cache writes come last, after LMDB's files were deleted, and wait for free
    page reporting (3-15 s) before writing."""
    quarter = max(scale // 4, 16 * MiB)
    # The loopback figures are the best of ROUNDS streams: the fastest, and the cheapest.
    streams = [loopback_stream(max(scale // ROUNDS, 1)) for _ in range(ROUNDS)]
    bounds = {
        "sha256_MB_per_s": round(best_of(sha256_mb_s, scale), 1),
        "xxh3_MB_per_s": round(best_of(xxh3_mb_s, scale), 1),
        "memcpy_MB_per_s": round(best_of(memcpy_mb_s, scale), 1),
        "loopback_copy_MB_per_s": round(max(rate for rate, _ in streams), 1),
        "lmdb_fsync_write_MB_per_s": round(lmdb_fsync_write_mb_s(quarter, workdir), 1),
    }
    fresh, rewrite = page_cache_write_mb_s(quarter, workdir)
    bounds["page_cache_fresh_write_MB_per_s"] = round(fresh, 1)
    bounds["page_cache_rewrite_MB_per_s"] = round(rewrite, 1)
    bounds["loopback_handover_cpu_s_per_GB"] = round(min(cpu for _, cpu in streams), 3)
    return bounds
