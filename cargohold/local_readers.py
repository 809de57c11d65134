"""Whether a gateway on this host reads a node's chunk store directly: a shared file lock.

A gateway with short-circuit reads (`gateway.local_node_data_dir`,
gateway/cluster/local_reads.py) sends chunks from its node's `data.mdb` through the page
cache. Whether the node should keep the pages it has just written cached depends on that
(`node.drop_written_pages = "unread"`, node/chunkstore.py): with such a reader they are what
the next pull of a fresh push reads; without one, nothing on this host reads them soon, and
keeping them only grows the page cache into memory never used before (costly on a VM whose
host takes back free guest memory, bench/README.md).

The signal is `<store>/local-readers.lock`, a file the node creates in its chunk store's
directory:
- a reader (`ReaderMark`) opens it read-only and holds `flock(LOCK_SH)` for as long as it
  reads that store; the kernel drops the lock with the process, SIGKILL included, so a
  gateway that died never counts;
- the node (`LocalReaders.present`) asks with `flock(LOCK_EX | LOCK_NB)` on its own
  descriptor: refused means some process holds the shared lock; granted means nobody does,
  and the lock is let go at once. The answer is kept `RECHECK_SECONDS`, so a commit costs at
  most one probe a second.
Advice only: nothing stored depends on the answer, and any error reads as "no reader".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time

from cargohold.log import log_event

logger = logging.getLogger("cargohold.local_readers")

LOCK_FILE = "local-readers.lock"
# How long the node trusts its last probe.
RECHECK_SECONDS = 1.0


def lock_path(store_dir: str) -> str:
    return os.path.join(store_dir, LOCK_FILE)


class LocalReaders:
    """The node's side: is any process holding the shared lock of `store_dir`?"""

    def __init__(self, store_dir: str) -> None:
        self.path = lock_path(store_dir)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._answer = False
        self._checked_at = -RECHECK_SECONDS

    def present(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < RECHECK_SECONDS or self._fd < 0:
                return self._answer
            self._checked_at = now
            answer = self._probe()
            if answer != self._answer:
                log_event(logger, "chunkstore.local_readers", path=self.path, present=answer)
            self._answer = answer
            return answer

    def _probe(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class ReaderMark:
    """The reader's side: holds the shared lock of `store_dir` until `close`. A store
    without the file (a node from before it, or not started yet) is not marked; `held`
    says whether it is."""

    def __init__(self, store_dir: str) -> None:
        self._fd = -1
        try:
            fd = os.open(lock_path(store_dir), os.O_RDONLY)
        except OSError:
            return
        try:
            # Blocks at most while a node's probe holds the exclusive lock (two syscalls).
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            return
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor lets the lock go
            self._fd = -1
