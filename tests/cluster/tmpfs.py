"""Small filesystems for the full-disk tests: a tmpfs mounted on a node's data dir, and a
filler file that takes its free space (a real full disk, without filling the host's)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    """tmpfs mounts on node data dirs, and the filler files that fill them."""

    def __init__(self) -> None:
        self.mounts: list[Path] = []

    def mount(self, path: Path, size: str) -> Path:
        """Mount a tmpfs of `size` (mount's syntax: "40m") on `path`; skips without root."""
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (the cluster phase runs as root): {done.stderr}")
        self.mounts.append(path)
        return path

    @staticmethod
    def fill(path: Path, leave: int = 0) -> int:
        """Take the free space of `path`'s filesystem but `leave` bytes; with `leave` 0, every
        byte (then a few more tries: tmpfs rounds to pages). Returns the filler's size."""
        with open(path / "filler", "wb") as f:
            st = os.statvfs(path)
            size = st.f_bavail * st.f_frsize - leave
            if leave:
                os.posix_fallocate(f.fileno(), 0, size)
                return size
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, size)
            size = os.fstat(f.fileno()).st_size
            for step in (65536, 4096):
                while True:
                    try:
                        os.posix_fallocate(f.fileno(), size, step)
                    except OSError:
                        break
                    size += step
        assert os.statvfs(path).f_bavail == 0
        return size

    @staticmethod
    def free(path: Path) -> None:
        (path / "filler").unlink()

    def unmount_all(self) -> None:
        for path in reversed(self.mounts):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=False)
        self.mounts.clear()
