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
next pass (this gateway's next start). Every gateway runs the pass; the command never
overwrites, so passes at once cost reads, never correctness. The nodes' search indexes
recompute the rows of the manifests recorded (node/metadata/state.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cargohold import metadata_api as api
from cargohold.errors import RegistryError
from cargohold.log import log_event
from gateway.context import GatewayContext
from gateway.image_info import stored_manifest_info

logger = logging.getLogger("cargohold.gateway.search")


class InfoBackfill:
    """The pass for one gateway (module docstring)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self._ctx = ctx
        # Reads off the Raft log (no barrier per page): a manifest pushed meanwhile carries
        # its own `info`.
        self._meta = api.Metadata(ctx.cluster, linearizable=False)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gw = self._ctx.cfg.gateway
        if gw.search_backfill and self._task is None:
            self._task = asyncio.create_task(self._run(gw.search_backfill_delay_seconds))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            counts = await self.run_pass()
        except RegistryError as exc:  # the cluster is away: the next start tries again
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
