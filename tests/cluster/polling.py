"""Waiting in cluster tests: await a check until it answers, or fail naming what never
happened and the last answer seen (no test sleeps a fixed time for a cluster to settle)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    limit: float = 60.0,
    interval: float = 0.2,
    explain: Callable[[], Awaitable[Any]] | None = None,
) -> T:
    """Await `check` every `interval` s until its answer is true, and return that answer.
    After `limit` s the test fails with `what`, the last answer and, given `explain`, what
    it returns (say, a status table)."""
    deadline = time.monotonic() + limit
    while True:
        answer = await check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            extra = f"; {await explain()}" if explain is not None else ""
            pytest.fail(f"{what}: not within {limit:g} s; last answer {answer!r}{extra}")
        await asyncio.sleep(interval)
