"""One owner per data directory: an exclusive `flock` on `<dir>/LOCK`, held for life.

`DataDirLock.acquire(dir, role, **about)` takes the lock without waiting and writes who
holds it (pid, host, role, start time and `about`, e.g. the ports) as one JSON line; when
another live process holds it, `DataDirInUse` names that holder. The kernel drops a flock
when its holder exits, however it exits, so the file is never removed and a left-over
file means nothing: `holder(dir)` asks the kernel (a non-blocking probe) and reads the
record only when the lock is really held. Used by storage nodes (their data directory),
`cargohold dev` (its base directory) and `cargohold admin stop`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.errors import DataDirInUse

LOCK_NAME = "LOCK"


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process holding it."""

    path: Path
    pid: int | None
    host: str = ""
    role: str = ""
    started: float = 0.0
    about: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """'pid 123 (node n1 on host-a, grpc=..., raft=..., since 14:02:11)'."""
        parts = [self.role or "process"]
        if self.host:
            parts[0] += f" on {self.host}"
        parts += [f"{k}={v}" for k, v in self.about.items()]
        if self.started:
            parts.append("since " + time.strftime("%H:%M:%S", time.localtime(self.started)))
        pid = f"pid {self.pid}" if self.pid else "an unknown process"
        return f"{pid} ({', '.join(parts)})"


def _read_record(path: Path) -> LockHolder:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        data = {}
    pid = data.pop("pid", None)
    return LockHolder(
        path=path,
        pid=int(pid) if isinstance(pid, int) else None,
        host=str(data.pop("host", "")),
        role=str(data.pop("role", "")),
        started=float(data.pop("started", 0.0)),
        about=data,
    )


def holder(directory: str | os.PathLike[str]) -> LockHolder | None:
    """Who holds `<directory>/LOCK` now; None when nobody does (or there is no file)."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DataDirLock:
    """A held lock; `release()` (or process exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str], role: str, **about: Any) -> DataDirLock:
        """Lock `directory` (created if missing) or raise DataDirInUse naming the holder."""
        path = Path(directory) / LOCK_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            held = _read_record(path)
            raise DataDirInUse(
                f"data directory {path.parent} is in use by {held.describe()}"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "role": role,
            "started": time.time(),
            **about,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
