"""Closed-loop load driver: N workers repeat one operation, bounded in count and time.

Every operation returns how many "units" it moved (bytes, or 1 for a request). A worker
starts no new operation once `max_ops` were started or `max_seconds` passed; with
`min_seconds`, it goes on past `max_ops` (indices keep counting up) until that much time
has passed, so a cell whose operations are fast still lasts long enough to measure. Operations
still in flight are given `grace_seconds` more and then cancelled (the result is marked
`timed_out`). Failures are counted, the first few messages kept; after `max_errors` the run
stops. Nothing here sleeps or polls: throughput is completed units over wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.stats import summarise

Operation = Callable[[int], Awaitable[int]]


@dataclass
class DriveResult:
    workers: int
    ops: int = 0
    units: int = 0
    elapsed: float = 0.0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    timed_out: bool = False
    client_cpu: float = 0.0
    # Bytes moved on the wire, counted as they flow (set by byte workloads): the rate of a
    # cell that timed out is taken from it, since its last operations never completed.
    moved: int | None = None
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.units / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ops_rate(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self, unit: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workers": self.workers,
            "ops": self.ops,
            "elapsed_s": round(self.elapsed, 4),
            "errors": self.errors,
            "timed_out": self.timed_out,
            "ops_per_s": round(self.ops_rate, 2),
            # CPU the harness (the client) used: how far it is from being the bottleneck.
            "client_cpu_pct": round(100 * self.client_cpu / self.elapsed, 1)
            if self.elapsed
            else 0.0,
            "client_cpu_us_per_op": round(1e6 * self.client_cpu / self.ops, 1)
            if self.ops
            else None,
        }
        if unit == "bytes":
            out["MB_per_s"] = round(self.rate / 1e6, 2)
            out["bytes"] = self.units
            if self.timed_out and self.moved and self.elapsed > 0:
                out["MB_per_s_completed"] = out["MB_per_s"]
                out["MB_per_s"] = round(self.moved / self.elapsed / 1e6, 2)
                out["MB_per_s_basis"] = "bytes moved before the time bound (timed out)"
        out.update({k: round(v, 3) for k, v in summarise(self.latencies).items()})
        if self.error_samples:
            out["error_samples"] = self.error_samples
        return out


async def drive(
    workers: int,
    op: Operation,
    max_ops: int,
    max_seconds: float,
    grace_seconds: float = 60.0,
    max_errors: int = 20,
    on_done: Callable[[int], None] | None = None,
    min_seconds: float = 0.0,
) -> DriveResult:
    """Run `op(i)` for i in 0..max_ops-1 on `workers` concurrent workers (and on, while
    `min_seconds` have not passed; `max_seconds` bounds both)."""
    result = DriveResult(workers=workers)
    next_index = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + max_seconds
    at_least = start + min(min_seconds, max_seconds)

    def more() -> bool:
        now = time.perf_counter()
        wanted = next_index < max_ops or now < at_least
        return wanted and now < deadline and result.errors < max_errors

    async def worker() -> None:
        nonlocal next_index
        while more():
            index = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                units = await op(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed request is data, not a crash
                result.errors += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.ops += 1
            result.units += units
            if on_done is not None:
                on_done(units)

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    done, pending = await asyncio.wait(tasks, timeout=max_seconds + grace_seconds)
    if pending:
        result.timed_out = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()
    result.elapsed = time.perf_counter() - start
    result.client_cpu = time.process_time() - cpu_start
    return result
