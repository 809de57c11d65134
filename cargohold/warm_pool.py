"""A thread pool whose lone job goes to the same thread every time.

`concurrent.futures.ThreadPoolExecutor` keeps its idle threads waiting on one queue, and
which of them takes the next job is up to the lock: once a burst of concurrent work has
started N threads, a lone stream of jobs afterwards (one connection's chunk sends) goes
round all N, each job waking a thread that has slept longest. Measured on the bench VM
(bench/README.md, "The send pool after a concurrent cell"): one connection's 1 GiB pulls
fell from ~2,350 to ~2,100-2,250 MB/s after any cell at eight connections, and came back
with a pool of one thread (which costs a fifth at eight connections).

`WarmThreadPool` runs a job submitted while no other job of the pool runs on one thread of
its own (for a lone stream: the thread that ran its previous job, still warm), and a job
submitted while others run on a standard pool of `max_workers - 1` threads, unchanged for
concurrent work (a pool that handed concurrent jobs to the most recently idle thread
measured a few per cent slower there).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WarmThreadPool(concurrent.futures.Executor):
    """See the module docstring."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "warm-pool") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._lone = concurrent.futures.ThreadPoolExecutor(1, f"{thread_name_prefix}-lone")
        self._shared = (
            concurrent.futures.ThreadPoolExecutor(max_workers - 1, thread_name_prefix)
            if max_workers > 1
            else None
        )
        self._lock = threading.Lock()
        self._running = 0  # submitted and not done

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        with self._lock:
            alone = self._running == 0
            self._running += 1
        pool = self._lone if alone or self._shared is None else self._shared
        try:
            future = pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        # Registered first, so it runs before the submitter hears of the result (an
        # asyncio caller's next submit then finds the count already down).
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: object) -> None:
        with self._lock:
            self._running -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._lone.shutdown(wait, cancel_futures=cancel_futures)
        if self._shared is not None:
            self._shared.shutdown(wait, cancel_futures=cancel_futures)
