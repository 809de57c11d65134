"""cargohold.memtune: glibc accepts the settings; 0 leaves malloc alone."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from cargohold.memtune import tune_malloc


def test_zero_leaves_malloc_alone() -> None:
    assert tune_malloc(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings() -> None:
    # In a child process: the settings are process-wide and stay for its lifetime.
    code = (
        "from cargohold.memtune import tune_malloc\n"
        "assert tune_malloc(256 * 1024 * 1024)\n"
        "buffers = [bytearray(4 * 1024 * 1024) for _ in range(8)]\n"
        "del buffers\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_returns_scattered_free_memory() -> None:
    # Free every other 1 MiB buffer (holes the trim threshold never returns), then trim.
    code = (
        "from cargohold.memtune import tune_malloc, release_memory\n"
        "from pathlib import Path\n"
        "def rss():\n"
        "    for line in Path('/proc/self/status').read_text().splitlines():\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "assert tune_malloc(256 * 1024 * 1024)\n"
        "buffers = [bytearray(1024 * 1024) for _ in range(256)]\n"
        "del buffers[::2]\n"
        "before = rss()\n"
        "assert release_memory()\n"
        "print(before - rss())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(out.stdout) > 64 * 1024 * 1024


_ARENAS_CODE = """
import ctypes, os, sys, threading
from cargohold.memtune import tune_malloc
assert tune_malloc(256 * 1024 * 1024, {arenas})
ready = threading.Barrier(5)
def hold():
    buffer = bytearray(4 * 1024 * 1024)  # malloc'd on this thread, in its arena
    ready.wait()
    ready.wait()
threads = [threading.Thread(target=hold) for _ in range(4)]
for t in threads:
    t.start()
ready.wait()  # all four hold their buffer at once
sys.stderr.flush()
os.dup2(1, 2)  # malloc_stats prints to stderr: send it to stdout
ctypes.CDLL(None).malloc_stats()
ready.wait()
for t in threads:
    t.join()
"""


def _arenas_used(arenas: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS_CODE.format(arenas=arenas)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sum(1 for line in out.stdout.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="M_ARENA_MAX is glibc's")
def test_one_arena_is_shared_by_every_thread() -> None:
    # Four threads each malloc a chunk-sized buffer: with glibc's default each gets an
    # arena of its own (memory one frees is not reused by another's next allocation).
    assert _arenas_used(0) > 1
    assert _arenas_used(1) == 1
