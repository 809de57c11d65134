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
