"""Children never outlive their launcher: a pipe whose end-of-file means "the launcher died".

The launcher (`LocalCluster`, so `cargohold dev`, the tests and the benchmark) creates one
pipe (once per launcher process) and keeps its write end open, never writing; every node
and gateway it starts inherits only the read end (`--lifeline-fd N`). The kernel closes
the write end when the launcher exits, however it exits (SIGKILL, OOM kill, a crashed
terminal), and every child's `watch` thread then reads end-of-file: it sends its own
process SIGTERM (the normal, orderly stop: gRPC drained, Raft and LMDB closed) and, if the
process is still there `grace` seconds later, ends it at once.

Why a pipe and not `prctl(PR_SET_PDEATHSIG)`: the parent-death signal fires when the
*thread* that spawned the child exits, not the process, and the tests and the benchmark
start and restart processes from executor threads (`asyncio.to_thread`) that end long
before the cluster should; it would also need a `preexec_fn` (not safe in a threaded
parent). The pipe is tied to the launcher process only, passes through wrappers that
exec (`ip netns exec`), and lets the child stop cleanly instead of being killed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from cargohold.log import log_event

logger = logging.getLogger("cargohold.lifeline")

_lock = threading.Lock()
_read_fd: int | None = None
_write_fd: int | None = None


def launcher_fd() -> int:
    """The read end to hand to children (pass_fds); created once per launcher process."""
    global _read_fd, _write_fd
    with _lock:
        if _read_fd is None:
            # Both ends are non-inheritable: only pass_fds hands the read end over, and the
            # write end stays in this process until it exits (never closed on purpose).
            _read_fd, _write_fd = os.pipe()
        return _read_fd


def _watch(fd: int, grace: float) -> None:
    while True:
        try:
            if os.read(fd, 64) == b"":
                break
        except InterruptedError:
            continue
        except OSError:
            return  # not a pipe we can watch (bad fd): nothing to do
    log_event(logger, "process.launcher_gone", logging.WARNING, grace=grace)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(1)


def watch(fd: int, grace: float) -> None:
    """In a child: stop this process when the launcher holding `fd`'s pipe is gone."""
    os.set_inheritable(fd, False)
    threading.Thread(target=_watch, args=(fd, grace), name="lifeline", daemon=True).start()
