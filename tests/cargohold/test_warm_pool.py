"""cargohold/warm_pool.py: results and errors come back; a lone stream of jobs stays on
one thread even after a burst started many; concurrent jobs run side by side; one worker
runs everything in order; cancelled and failed jobs are counted out; shutdown refuses new
jobs; asyncio can use it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from cargohold.warm_pool import WarmThreadPool


def _thread_name() -> str:
    return threading.current_thread().name


def _burst(pool: concurrent.futures.Executor, n: int) -> set[str]:
    """`n` jobs running at once (each waits for all to have started): their threads."""
    started = threading.Barrier(n)

    def job() -> str:
        started.wait(5)
        return _thread_name()

    futures = [pool.submit(job) for _ in range(n)]
    return {f.result(5) for f in futures}


def test_results_and_errors_come_back_and_are_counted_out() -> None:
    pool = WarmThreadPool(2)
    try:
        assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(5) == 5
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
    finally:
        pool.shutdown(wait=True)
    assert pool._running == 0  # the threads have ended: every callback has run


async def test_a_lone_stream_after_a_burst_stays_on_one_thread() -> None:
    """As the gateway uses it: asyncio hears of each result after the pool has counted the
    job out, so each next job finds none running. (The standard pool would send these
    jobs round its eight threads.)"""
    pool = WarmThreadPool(8)
    loop = asyncio.get_running_loop()
    try:
        started = threading.Barrier(8)

        def together() -> str:
            started.wait(5)
            return _thread_name()

        burst = await asyncio.gather(*(loop.run_in_executor(pool, together) for _ in range(8)))
        assert len(set(burst)) == 8
        names = [await loop.run_in_executor(pool, _thread_name) for _ in range(20)]
        assert len(set(names)) == 1
    finally:
        pool.shutdown()


def test_one_worker_runs_everything_in_order_and_cancelled_jobs_never_run() -> None:
    pool = WarmThreadPool(1)
    gate = threading.Event()
    order: list[int] = []
    try:
        blocker = pool.submit(gate.wait, 5)
        queued = [pool.submit(order.append, i) for i in range(5)]
        cancelled = pool.submit(order.append, 99)
        assert cancelled.cancel()
        gate.set()
        for f in [blocker, *queued]:
            f.result(5)
        assert order == [0, 1, 2, 3, 4]
    finally:
        pool.shutdown(wait=True)
    assert pool._running == 0


def test_shutdown_refuses_new_jobs() -> None:
    pool = WarmThreadPool(4)
    _burst(pool, 4)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(_thread_name)
    assert pool._running == 0


async def test_it_serves_run_in_executor() -> None:
    pool = WarmThreadPool(2)
    try:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(pool, sum, [1, 2, 3]) == 6
    finally:
        pool.shutdown()
