"""The gateway's side of the activity log (docs/security.md "Activity log").

Who did what, from where: `actor_context(request)` is the actor (user, robot or
anonymous), client address and user agent of a request. Write commands (manifest put,
tag and manifest delete) carry it (`audit` of the command), so the state appends their
record in the same apply: no extra Raft round trip, and no record without the change.

Pulls (a client's manifest GET) are batched by gateway/pull_events.py (one `pull_record`
command per interval, shared with the last-pulled times); the state appends one `pull`
record per event in that same apply. Logins and denied requests go through
`ActivityRecorder`, one per gateway: recording appends one small list to a deque (no
Raft, no disk, no lock on the request path), and a task sends what waited as ONE
`audit_append` command every `audit.flush_seconds`, or sooner once `audit.max_batch`
wait. While the cluster cannot take them, events wait (up to `audit.max_pending`, then
the newest are dropped and counted). A gateway that dies loses at most what waited.

`AuditSealer`, also one per gateway, keeps the in-memory log bounded: every
`audit.seal_interval_seconds` it seals the oldest `audit.segment_records` records into a
segment (written through the normal chunk write path, W replicas, then `audit_seal`,
which checks the digest against the records) and applies `audit.retention_days` to old
segments. Several gateways may race: the state accepts the first seal and answers the
others "already sealed" (or refuses a stale one); either is harmless.

Pull-policy decisions (a signature required, and any other rule a namespace sets) go
through `record_policy_decision`: one `policy` event per refused pull (result `denied`,
the reason in `detail`), batched like the rest; an allowed pull is recorded only when the
policy decided it afresh (not from its verdict cache), so allowed decisions cost at most
one event per image per cache period and gateway. A refusal recorded there is not
recorded again as a plain `denied` event by `activity_middleware`. Nodes append their own
decisions (GC, retention) by sending `audit_append` themselves (node/audit_events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from cargohold.audit import event as audit_event
from cargohold.audit import segment_bytes, segment_digest
from cargohold.config import AuditConfig
from cargohold.errors import RegistryError, RequestInvalid
from cargohold.log import log_event
from cargohold.metadata_api import ROBOT_PREFIX, Actor, Metadata, Recipe
from cargohold.periodic import cancel_and_wait, raise_if_cancelling, run_every
from gateway.access_log import USER_KEY
from gateway.client_address import client_address
from gateway.context import context

logger = logging.getLogger("cargohold.gateway.activity")

# Set by whoever authenticates a request as something other than a user ("robot").
ACTOR_KIND_KEY: web.RequestKey[str] = web.RequestKey("cargohold_actor_kind", str)
# Set once a refusal of this request is in the log (a policy decision with its reason).
_REFUSAL_RECORDED: web.RequestKey[bool] = web.RequestKey("cargohold_refusal_recorded", bool)

RECORDED = Counter(
    "cargohold_audit_events_total", "Activity-log events sent by this gateway", ["action"]
)
DROPPED = Counter("cargohold_audit_dropped_total", "Activity-log events dropped (too many waiting)")
_UA_MAX = 256


def actor_of(request: web.Request) -> tuple[str, str]:
    """(actor, kind) of a request: the authenticated name and user|robot, or anonymous."""
    name = request.get(USER_KEY) or ""
    if not name:
        return "", "anonymous"
    if name.startswith(ROBOT_PREFIX):
        return name, "robot"
    return name, request.get(ACTOR_KIND_KEY) or "user"


def actor_context(request: web.Request, enabled: bool = True) -> Actor | None:
    """The actor context a write command carries (None when the log is off)."""
    if not enabled:
        return None
    actor, kind = actor_of(request)
    return {
        "time": round(time.time(), 6),
        "actor": actor,
        "actor_kind": kind,
        "client": client_address(request),
        "user_agent": request.headers.get("User-Agent", "")[:_UA_MAX],
    }


def blob_actor(request: web.Request) -> Actor | None:
    """The actor context of a blob push or delete (None: `audit.blob_events` or the log off)."""
    audit = context(request).cfg.audit
    return actor_context(request, audit.enabled and audit.blob_events)


class ActivityRecorder:
    """Batches this gateway's login, denial (and other) events; see the module docstring."""

    def __init__(self, cfg: AuditConfig, meta: Metadata) -> None:
        self.cfg = cfg
        self.meta = meta
        self.enabled = cfg.enabled
        self._pending: deque[list[Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    # -- recording (request path: no I/O) ---------------------------------------------
    def record(self, ev: list[Any]) -> None:
        """Queue one event (`cargohold.audit.event(...)`)."""
        if not self.enabled:
            return
        if len(self._pending) >= self.cfg.max_pending:
            DROPPED.inc()
            return
        self._pending.append(ev)
        if len(self._pending) >= self.cfg.max_batch:
            self._wake.set()

    def request_event(
        self,
        request: web.Request,
        action: str,
        *,
        repository: str = "",
        reference: str = "",
        digest: str = "",
        result: str = "ok",
        detail: str = "",
        actor: tuple[str, str] | None = None,
    ) -> None:
        if not self.enabled:
            return
        name, kind = actor or actor_of(request)
        self.record(
            audit_event(
                action,
                time=time.time(),
                actor=name,
                actor_kind=kind,
                client=client_address(request),
                user_agent=request.headers.get("User-Agent", ""),
                repository=repository,
                reference=reference,
                digest=digest,
                result=result,
                detail=detail,
            )
        )

    def login(self, request: web.Request, user: str, result: str) -> None:
        kind = "user" if user else "anonymous"
        self.request_event(request, "login", result=result, actor=(user, kind))

    def denied(self, request: web.Request, status: int, repo: str, code: str) -> None:
        self.request_event(
            request,
            "denied",
            repository=repo,
            reference=request.match_info.get("reference", "") if request.match_info else "",
            result=str(status),
            detail=f"{request.method} {code}",
        )

    # -- flushing -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.flush_seconds):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Send what waits, `max_batch` per command; answers how many were sent."""
        sent = 0
        while self._pending:
            batch = [self._pending[i] for i in range(min(self.cfg.max_batch, len(self._pending)))]
            try:
                await self.meta.audit_append(batch)
            except RequestInvalid as exc:  # a malformed event: a bug, never retried
                log_event(logger, "audit.batch_refused", logging.ERROR, error=exc.message)
                for _ in batch:
                    self._pending.popleft()
                continue
            except (RegistryError, OSError, TimeoutError) as exc:
                raise_if_cancelling()  # a stop that landed in the call: close() sends it
                if not self._failing:
                    log_event(
                        logger,
                        "audit.flush_failed",
                        logging.WARNING,
                        waiting=len(self._pending),
                        error=type(exc).__name__,
                    )
                self._failing = True
                return sent
            self._failing = False
            for _ in batch:
                ev = self._pending.popleft()
                RECORDED.labels(ev[5]).inc()
            sent += len(batch)
        return sent

    async def close(self, grace: float = 5.0) -> None:
        """Stop the task and send what still waits (bounded by `grace` seconds)."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.flush()


class AuditSealer:
    """Seals old records into segments and applies retention; see the module docstring."""

    def __init__(self, cfg: AuditConfig, meta: Metadata, store_bytes: Any) -> None:
        self.cfg = cfg
        self.meta = meta
        self.store_bytes = store_bytes  # async (bytes) -> recipe: the chunk write path
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.cfg.enabled and self.cfg.segment_records > 0 and self.cfg.seal_interval_seconds:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await run_every(
            # Jitter so that the gateways of a cluster do not all seal at the same moment.
            lambda: self.cfg.seal_interval_seconds * random.uniform(0.75, 1.25),
            self.run_once,
            logger,
            "audit.seal_failed",
        )

    async def run_once(self, now: float | None = None) -> int:
        """Seal every full segment waiting, then apply retention; answers segments sealed."""
        sealed = 0
        while True:
            head = await self.meta.audit_head(1)
            waiting = head.head_seq - head.tail_first + 1
            if waiting < self.cfg.segment_records:
                break
            page = await self.meta.audit_tail(head.tail_first - 1, self.cfg.segment_records)
            lines = [line.encode() for line in page.lines]
            data = segment_bytes(lines)
            recipe = await self.store_bytes(data)
            first = head.tail_first
            last = first + len(lines) - 1
            try:
                done = await self.meta.audit_seal(
                    first,
                    last,
                    segment_digest(data),
                    Recipe(size=recipe["size"], chunks=recipe["chunks"]),
                    time.time() if now is None else now,
                )
            except RegistryError as exc:  # another gateway sealed these first
                log_event(logger, "audit.seal_raced", logging.DEBUG, error=exc.message)
                break
            sealed += done
            log_event(logger, "audit.sealed", logging.INFO, first=first, last=last, bytes=len(data))
        if self.cfg.retention_days > 0:
            cutoff = (time.time() if now is None else now) - self.cfg.retention_days * 86400
            head = await self.meta.audit_head(1)
            if head.segments and head.segments[0].last_time < cutoff:
                expired = await self.meta.audit_expire(cutoff)
                log_event(logger, "audit.expired", logging.INFO, segments=expired)
        return sealed

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


ACTIVITY: web.AppKey[ActivityRecorder] = web.AppKey("cargohold_activity", ActivityRecorder)


def recorder(request: web.Request) -> ActivityRecorder | None:
    return request.app.get(ACTIVITY)


def record_policy_decision(
    request: web.Request,
    *,
    policy: str,
    repository: str,
    reference: str,
    digest: str,
    allowed: bool,
    reason: str,
) -> None:
    """One pull-policy decision into the activity log (see the module docstring).

    `policy` names the rule that decided ("signature", "vulnerability", ...): the record
    is action `policy`, result `denied` or `allowed`, detail "<policy>: <reason>". Never
    awaits, never fails the request."""
    if not allowed:
        request[_REFUSAL_RECORDED] = True
    rec = request.app.get(ACTIVITY)
    if rec is None:
        return
    rec.request_event(
        request,
        "policy",
        repository=repository,
        reference=reference,
        digest=digest,
        result="allowed" if allowed else "denied",
        detail=f"{policy}: {reason}",
    )


# The credential-less probe every client starts with, and the token service (its refusals
# are recorded as failed logins).
_NOT_DENIALS = ("/v2", "/auth/token")


@web.middleware
async def activity_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Records each denied request (401/403) as a `denied` event (not `_NOT_DENIALS`)."""
    try:
        return await handler(request)
    except RegistryError as exc:
        if (
            exc.status in (401, 403)
            and request.path.rstrip("/") not in _NOT_DENIALS
            and not request.get(_REFUSAL_RECORDED)
        ):
            rec = request.app.get(ACTIVITY)
            if rec is not None:
                repo = request.match_info.get("name", "") if request.match_info else ""
                rec.denied(request, exc.status, repo, exc.code)
        raise
