"""Pull times, recorded cheaply: the gateway's batcher of manifest (and blob) pulls.

Every successful manifest GET (not HEAD) calls `PullRecorder.record`, and so does a blob
GET from its first byte when `audit.blob_events` is on (an activity-log record for
webhooks' blob pull events, docs/webhooks.md; blobs have no pull time), which only appends
one tuple to a bounded in-memory queue: it never awaits, never blocks and never fails a
pull. A background task sends what waits as ONE `pull_record` Raft command every
`lifecycle.pull_flush_seconds`, or sooner once `lifecycle.pull_batch_max` events wait. The
state keeps, per (repository, manifest digest), the latest pull time it was told
(node/metadata/state.py); retention reads it (cargohold/retention.py) and the activity log
hooks the same batch when applied.

What may be lost, on purpose: events beyond `lifecycle.pull_queue_max` (the queue is full
because the cluster cannot take commands: counted in
`cargohold_gateway_pull_events_dropped_total`), a batch whose command failed and that no
longer fits back in the queue (counted the same way), and the last interval's events of a
gateway killed without a clean stop (a clean stop flushes once, bounded). A pull time is a
hint for retention, never a correctness input: losing one makes an image look less
recently pulled, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import Counter

from cargohold.log import log_event
from cargohold.metadata_api import Metadata, PullEvent
from cargohold.periodic import cancel_and_wait, raise_if_cancelling
from gateway.access_log import USER_KEY
from gateway.client_address import client_address

logger = logging.getLogger("cargohold.gateway.pulls")

RECORDED = Counter(
    "cargohold_gateway_pull_events_total",
    "Manifest pulls queued for the cluster's last-pulled times",
)
DROPPED = Counter(
    "cargohold_gateway_pull_events_dropped_total",
    "Manifest pulls not recorded (queue full, or a failed batch that no longer fit back)",
)
FLUSHES = Counter(
    "cargohold_gateway_pull_flushes_total",
    "pull_record commands sent, by result",
    ["result"],
)
_FLUSH_OK = FLUSHES.labels("ok")
_FLUSH_FAILED = FLUSHES.labels("failed")


class PullRecorder:
    """The per-gateway batcher; see the module docstring."""

    def __init__(
        self, meta: Metadata, flush_seconds: float, batch_max: int, queue_max: int
    ) -> None:
        self._meta = meta
        self._flush_seconds = flush_seconds
        self._batch_max = max(1, batch_max)
        self._queue_max = max(1, queue_max)
        self._queue: deque[PullEvent] = deque()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def record(
        self,
        repo: str,
        digest: str,
        tag: str | None,
        actor: str | None,
        addr: str | None,
        user_agent: str | None,
        blob_size: int | None = None,
    ) -> None:
        """Queue one pull (O(1), never awaits); dropped and counted when the queue is full.
        A blob's pull gives its size (`blob_size`): an activity-log record, no pull time."""
        if len(self._queue) >= self._queue_max:
            DROPPED.inc()
            return
        self._queue.append(
            PullEvent(repo, digest, tag, time.time(), actor, addr, user_agent, blob_size)
        )
        RECORDED.inc()
        if len(self._queue) >= self._batch_max:
            self._wake.set()

    async def flush(self, full_only: bool = False) -> int:
        """Send what is queued when called (events arriving meanwhile wait for the next
        flush), one command per `batch_max` events, or only full batches (`full_only`);
        how many were sent. A failed batch goes back to the front of the queue (what does
        not fit is dropped) and the flush stops until the next one."""
        sent = 0
        async with self._flush_lock:
            budget = len(self._queue)
            while budget > 0 and (not full_only or budget >= self._batch_max):
                take = min(self._batch_max, budget, len(self._queue))
                if take == 0:
                    break
                budget -= take
                batch = [self._queue.popleft() for _ in range(take)]
                try:
                    await self._meta.pull_record(tuple(batch))
                except Exception as exc:
                    raise_if_cancelling()  # a stop that landed in the call, as grpc's error
                    _FLUSH_FAILED.inc()
                    room = self._queue_max - len(self._queue)
                    kept = batch[-room:] if room > 0 else []
                    DROPPED.inc(len(batch) - len(kept))
                    self._queue.extendleft(reversed(kept))
                    log_event(
                        logger,
                        "pulls.flush_failed",
                        logging.WARNING,
                        events=len(batch),
                        requeued=len(kept),
                        error=type(exc).__name__,
                    )
                    break
                _FLUSH_OK.inc()
                sent += len(batch)
        return sent

    async def run(self) -> None:
        """Flush every `flush_seconds`, or as soon as a full batch waits; until cancelled."""
        while True:
            woken = True
            try:
                async with asyncio.timeout(self._flush_seconds):
                    await self._wake.wait()
            except TimeoutError:
                woken = False
            self._wake.clear()
            # Woken by a full batch: send full batches only, the rest at the interval.
            sent = await self.flush(full_only=woken)
            if sent and len(self._queue) >= self._batch_max:  # a failure waits an interval
                self._wake.set()


PULLS: web.AppKey[PullRecorder] = web.AppKey("cargohold_pulls", PullRecorder)


def record_pull(
    request: web.Request, repo: str, digest: str, tag: str | None, blob_size: int | None = None
) -> None:
    """Queue the pull `request` made (its caller, address and user agent), when this
    gateway records pulls (`lifecycle.pull_flush_seconds` > 0)."""
    recorder = request.app.get(PULLS)
    if recorder is not None:
        recorder.record(
            repo,
            digest,
            tag,
            request.get(USER_KEY) or None,
            client_address(request),
            request.headers.get("User-Agent"),
            blob_size,
        )


def pull_recorder_ctx(
    recorder: PullRecorder, stop_grace: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context: the flush task runs with the app; a clean stop flushes
    once more (bounded by `stop_grace` seconds)."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(recorder.run())
        try:
            yield
        finally:
            await cancel_and_wait(task)
            try:
                async with asyncio.timeout(stop_grace):
                    await recorder.flush()
            except TimeoutError:
                DROPPED.inc(len(recorder))
                log_event(logger, "pulls.unflushed", logging.WARNING, events=len(recorder))

    return ctx
