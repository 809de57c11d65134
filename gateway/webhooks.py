"""Webhook delivery: at-least-once, durable, off the request path (docs/webhooks.md).

Events are the activity log's records (replicated, numbered, hash-chained; cargohold/audit.py).
Nothing on a push, pull or delete path knows webhooks exist: a request's record is written
by its own command as before, and delivery reads the log afterwards, so a slow or dead
receiver never slows a client.

One gateway of the cluster delivers at a time: it holds the delivery lease in the
replicated metadata (`webhook_lease`, `webhooks.lease_seconds`, renewed every third of it).
Every gateway runs a `WebhookDeliverer`; those without the lease only try to take it. A
gateway that dies holding it is replaced once the lease expires; one that cannot renew it
(the metadata is unavailable) stops sending before it could have expired.

The lease holder runs one task per endpoint (configured ones and replicated ones, read
again at every renewal). A task reads the records after the endpoint's cursor, keeps the
ones the endpoint `wants` (cargohold/webhooks.py), posts them in seq order as envelopes of
at most `webhooks.batch_events`, and only after a 2xx moves the cursor
(`webhook_advance`, fenced by the lease and the cursor it read). A failure is retried with
exponential back-off (`webhooks.backoff_seconds` .. `backoff_max_seconds`) until it
succeeds, or, after `max_attempts` failures or once the batch's oldest record is older
than `max_age_seconds`, the batch's events go to the endpoint's dead letters and the
cursor moves past them (`cargohold admin webhooks dead-letters|retry`). Sequential
delivery in seq order keeps every repository's events in order; a dead letter sent again
by `retry` comes after newer events, by its nature.

What a receiver sees: every event at least once; the same event again (the same `id`)
when a deliverer died or lost its lease between a post and its cursor's move.
Records already removed by the activity log's retention (`audit.retention_days`) before
an endpoint reached them cannot be sent: counted (`cargohold_webhook_events_lost_total`)
and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from cargohold.audit import blob_size, decode, segment_lines
from cargohold.config import Config, WebhooksConfig
from cargohold.errors import Conflict, ManifestUnknown, NameUnknown, RegistryError
from cargohold.log import log_event
from cargohold.metadata_api import Metadata, WebhookAdvance
from cargohold.periodic import cancel_and_wait, raise_if_cancelling, run_every
from cargohold.webhooks import (
    MEDIA_TYPE,
    Endpoint,
    Source,
    backoff,
    envelope,
    event,
    parse_config_endpoints,
    wants,
)

logger = logging.getLogger("cargohold.gateway.webhooks")

POSTS = Counter("cargohold_webhook_posts_total", "Webhook requests sent", ["endpoint", "outcome"])
EVENTS = Counter(
    "cargohold_webhook_events_total",
    "Webhook events by outcome (delivered, dead_lettered)",
    ["endpoint", "outcome"],
)
LOST = Counter(
    "cargohold_webhook_events_lost_total",
    "Activity-log records expired by retention before an endpoint reached them",
    ["endpoint"],
)
LAG = Gauge(
    "cargohold_webhook_lag_records",
    "Activity-log records after the endpoint's cursor (as seen by the lease holder)",
    ["endpoint"],
)
HOLDER = Gauge("cargohold_webhook_lease_held", "1 while this gateway holds the delivery lease")

_MANIFEST_CACHE = 4096
_METADATA_ERRORS = (RegistryError, OSError, TimeoutError)

ReadAll = Callable[[dict[str, Any]], Awaitable[bytes]]


@dataclass
class Batch:
    """Events to post, the records they came from, and where the cursor goes after."""

    records: list[dict[str, Any]]
    to: int


class LogReader:
    """Records after a seq: from the in-memory tail, or a sealed segment's bytes."""

    def __init__(self, meta: Metadata, read_all: ReadAll) -> None:
        self.meta = meta
        self.read_all = read_all

    async def after(self, seq: int, n: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `n` records with seq > `seq`, oldest first, and how many records between
        `seq` and the first one answered were lost to retention."""
        page = await self.meta.audit_tail(seq, n)
        if page.lines:
            first = decode(page.lines[0])
            if first["seq"] == seq + 1:
                return [first, *(decode(line) for line in page.lines[1:])], 0
        head = await self.meta.audit_head()
        if seq >= head.head_seq:
            return [], 0
        lost = 0
        if seq < head.base_seq:
            lost, seq = head.base_seq - seq, head.base_seq
        for seg in head.segments:
            if seg.first <= seq + 1 <= seg.last:
                data = await self.read_all(seg.recipe)
                records = await asyncio.to_thread(_decode_after, data, seq, n)
                return records, lost
        if seq + 1 >= head.tail_first:  # sealed meanwhile
            page = await self.meta.audit_tail(seq, n)
            return [decode(line) for line in page.lines], lost
        return [], lost

    async def one(self, seq: int) -> dict[str, Any] | None:
        records, _ = await self.after(seq - 1, 1)
        return records[0] if records and records[0]["seq"] == seq else None


def _decode_after(data: bytes, after: int, n: int) -> list[dict[str, Any]]:
    out = []
    for line in segment_lines(data):
        record = decode(line)
        if record["seq"] > after:
            out.append(record)
            if len(out) >= n:
                break
    return out


class WebhookDeliverer:
    """The lease loop and one delivery task per endpoint; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        meta: Metadata,
        read_all: ReadAll,
        holder: str | None = None,
    ) -> None:
        self.cfg: WebhooksConfig = cfg.webhooks
        self.meta = meta
        self.reader = LogReader(meta, read_all)
        instance = uuid.uuid4().hex
        self.holder = holder or f"{socket.gethostname()}/{cfg.gateway.listen}/{instance[:12]}"
        base = (self.cfg.public_url or f"http://{cfg.gateway.listen}").rstrip("/")
        self.source = Source(base, instance)
        self.configured = parse_config_endpoints(self.cfg.endpoints)
        self._lease_until = 0.0  # monotonic: this gateway may deliver until then
        self._tasks: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._manifests: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    # -- the lease ------------------------------------------------------------------------
    def holding(self) -> bool:
        return time.monotonic() < self._lease_until

    def start(self) -> None:
        if self.cfg.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        renew = self.cfg.lease_seconds / 3
        await run_every(
            lambda: renew,
            self.tick,
            logger,
            "webhooks.lease_round_failed",
            # Jittered, so that gateways started together do not all ask at the same moment.
            first_pause=renew * random.uniform(0.5, 1.0),
        )

    async def tick(self) -> None:
        """One lease round: take or renew the lease; start, change or stop endpoint tasks.
        With no endpoint at all, no lease is taken (an idle cluster writes nothing)."""
        asked = time.monotonic()
        try:
            wanted = await self.endpoints()
            if not wanted and not self._tasks:
                return
            holder, _ = await self.meta.webhook_lease(
                self.holder, time.time(), self.cfg.lease_seconds
            )
        except _METADATA_ERRORS as exc:
            if not self.holding():
                await self._stop_tasks()
            log_event(logger, "webhooks.lease_failed", logging.INFO, error=type(exc).__name__)
            return
        if holder != self.holder:
            if self._tasks or self._lease_until:
                log_event(logger, "webhooks.lease_lost", logging.INFO, holder=holder)
            self._lease_until = 0.0
            HOLDER.set(0)
            await self._stop_tasks()
            return
        if not self.holding():
            log_event(logger, "webhooks.lease_taken", logging.INFO, holder=self.holder)
        # Counted from before the request: the lease's expiry in the state is later still.
        self._lease_until = asked + self.cfg.lease_seconds * 0.9
        HOLDER.set(1)
        await self._sync_tasks(wanted)

    async def endpoints(self) -> list[Endpoint]:
        """The configured endpoints and the replicated ones (which win a name clash)."""
        listing = await self.meta.webhook_list()
        replicated = [
            Endpoint.from_json(row["endpoint"])
            for row in listing["endpoints"]
            if row.get("endpoint") is not None
        ]
        names = {e.name for e in replicated}
        return [*replicated, *(e for e in self.configured if e.name not in names)]

    async def _sync_tasks(self, endpoints: list[Endpoint]) -> None:
        wanted = {e.name: e for e in endpoints}
        for name, (endpoint, task) in list(self._tasks.items()):
            if wanted.get(name) != endpoint or task.done():
                await self._cancel(name)
        for name, endpoint in wanted.items():
            if name not in self._tasks:
                # Series from 0 (an alert's increase() misses a series' first sample).
                for outcome in ("delivered", "dead_lettered"):
                    EVENTS.labels(name, outcome)
                task = asyncio.get_running_loop().create_task(self._deliver_loop(endpoint))
                self._tasks[name] = (endpoint, task)

    async def _cancel(self, name: str) -> None:
        _, task = self._tasks.pop(name)
        await cancel_and_wait(task)
        with contextlib.suppress(KeyError):  # only the delivering gateway reports a lag
            LAG.remove(name)

    async def _stop_tasks(self) -> None:
        for name in list(self._tasks):
            await self._cancel(name)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._stop_tasks()
        if self.holding():  # hand over at once rather than after the lease's expiry
            with contextlib.suppress(*_METADATA_ERRORS):
                async with asyncio.timeout(2.0):
                    await self.meta.webhook_lease(self.holder, time.time(), 1.0, release=True)
        self._lease_until = 0.0
        HOLDER.set(0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one endpoint ---------------------------------------------------------------------
    async def _deliver_loop(self, endpoint: Endpoint) -> None:
        name = endpoint.name
        log_event(logger, "webhooks.endpoint_started", logging.INFO, endpoint=name)
        cursor: int | None = None
        failures = 0
        while self.holding():
            try:
                if cursor is None:
                    cursor = await self._cursor(name)
                cursor, idle = await self.run_once(endpoint, cursor)
                failures = 0
                if idle:
                    await asyncio.sleep(self.cfg.poll_seconds)
            except Conflict as exc:  # another deliverer moved it, or the lease was lost
                log_event(
                    logger,
                    "webhooks.cursor_conflict",
                    logging.INFO,
                    endpoint=name,
                    error=exc.message,
                )
                cursor = None
                await asyncio.sleep(self.cfg.poll_seconds)
            except _METADATA_ERRORS as exc:
                raise_if_cancelling()  # a stop that landed in a call
                failures += 1
                log_event(
                    logger,
                    "webhooks.metadata_failed",
                    logging.INFO,
                    endpoint=name,
                    error=type(exc).__name__,
                )
                cursor = None
                await asyncio.sleep(
                    backoff(failures, self.cfg.backoff_seconds, self.cfg.backoff_max_seconds)
                )
            except Exception as exc:  # a bug must not silently end this endpoint's delivery
                raise_if_cancelling()
                failures += 1
                log_event(
                    logger,
                    "webhooks.endpoint_failed",
                    logging.ERROR,
                    endpoint=name,
                    error=type(exc).__name__,
                    message=str(exc)[:200],
                )
                cursor = None
                await asyncio.sleep(self.cfg.backoff_max_seconds)

    async def _cursor(self, name: str) -> int:
        """The endpoint's cursor; a configured endpoint seen the first time starts at the
        log's head (it receives what happens from now on, not the history)."""
        listing = await self.meta.webhook_list()
        for row in listing["endpoints"]:
            if row["name"] == name and row.get("cursor") is not None:
                return int(row["cursor"])
        head = int(listing["head_seq"])
        return await self._advance(name, None, head)

    async def _advance(
        self,
        name: str,
        after: int | None,
        to: int,
        dead: list[list[Any]] | None = None,
        retried: list[int] | None = None,
    ) -> int:
        request = WebhookAdvance(
            name, self.holder, after, to, dead or [], retried or [], self.cfg.dead_letters_max
        )
        return await self.meta.webhook_advance(request)

    async def run_once(self, endpoint: Endpoint, cursor: int) -> tuple[int, bool]:
        """Deliver what waits after `cursor` (re-sent dead letters first); answers the new
        cursor and whether there was nothing to do."""
        retry = (await self._retry_queue(endpoint.name))[: self.cfg.batch_events]
        if retry:
            # Records expired by retention since, or no longer wanted, are dropped.
            found = [await self.reader.one(seq) for seq in retry]
            batch = [r for r in found if r is not None and wants(endpoint, r)]
            await self._send(endpoint, batch, cursor, cursor, retried=retry)
            return cursor, False
        records, lost = await self.reader.after(cursor, self.cfg.read_batch)
        if lost:
            LOST.labels(endpoint.name).inc(lost)
            log_event(
                logger,
                "webhooks.records_expired",
                logging.WARNING,
                endpoint=endpoint.name,
                lost=lost,
                cursor=cursor,
            )
        if not records:
            LAG.labels(endpoint.name).set(0)
            return cursor, True
        todo = Batch([], records[-1]["seq"])
        for record in records:
            if wants(endpoint, record):
                if len(todo.records) >= self.cfg.batch_events:
                    todo.to = record["seq"] - 1
                    break
                todo.records.append(record)
        LAG.labels(endpoint.name).set(max(0, records[-1]["seq"] - cursor))
        cursor = await self._send(endpoint, todo.records, cursor, todo.to)
        return cursor, False

    async def _retry_queue(self, name: str) -> list[int]:
        listing = await self.meta.webhook_list()
        for row in listing["endpoints"]:
            if row["name"] == name:
                return [int(s) for s in row.get("retry") or ()]
        return []

    async def _send(
        self,
        endpoint: Endpoint,
        records: list[dict[str, Any]],
        cursor: int,
        to: int,
        retried: list[int] | None = None,
    ) -> int:
        """Post `records` until a 2xx (or give them up), then move the cursor to `to`."""
        if not records:
            return await self._advance(endpoint.name, cursor, to, retried=retried)
        attempts = 0
        while True:
            if not self.holding():
                raise Conflict("the delivery lease is no longer held here")
            body = json.dumps(envelope([await self._event(r) for r in records])).encode()
            error = await self._post(endpoint, body)
            if error is None:
                POSTS.labels(endpoint.name, "ok").inc()
                new = await self._advance(endpoint.name, cursor, to, retried=retried)
                EVENTS.labels(endpoint.name, "delivered").inc(len(records))
                log_event(
                    logger,
                    "webhooks.delivered",
                    logging.DEBUG,
                    endpoint=endpoint.name,
                    events=len(records),
                    cursor=new,
                    attempts=attempts + 1,
                )
                return new
            POSTS.labels(endpoint.name, "failed").inc()
            attempts += 1
            oldest = min(float(r["time"]) for r in records)
            too_many = self.cfg.max_attempts and attempts >= self.cfg.max_attempts
            too_old = self.cfg.max_age_seconds and time.time() - oldest > self.cfg.max_age_seconds
            if too_many or too_old:
                now = time.time()
                reason = f"{'attempts' if too_many else 'age'}: {error}"[:200]
                dead = [[r["seq"], now, attempts, reason] for r in records]
                new = await self._advance(endpoint.name, cursor, to, dead=dead, retried=retried)
                EVENTS.labels(endpoint.name, "dead_lettered").inc(len(records))
                log_event(
                    logger,
                    "webhooks.dead_lettered",
                    logging.WARNING,
                    endpoint=endpoint.name,
                    events=len(records),
                    first_seq=records[0]["seq"],
                    attempts=attempts,
                    reason=reason,
                )
                return new
            delay = backoff(attempts, self.cfg.backoff_seconds, self.cfg.backoff_max_seconds)
            log_event(
                logger,
                "webhooks.post_failed",
                logging.WARNING if attempts == 1 else logging.INFO,
                endpoint=endpoint.name,
                attempts=attempts,
                retry_in=round(delay, 2),
                error=error,
            )
            await asyncio.sleep(delay)

    async def _post(self, endpoint: Endpoint, body: bytes) -> str | None:
        """None on a 2xx, else what went wrong."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": MEDIA_TYPE, "User-Agent": "cargohold-webhooks/1"}
        headers.update(endpoint.headers)
        try:
            async with self._session.post(
                endpoint.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return type(exc).__name__

    async def _event(self, record: dict[str, Any]) -> dict[str, Any]:
        if blob_size(record) is not None:  # a blob's record carries its size
            return event(record, self.source)
        media_type, size = await self._manifest(record["repository"], record.get("digest") or "")
        return event(record, self.source, media_type, size)

    async def _manifest(self, repo: str, digest: str) -> tuple[str, int]:
        """The manifest's media type and size: from the state, else from the trash once
        deleted; "" and 0 once it is gone from both (purged, or no trash)."""
        if not digest:
            return "", 0
        key = (repo, digest)
        known = self._manifests.get(key)
        if known is not None:
            self._manifests.move_to_end(key)
            return known
        try:
            info = await self.meta.manifest_get(repo, digest)
            found = (info.media_type, info.size)
        except (ManifestUnknown, NameUnknown):  # deleted since: its trash entry, if any
            trashed = [
                e
                for e in await self.meta.trash_list(repo)
                if e.digest == digest and e.media_type is not None and e.size is not None
            ]
            if not trashed:
                return "", 0
            found = (trashed[0].media_type or "", trashed[0].size or 0)
        self._manifests[key] = found
        if len(self._manifests) > _MANIFEST_CACHE:
            self._manifests.popitem(last=False)
        return found
