"""`Scanner`: the gateway's loop that claims scans, runs them and reports the results.

Every `scanner.poll_seconds` (or when this gateway stored an image manifest: `nudge`) it
looks for claimable work with a local, non-linearizable `scan_list` (no Raft
entry while idle), then claims up to its free slots (`scanner.concurrency`) with one
`scan_claim` command, each leased for `scanner.lease_seconds`. A scan runs at most
`scanner.scan_timeout_seconds`. Scans yield to pushes: none starts, and a running one
pauses before its next layer, until this gateway stored no image for
`scanner.yield_seconds`, but work waits at most `scanner.max_defer_seconds` (`quiet`), so
a push storm is not slowed by the scans it queues and a busy registry still scans. Results:

- done: `scan_finish` done with the SBOM referrer's digest;
- `ScanError` (a broken layer, a limit): failed with the reason, final;
- anything else (the cluster unavailable, a timeout): queued again after
  `scanner.retry_seconds`; the state fails it after `scanner.max_attempts` claims.

A scanner that dies (SIGKILL, power) reports nothing: its lease ends and any scanner
takes the scan over. One stopping cleanly hands its running scans back (queued, no delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from cargohold import metadata_api as api
from cargohold.errors import ScanError
from cargohold.log import log_event
from cargohold.periodic import cancel_all_and_wait, cancel_and_wait, raise_if_cancelling
from gateway.context import GatewayContext
from gateway.scanner.layer_cache import LayerCache
from gateway.scanner.scan import scan_image

logger = logging.getLogger("cargohold.gateway.scanner")
_REPORT_TIMEOUT = 5.0


class Scanner:
    """Claims and runs scans for one gateway process."""

    def __init__(self, ctx: GatewayContext) -> None:
        self._ctx = ctx
        self._cfg = ctx.cfg.scanner
        # Unique per process: a restarted gateway is a new worker (the old one's leases run out).
        self.worker = f"{socket.gethostname()}:{ctx.cfg.gateway.listen}:{os.getpid()}"
        self._local = api.Metadata(ctx.cluster, linearizable=False)
        self._wake = asyncio.Event()
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_push = -float("inf")  # monotonic time of the last image stored here
        self._defer_start: float | None = None
        self.layers = (
            LayerCache(self._cfg.layer_cache_bytes) if self._cfg.layer_cache_bytes else None
        )
        self.completed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scanner")

    def nudge(self) -> None:
        """An image manifest was just queued here: look for work (once pushes pause)."""
        self._last_push = time.monotonic()
        self._wake.set()

    async def quiet(self, since: float) -> None:
        """Yield to pushes: wait until this gateway stored no image for
        `scanner.yield_seconds`, but not past `since + scanner.max_defer_seconds`
        (monotonic), so a registry that is never idle still gets its scans."""
        while True:
            now = time.monotonic()
            calm_at = self._last_push + self._cfg.yield_seconds
            limit = since + self._cfg.max_defer_seconds
            if now >= calm_at or now >= limit:
                return
            await asyncio.sleep(min(calm_at, limit) - now)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        running = dict(self._running)
        await cancel_all_and_wait(running.values())
        for repo, digest in running:  # hand them back at once (best effort)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_REPORT_TIMEOUT):
                    await self._finish(repo, digest, "queued", "the scanner stopped")

    # -- the loop ---------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            free = self._cfg.concurrency - len(self._running)
            if free > 0 and await self._pushes_going_on():
                continue  # not even a query while pushes go on
            if free > 0:
                self._defer_start = None
                try:
                    oldest = await self._work_waiting()
                    if oldest is not None:
                        await self.quiet(time.monotonic() - max(0.0, time.time() - oldest))
                        await self._claim(free)
                except Exception as exc:
                    raise_if_cancelling()  # a close() that landed in a call
                    log_event(logger, "scanner.claim_failed", logging.WARNING, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.poll_seconds):
                    await self._wake.wait()

    async def _pushes_going_on(self) -> bool:
        """Sleep until pushes pause (bounded by `max_defer_seconds` from the first wait);
        True when it slept, so the caller looks again."""
        now = time.monotonic()
        calm_at = self._last_push + self._cfg.yield_seconds
        if now >= calm_at:
            return False
        if self._defer_start is None:
            self._defer_start = now
        limit = self._defer_start + self._cfg.max_defer_seconds
        if now >= limit:
            return False
        await asyncio.sleep(min(calm_at, limit) - now)
        return True

    async def _work_waiting(self) -> float | None:
        """When the oldest claimable scan was queued (wall clock), None when there is none."""
        now = time.time()
        ready: list[float] = []
        for state in ("queued", "scanning"):
            records = await self._local.scan_list(api.ScanList(state=state, limit=1000))
            ready += [r.queued_at for r in records if r.lease_until <= now]
        return min(ready) if ready else None

    async def _claim(self, free: int) -> None:
        claim = api.ScanClaim(
            self.worker,
            time.time(),
            self._cfg.lease_seconds,
            free,
            self._cfg.max_attempts,
        )
        for item in await self._ctx.meta.scan_claim(claim):
            key = (item.repo, item.digest)
            task = asyncio.create_task(self._run(item), name=f"scan {item.repo}@{item.digest}")
            self._running[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        self._wake.set()  # a slot is free

    async def _run(self, item: api.ScanClaimed) -> None:
        repo, digest = item.repo, item.digest
        started = time.monotonic()
        log_event(
            logger, "scan.start", logging.INFO, repo=repo, digest=digest, attempt=item.attempts
        )
        try:
            async with asyncio.timeout(self._cfg.scan_timeout_seconds):
                claimed = time.monotonic()
                result = await scan_image(self._ctx, repo, digest, lambda: self.quiet(claimed))
        except ScanError as exc:
            await self._report(repo, digest, "failed", str(exc), started)
            return
        except TimeoutError:
            error = (
                f"timed out after scanner.scan_timeout_seconds ({self._cfg.scan_timeout_seconds})"
            )
            await self._report(repo, digest, "queued", error, started)
            return
        except Exception as exc:
            await self._report(repo, digest, "queued", f"{type(exc).__name__}: {exc}", started)
            return
        await self._report(repo, digest, "done", "", started, result.sbom)
        self.completed += 1
        log_event(
            logger,
            "scan.done",
            logging.INFO,
            repo=repo,
            digest=digest,
            sbom=result.sbom,
            components=result.components,
            layers=result.layers,
            layer_bytes=result.layer_bytes,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _report(
        self, repo: str, digest: str, state: str, error: str, started: float, sbom: str = ""
    ) -> None:
        if state != "done":
            log_event(
                logger,
                "scan.error",
                logging.WARNING,
                repo=repo,
                digest=digest,
                state=state,
                error=error[:500],
                seconds=round(time.monotonic() - started, 3),
            )
        try:
            await self._finish(repo, digest, state, error, sbom)
        except Exception as exc:  # the lease runs out and the scan is retried
            log_event(
                logger,
                "scan.report_failed",
                logging.WARNING,
                repo=repo,
                digest=digest,
                error=repr(exc),
            )

    async def _finish(self, repo: str, digest: str, state: str, error: str, sbom: str = "") -> None:
        retry = self._cfg.retry_seconds if error != "the scanner stopped" else 0.0
        await self._ctx.meta.scan_finish(
            api.ScanFinish(repo, digest, self.worker, time.time(), state, error, sbom, retry)
        )


SCANNER: web.AppKey[Scanner] = web.AppKey("cargohold_scanner", Scanner)


def scanner_ctx(scanner: Scanner) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context: start with the application, stop (handing back) with it."""

    async def run(_app: web.Application) -> AsyncIterator[None]:
        scanner.start()
        try:
            yield
        finally:
            await scanner.close()

    return run
