"""`InfoBackfill`: one background pass, at gateway start, recording the platforms and labels
of manifests pushed before search indexed them (docs/search.md, "Where the data comes from").

A push records what search indexes of a manifest beyond its record (`image_info`: platforms
and config labels) with its `manifest_put` (gateway/image_info.py). Manifests stored before
that existed have none. `gateway.search_backfill_delay_seconds` after the gateway started,
the pass walks the manifests without one (`image_info_missing`, a non-linearizable read of
`search_backfill_batch` at a time), reads each one's bytes and, for an image, its config
blob, with the code a push uses (`stored_manifest_info`), and records the results with one
`image_info_backfill` command per page. "Nothing to index" (an artifact, a config without
platform or labels, one above `search_config_max_bytes`) is recorded too, so a manifest is
looked at once in the cluster's life; one whose bytes cannot be read now is left for the
next pass. The nodes' search indexes recompute the rows of the manifests recorded
(node/metadata/state.py).

One gateway of the cluster runs the pass at a time: it holds the backfill's lease in the
replicated metadata (`job_lease` "search_backfill", `search_backfill_lease_seconds`, renewed
every third of it: the scheme of webhook delivery's lease, gateway/webhooks.py). A gateway
whose delay is over and that finds the lease held asks again every third of it; it gets
the lease when the holder gives it up after its pass (its own pass then finds only what is
still missing: manifests unread before, pushes without `info`) or when the lease expires (a
holder that died). A holder that cannot renew stops its pass before its lease could have
expired. The lease saves duplicate reads; it is no fence: `image_info_backfill` never
overwrites, so two passes at once (a holder paused past its expiry) cost reads only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from typing import Any

from cargohold import metadata_api as api
from cargohold.errors import RegistryError
from cargohold.log import log_event
from cargohold.periodic import cancel_and_wait
from gateway.context import GatewayContext
from gateway.image_info import stored_manifest_info

logger = logging.getLogger("cargohold.gateway.search")

# The name of the backfill's lease (`job_lease`).
JOB = "search_backfill"
_METADATA_ERRORS = (RegistryError, OSError, TimeoutError)


class InfoBackfill:
    """The pass for one gateway (module docstring)."""

    def __init__(self, ctx: GatewayContext, holder: str | None = None) -> None:
        self._ctx = ctx
        # Reads off the Raft log (no barrier per page): a manifest pushed meanwhile carries
        # its own `info`.
        self._meta = api.Metadata(ctx.cluster, linearizable=False)
        self._task: asyncio.Task[None] | None = None
        instance = uuid.uuid4().hex[:12]
        self.holder = holder or f"{socket.gethostname()}/{ctx.cfg.gateway.listen}/{instance}"
        self._until = 0.0  # monotonic: this gateway may run the pass until then

    def holding(self) -> bool:
        return time.monotonic() < self._until

    def start(self) -> None:
        gw = self._ctx.cfg.gateway
        if gw.search_backfill and self._task is None:
            self._task = asyncio.create_task(self._run(gw.search_backfill_delay_seconds))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            if await self.run_leased():
                return
            await asyncio.sleep(self._ctx.cfg.gateway.search_backfill_lease_seconds / 3)

    async def run_leased(self) -> bool:
        """One pass if this gateway gets the lease, renewing it meanwhile and giving it up
        after. False when another gateway holds it, or took it before the pass ended (the
        pass is stopped then)."""
        if not await self._renew():
            return False
        renew = self._ctx.cfg.gateway.search_backfill_lease_seconds / 3
        work = asyncio.create_task(self._pass())
        try:
            while True:
                timeout = max(0.0, min(renew, self._until - time.monotonic()))
                await asyncio.wait({work}, timeout=timeout)
                if work.done():
                    return True
                if not await self._renew():
                    log_event(logger, "search.backfill_lease_lost", logging.INFO)
                    return False
        finally:
            await cancel_and_wait(work)
            if self.holding():  # hand over at once rather than at the lease's expiry
                with contextlib.suppress(*_METADATA_ERRORS):
                    async with asyncio.timeout(2.0):
                        await self._meta.job_lease(JOB, self.holder, time.time(), 1.0, True)
            self._until = 0.0

    async def _renew(self) -> bool:
        """Take or renew the lease; whether this gateway holds it now. A failed request
        keeps a lease taken before, until it could have expired; one still unanswered then
        (the metadata client retries through an election for seconds) is given up."""
        ttl = self._ctx.cfg.gateway.search_backfill_lease_seconds
        asked = time.monotonic()
        budget = self._until - asked if self.holding() else ttl
        try:
            async with asyncio.timeout(budget):
                holder, _ = await self._meta.job_lease(JOB, self.holder, time.time(), ttl)
        except _METADATA_ERRORS as exc:
            log_event(
                logger, "search.backfill_lease_failed", logging.INFO, error=type(exc).__name__
            )
            return self.holding()
        if holder != self.holder:
            self._until = 0.0
            return False
        # Counted from before the request: the lease's expiry in the state is later still.
        self._until = asked + ttl * 0.9
        return True

    async def _pass(self) -> None:
        try:
            counts = await self.run_pass()
        except RegistryError as exc:  # the cluster is away: the next holder tries again
            log_event(logger, "search.backfill_failed", logging.WARNING, error=exc.code)
            return
        if counts["recorded"] or counts["unread"]:
            log_event(logger, "search.backfill_done", **counts)

    async def run_pass(self) -> dict[str, int]:
        """Walk every manifest without `image_info` once; counts."""
        meta = self._meta
        batch = self._ctx.cfg.gateway.search_backfill_batch
        counts = {"looked_at": 0, "recorded": 0, "unread": 0}
        after: tuple[str, str] | None = None
        while True:
            page = await meta.image_info_missing(after, batch)
            entries: list[tuple[str, str, dict[str, Any] | None]] = []
            for repo, digest, media_type in page.items:
                counts["looked_at"] += 1
                try:
                    info = await self._info(repo, digest, media_type)
                except RegistryError as exc:
                    counts["unread"] += 1
                    log_event(
                        logger,
                        "search.backfill_unread",
                        logging.DEBUG,
                        repo=repo,
                        digest=digest,
                        error=exc.code,
                    )
                    continue
                entries.append((repo, digest, info))
            if entries:
                counts["recorded"] += await meta.image_info_backfill(entries)
            if page.next is None:
                return counts
            after = page.next

    async def _info(self, repo: str, digest: str, media_type: str) -> dict[str, Any] | None:
        ctx = self._ctx
        record = await self._meta.manifest_get(repo, digest)
        body = await ctx.cluster.read_all(dict(record.recipe))
        try:
            return await stored_manifest_info(ctx, repo, body, media_type)
        except (ValueError, RecursionError):
            return None  # not JSON: nothing search could read from it
