"""Physical bounds of this machine, measured the same run: what no registry can beat.

- `sha256_mb_s`: hashlib sha256 on one core (every pushed byte is hashed at least once);
- `xxh3_mb_s`: the chunk checksum, xxh3-128, on one core (every pulled byte is checked);
- `lmdb_fsync_write_mb_s`: LMDB puts of 4 MiB values, one fsynced commit each, in the
  harness's work dir (the node's durable write path);
- `loopback_copy_mb_s`: one TCP stream over 127.0.0.1, 1 MiB sends, receiver in another
  thread (sockets release the GIL);
- `memcpy_mb_s`: copy between two preallocated 64 MiB buffers.
Each is bounded in bytes; all are blocking and run in a worker thread.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lmdb

from cargohold.digests import checksum_of

MiB = 1024 * 1024


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
    """The chunk checksum (xxh3-128) on one core: every pulled byte is checked once."""
    buf = bytes(range(256)) * (4 * MiB // 256)
    start = time.perf_counter()
    done = 0
    while done < total:
        checksum_of(buf)
        done += len(buf)
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


def loopback_copy_mb_s(total: int) -> float:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    received = 0

    def receive() -> None:
        nonlocal received
        conn, _ = server.accept()
        buf = bytearray(MiB)
        view = memoryview(buf)
        with conn:
            while True:
                n = conn.recv_into(view)
                if not n:
                    return
                received += n

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    piece = bytes(MiB)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        sent = 0
        while sent < total:
            client.sendall(piece)
            sent += len(piece)
    thread.join(timeout=60)
    elapsed = time.perf_counter() - start
    server.close()
    return received / elapsed / 1e6


def measure(workdir: Path, scale: int) -> dict[str, Any]:
    """All bounds; `scale` bytes per measurement (LMDB gets a quarter: it hits the disk)."""
    return {
        "sha256_MB_per_s": round(sha256_mb_s(scale), 1),
        "xxh3_MB_per_s": round(xxh3_mb_s(scale), 1),
        "memcpy_MB_per_s": round(memcpy_mb_s(scale), 1),
        "loopback_copy_MB_per_s": round(loopback_copy_mb_s(scale), 1),
        "lmdb_fsync_write_MB_per_s": round(
            lmdb_fsync_write_mb_s(max(scale // 4, 16 * MiB), workdir), 1
        ),
    }
