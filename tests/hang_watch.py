"""A test that runs too long prints the stack of every pending asyncio task.

pytest's `faulthandler_timeout` (pyproject.toml) dumps every thread's frames, but an
async test that waits forever shows only its event loop idle in `select`: the coroutine
chain that waits is in the tasks, not in the threads. This watchdog thread notices a test
running longer than `HANG_WATCH_SECONDS` (default 120) and prints each unfinished
`asyncio.Task`'s stack (found through the garbage collector: the loop belongs to
pytest-asyncio), once per test, through `write` (the terminal, past pytest's output
capture). It only reads; the test goes on.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import threading
import time
from collections.abc import Callable

LIMIT = float(os.environ.get("HANG_WATCH_SECONDS", "120"))


class HangWatch:
    def __init__(self, limit: float = LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._test: str | None = None
        self._started = 0.0
        self._reported = False
        self.write: Callable[[str], None] = sys.stderr.write
        threading.Thread(target=self._watch, name="hang-watch", daemon=True).start()

    def begin(self, test: str) -> None:
        with self._lock:
            self._test, self._started, self._reported = test, time.monotonic(), False

    def end(self) -> None:
        with self._lock:
            self._test = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                late = (
                    self._test is not None
                    and not self._reported
                    and time.monotonic() - self._started > self.limit
                )
                if late:
                    self._reported = True
                    test = self._test
            if late:
                self.write(f"\n=== hang-watch: {test} still running: {pending_tasks()}\n")


def pending_tasks() -> str:
    """Every unfinished asyncio task's stack, as text."""
    out = io.StringIO()
    tasks = [t for t in gc.get_objects() if isinstance(t, asyncio.Task) and not t.done()]
    out.write(f"{len(tasks)} pending asyncio task(s)\n")
    for task in tasks:
        try:
            task.print_stack(file=out)
        except Exception as exc:  # the loop runs on meanwhile: a stack may change under us
            out.write(f"{task!r}: stack unreadable ({exc!r})\n")
    return out.getvalue()
