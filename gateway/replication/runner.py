"""Running replication rules: one gateway per rule at a time, durable, retried.

Every gateway runs a `ReplicationRunner` over the rules of its `[replication]` config.
For each rule it takes or renews the rule's lease in the replicated metadata
(`replication_lease`, `replication.lease_seconds`, renewed every third of it, the same
scheme as webhook delivery's lease: gateway/webhooks.py); the holder runs the rule in a
task of its own, the others only try to take the lease. A gateway that dies holding a
lease is replaced once it expires; one that cannot renew it stops before it could have
expired.

The holder's task, in a loop:

- a **full run** when one is due: asked for by `cargohold admin replication run` (the
  rule's run counter in the metadata is ahead of the runs its status says are done), or
  every `interval_seconds` for a `schedule` rule. It lists the source's repositories
  matching the rule (a remote without a catalog: the rule's literal names) and their tags
  matching it, and copies each (gateway/replication/copy.py);
- for an `on_push` rule, the **push records** of the activity log after the rule's cursor
  (the log reader of webhook delivery): a matching tag's copy, a referrer pushed by
  digest (its subject's referrers again), in seq order; the cursor moves
  (`replication_report`, fenced by the lease and the cursor read) only past records
  done, so an event survives gateway and node restarts and is never skipped (unless it
  is given up on, below). With the rule's `replicate_deletes`, the **delete records** of
  the log are events too: a tag deleted by name is deleted by name at the target (the
  manifest stays, as here), a manifest deleted by digest is deleted by digest (its tags
  with it); a 404 there is done; nothing is deleted when the tag or manifest is here
  again by then (pushed again since: that push's event copies it). A restore from the
  trash is then an event too: the tags it brought back are copied again.

A failure (the remote down, refusing, a digest mismatch) is retried with exponential
back-off (`backoff_seconds` .. `backoff_max_seconds`): a full run for ever; a push (or
delete) event until its copy failed `event_max_attempts` times, counting only failures
that blame the event (`blames_event`: not an unreachable or unavailable remote, not the
cluster being unavailable; a remote refusing deletes, `DeleteRefused`, does blame it),
after which it becomes one of the rule's **dead letters** (in the metadata, with the
cursor's move past it, in the same fenced report) and the rule goes on with the next
event: one event that cannot be copied no longer holds back every later one. The
attempts so far are kept in the rule's status, so a lease moving to another gateway
does not start them again. `cargohold admin replication retry` queues
dead letters again; the runner copies the queue before new events (a retried event
comes after newer ones, as for webhooks). Every report carries the rule's status (last
run, last error, consecutive failures, what was copied), which `cargohold admin
replication status` shows with the dead letters.
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
from typing import Any

from prometheus_client import Counter, Gauge

from cargohold.audit import deleted, restored_tags
from cargohold.config import Config, ProxyConfig
from cargohold.errors import Conflict, RegistryError
from cargohold.log import log_event
from cargohold.metadata_api import Metadata, ReplicationReport
from cargohold.names import validate_name, validate_tag
from cargohold.periodic import cancel_and_wait, raise_if_cancelling, run_every
from cargohold.replication import (
    RULE_STATUS_MAX,
    Rule,
    literal_repositories,
    parse_rules,
    referrer_tag,
    target_name,
    wants_repo,
    wants_tag,
    wants_tag_delete,
)
from cargohold.webhooks import backoff
from gateway.manifest_format import parse_manifest
from gateway.mirror.upstream import Upstream, UpstreamFailed, UpstreamNotFound
from gateway.replication.copy import Copier
from gateway.replication.sides import BlobMismatch, LocalRegistry, Registry, RemoteRegistry
from gateway.webhooks import LogReader, ReadAll

logger = logging.getLogger("cargohold.gateway.replication")

RUNS = Counter("cargohold_replication_runs_total", "Replication rule runs", ["rule", "outcome"])
EVENTS = Counter(
    "cargohold_replication_events_total",
    "Push and delete events of a rule by outcome (copied, deleted, dead_lettered)",
    ["rule", "outcome"],
)
COPIED = Counter("cargohold_replication_bytes_total", "Blob bytes copied by replication", ["rule"])
HELD = Gauge("cargohold_replication_lease_held", "1 while this gateway runs the rule", ["rule"])

# Tags of a failed run whose errors the status keeps.
_FAILED_TAGS_KEPT = 20
# A remote's answers that say it is unavailable (rate-limited, overloaded, in maintenance,
# behind a failing proxy) rather than anything about what was asked of it.
_REMOTE_UNAVAILABLE = (429, 502, 503, 504)


class RunIncomplete(Exception):
    """Some tags of a full run could not be copied (the others were)."""


# What a copy may fail with, retried: the remote (down, refusing, 404 of a listed name),
# the cluster, a mismatch, the network.
_FAILURES = (
    UpstreamFailed,
    UpstreamNotFound,
    RegistryError,
    BlobMismatch,
    RunIncomplete,
    OSError,
    TimeoutError,
)


def blames_event(exc: BaseException) -> bool:
    """Whether a push event's failed copy counts as one of its attempts: not when the
    remote could not be reached or said it is unavailable, nor when this cluster is
    unavailable (every event would fail alike: they wait, they are not given up on)."""
    if isinstance(exc, UpstreamFailed):
        return exc.status is not None and exc.status not in _REMOTE_UNAVAILABLE
    if isinstance(exc, Conflict):  # the lease lost: the next holder tries it
        return False
    if isinstance(exc, RegistryError):
        return exc.status < 500
    if isinstance(exc, TimeoutError):  # run_timeout_seconds: this event's copy is too long
        return True
    return not isinstance(exc, OSError)


class ReplicationRunner:
    """The lease loop and one task per rule held; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        meta: Metadata,
        local: LocalRegistry,
        read_all: ReadAll,
        holder: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.r = cfg.replication
        self.meta = meta
        self.local = local
        self.reader = LogReader(meta, read_all)
        self.rules = [rule for rule in parse_rules(self.r.rules) if rule.enabled]
        instance = uuid.uuid4().hex[:12]
        self.holder = holder or f"{socket.gethostname()}/{cfg.gateway.listen}/{instance}"
        self._until: dict[str, float] = {}  # rule -> monotonic time its lease is good until
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def holding(self, rule: str) -> bool:
        return time.monotonic() < self._until.get(rule, 0.0)

    def start(self) -> None:
        if self.r.enabled and self.rules and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        renew = self.r.lease_seconds / 3
        await run_every(
            lambda: renew,
            self.tick,
            logger,
            "replication.lease_round_failed",
            first_pause=renew * random.uniform(0.0, 0.5),
        )

    async def tick(self) -> None:
        """One lease round over every rule."""
        for rule in self.rules:
            asked = time.monotonic()
            try:
                holder, _ = await self.meta.replication_lease(
                    rule.name, self.holder, time.time(), self.r.lease_seconds
                )
            except (RegistryError, OSError, TimeoutError) as exc:
                log_event(
                    logger,
                    "replication.lease_failed",
                    logging.INFO,
                    rule=rule.name,
                    error=type(exc).__name__,
                )
                if not self.holding(rule.name):
                    await self._cancel(rule.name)
                continue
            if holder != self.holder:
                self._until.pop(rule.name, None)
                HELD.labels(rule.name).set(0)
                await self._cancel(rule.name)
                continue
            self._until[rule.name] = asked + self.r.lease_seconds * 0.9
            HELD.labels(rule.name).set(1)
            task = self._tasks.get(rule.name)
            if task is None or task.done():
                runner = RuleRunner(self, rule)
                self._tasks[rule.name] = asyncio.get_running_loop().create_task(runner.loop())

    async def _cancel(self, name: str) -> None:
        await cancel_and_wait(self._tasks.pop(name, None))

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for rule in self.rules:
            await self._cancel(rule.name)
            if self.holding(rule.name):  # hand over at once rather than after expiry
                with contextlib.suppress(RegistryError, OSError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.meta.replication_lease(
                            rule.name, self.holder, time.time(), 1.0, release=True
                        )
            self._until.pop(rule.name, None)
            HELD.labels(rule.name).set(0)


class RuleRunner:
    """One rule's work while this gateway holds its lease."""

    def __init__(self, owner: ReplicationRunner, rule: Rule) -> None:
        self.owner = owner
        self.cfg = owner.cfg
        self.r = owner.r
        self.rule = rule
        proxy = ProxyConfig(rule.name, rule.url, rule.username, rule.password)
        self.remote = RemoteRegistry(
            Upstream(proxy, self.cfg.mirror),
            self.r.upload_chunk_bytes,
            self.cfg.gateway.max_manifest_size,
        )
        self.src: Registry
        self.dst: Registry
        if rule.direction == "push":
            self.src, self.dst = owner.local, self.remote
        else:
            self.src, self.dst = self.remote, owner.local
        self.status: dict[str, Any] = {}
        self.cursor: int | None = None
        self.failures = 0

    # -- the loop -------------------------------------------------------------------------
    async def loop(self) -> None:
        name = self.rule.name
        log_event(logger, "replication.rule_started", logging.INFO, rule=name)
        try:
            await self._load()
            while self.owner.holding(name):
                try:
                    busy = await self.step()
                    if self.failures:
                        self.failures = 0
                        self.status["failures"] = 0
                        self.status["state"] = "ok"
                        await self._report()
                    if not busy:
                        await asyncio.sleep(self.r.poll_seconds)
                except Conflict:  # the lease was lost, or another runner moved the cursor
                    await asyncio.sleep(self.r.poll_seconds)
                    await self._load()
                except _FAILURES as exc:
                    raise_if_cancelling()  # a stop that landed in a metadata call
                    await self._failed(exc)
                except Exception as exc:  # a bug must not silently end the rule's work
                    raise_if_cancelling()
                    log_event(
                        logger,
                        "replication.rule_crashed",
                        logging.ERROR,
                        rule=name,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                    )
                    await self._failed(exc)
        finally:
            await self.remote.close()

    async def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        delay = backoff(self.failures, self.r.backoff_seconds, self.r.backoff_max_seconds)
        message = f"{type(exc).__name__}: {exc}"[:500]
        log_event(
            logger,
            "replication.copy_failed",
            logging.WARNING if self.failures == 1 else logging.INFO,
            rule=self.rule.name,
            failures=self.failures,
            retry_in=round(delay, 2),
            error=message,
        )
        self.status.update(
            state="retrying",
            failures=self.failures,
            last_error={"time": time.time(), "message": message},
            next_retry=time.time() + delay,
        )
        with contextlib.suppress(RegistryError, OSError, TimeoutError):
            await self._report()
        await asyncio.sleep(delay)

    async def _load(self) -> None:
        """The rule's cursor, status and run requests as the metadata has them."""
        listing = await self.owner.meta.replication_list()
        row = next((r for r in listing["rules"] if r["name"] == self.rule.name), None)
        self.head = int(listing["head_seq"])
        self.status = dict((row or {}).get("status") or {})
        self.runs_requested = int((row or {}).get("runs_requested") or 0)
        self.cursor = None if row is None else row.get("cursor")
        self.status["rule"] = self.rule.describe()
        self.status.setdefault("runs_done", 0)
        self.status.setdefault("events_copied", 0)
        self.status.setdefault("state", "ok")
        if "on_push" in self.rule.triggers and self.cursor is None:
            # A new rule starts at the log's head: what is pushed from now on (a full run
            # copies the past).
            self.cursor = await self._report(after=None, to=self.head)
        else:
            await self._report()

    async def _report(
        self,
        after: int | None = None,
        to: int | None = None,
        dead: list[list[Any]] | None = None,
        retried: list[int] | None = None,
    ) -> int | None:
        self.status["holder"] = self.owner.holder
        self.status["reported"] = time.time()
        if len(json.dumps(self.status)) > RULE_STATUS_MAX // 2:  # a rule of very many globs
            rule = dict(self.status["rule"])
            rule["repositories"] = rule["repositories"][:10]
            rule["tags"] = rule["tags"][:10]
            self.status["rule"] = rule
            self.status["failed_tags"] = self.status.get("failed_tags", [])[:5]
        request = ReplicationReport(
            self.rule.name,
            self.owner.holder,
            after,
            to,
            self.status,
            dead or [],
            retried or [],
            self.r.dead_letters_max,
        )
        return await self.owner.meta.replication_report(request)

    async def step(self) -> bool:
        """Do what is due; answers whether there was anything."""
        listing = await self.owner.meta.replication_list()
        row: dict[str, Any] = next((r for r in listing["rules"] if r["name"] == self.rule.name), {})
        self.runs_requested = int(row.get("runs_requested") or 0)
        if self._run_due():
            await self.full_run()
            return True
        retry = [int(seq) for seq in row.get("retry") or ()]
        if retry:
            await self.retry_dead_letter(retry[0])
            return True
        if "on_push" in self.rule.triggers:
            return await self.events()
        return False

    def _run_due(self) -> bool:
        if self.runs_requested > int(self.status.get("runs_asked_done", 0)):
            return True
        if "schedule" in self.rule.triggers:
            last = float((self.status.get("last_run") or {}).get("finished") or 0.0)
            return time.time() - last >= self.rule.interval_seconds
        return False

    # -- full runs ------------------------------------------------------------------------
    async def full_run(self) -> None:
        asked = self.runs_requested
        started = time.time()
        self.status.update(state="running", run_started=started)
        await self._report()
        copier = Copier(self.cfg, self.src, self.dst)
        try:
            async with asyncio.timeout(self.r.run_timeout_seconds or None):
                copied = await self._copy_all(copier)
        except BaseException:
            RUNS.labels(self.rule.name, "failed").inc()
            self.status["last_failed_run"] = {
                "started": started,
                "failed": time.time(),
                **copier.stats.to_json(),
            }
            raise
        finally:
            COPIED.labels(self.rule.name).inc(copier.stats.bytes_copied)
        RUNS.labels(self.rule.name, "ok").inc()
        self.status.update(
            state="ok",
            runs_done=int(self.status.get("runs_done", 0)) + 1,
            runs_asked_done=asked,
            last_run={
                "started": started,
                "finished": time.time(),
                "repositories": copied,
                **copier.stats.to_json(),
            },
        )
        self.status.pop("run_started", None)
        log_event(
            logger,
            "replication.run_done",
            logging.INFO,
            rule=self.rule.name,
            **copier.stats.to_json(),
        )
        await self._report()

    async def _copy_all(self, copier: Copier) -> int:
        """Copy every matching tag. A tag that fails does not stop the others (its error
        is kept, `_FAILED_TAGS_KEPT` of them, and the run fails at its end, to be tried
        again); a remote that cannot be reached at all stops the run at once."""
        repos = await self.src.repositories(self.r.max_repositories)
        if repos is None:
            repos = literal_repositories(self.rule)
        wanted = [repo for repo in repos if wants_repo(self.rule, repo)]
        failed: list[dict[str, str]] = []
        count = 0
        for repo in wanted:
            target = target_name(self.rule, repo)
            for tag in await self.src.tags(repo, self.r.max_tags):
                if not wants_tag(self.rule, tag):
                    continue
                try:
                    validate_name(target)
                    validate_tag(tag)
                    await copier.copy_tag(repo, target, tag)
                except _FAILURES as exc:
                    if isinstance(exc, UpstreamFailed) and exc.status is None:
                        raise  # unreachable: every other tag would wait for it too
                    count += 1
                    if len(failed) < _FAILED_TAGS_KEPT:
                        error = f"{type(exc).__name__}: {exc}"[:300]
                        failed.append({"repository": repo, "tag": tag, "error": error})
        self.status["failed_tags"] = failed
        if count:
            first = failed[0]
            raise RunIncomplete(
                f"{count} tags failed, first {first['repository']}:{first['tag']}: {first['error']}"
            )
        return len(wanted)

    # -- push events ----------------------------------------------------------------------
    async def events(self) -> bool:
        assert self.cursor is not None
        records, lost = await self.owner.reader.after(self.cursor, self.r.read_batch)
        if lost:
            log_event(
                logger, "replication.events_lost", logging.WARNING, rule=self.rule.name, lost=lost
            )
        if not records:
            return False
        to = self.cursor
        for record in records:
            if self._wants(record):
                try:
                    await self._copy_record(record)
                except _FAILURES as exc:
                    letter = self._attempt_failed(record["seq"], exc)
                    if letter is None:
                        raise  # retried after a back-off (the loop's)
                    # Given up on: the cursor moves past it, the next event's turn.
                    self.cursor = await self._report(
                        after=self.cursor, to=record["seq"], dead=[letter]
                    )
                else:
                    # Each copied event moves the cursor: a failure later in the page does
                    # not copy this one again.
                    self.cursor = await self._report(after=self.cursor, to=record["seq"])
            to = record["seq"]
        if to != self.cursor:
            self.cursor = await self._report(after=self.cursor, to=to)
        return True

    async def retry_dead_letter(self, seq: int) -> None:
        """Copy the dead letter `seq` that `admin replication retry` queued; dropped from
        the queue once copied, or once it is given up on again (a dead letter again)."""
        record = await self.owner.reader.one(seq)
        if record is None or not self._wants(record):  # expired by retention since
            await self._report(retried=[seq])
            return
        try:
            await self._copy_record(record)
        except _FAILURES as exc:
            letter = self._attempt_failed(seq, exc)
            if letter is None:
                raise
            await self._report(dead=[letter], retried=[seq])
        else:
            await self._report(retried=[seq])

    async def _copy_record(self, record: dict[str, Any]) -> None:
        """One push event's copy (or a delete event's delete), counted in the status and
        the metrics."""
        if deleted(record) is not None:
            await self._delete_record(record)
            return
        copier = Copier(self.cfg, self.src, self.dst)
        async with asyncio.timeout(self.r.run_timeout_seconds or None):
            await self._copy_event(copier, record)
        EVENTS.labels(self.rule.name, "copied").inc()
        self.status.pop("event_attempts", None)
        self.status["events_copied"] = int(self.status.get("events_copied", 0)) + 1
        self.status["last_event"] = {
            "seq": record["seq"],
            "repository": record["repository"],
            "reference": record.get("reference") or "",
            "copied": time.time(),
        }
        COPIED.labels(self.rule.name).inc(copier.stats.bytes_copied)

    async def _delete_record(self, record: dict[str, Any]) -> None:
        async with asyncio.timeout(self.r.run_timeout_seconds or None):
            sent = await self._delete_event(record)
        EVENTS.labels(self.rule.name, "deleted").inc()
        self.status.pop("event_attempts", None)
        if sent:
            self.status["deletes_sent"] = int(self.status.get("deletes_sent", 0)) + 1
        self.status["last_event"] = {
            "seq": record["seq"],
            "repository": record["repository"],
            "reference": record.get("reference") or "",
            "action": "delete",
            "done": time.time(),
        }

    async def _delete_event(self, record: dict[str, Any]) -> bool:
        """What a delete record removed here, removed at the target the same way: a tag
        by name (its manifest stays, other tags on it too), a manifest by digest (its
        tags with it). Answers whether a DELETE was sent (not for a tag the rule does not
        copy, nor for what is here again by now)."""
        repo = record["repository"]
        target = target_name(self.rule, repo)
        reference = record.get("reference") or ""
        if deleted(record) == "tag":
            if not wants_tag_delete(self.rule, reference):
                return False
            if await self.src.manifest(repo, reference) is not None:
                return False  # tagged again since: that push's event copies it
            await self.remote.delete_manifest(target, reference)
            return True
        digest = record.get("digest") or reference
        if not digest or await self.src.has_manifest(repo, digest):
            return False  # pushed again since
        await self.remote.delete_manifest(target, digest)
        return True

    def _attempt_failed(self, seq: int, exc: BaseException) -> list[Any] | None:
        """Count a failed copy of event `seq` (when it `blames_event`); the dead letter
        ([seq, time, attempts, reason]) once it failed `event_max_attempts` times, else
        None (to be tried again). The count is kept in the status (reported by the loop)."""
        limit = self.r.event_max_attempts
        if not limit or not blames_event(exc):
            return None
        known = self.status.get("event_attempts") or {}
        attempts = int(known.get("attempts", 0)) + 1 if known.get("seq") == seq else 1
        if attempts < limit:
            self.status["event_attempts"] = {"seq": seq, "attempts": attempts}
            return None
        self.status.pop("event_attempts", None)
        self.status["events_dead"] = int(self.status.get("events_dead", 0)) + 1
        EVENTS.labels(self.rule.name, "dead_lettered").inc()
        reason = f"{type(exc).__name__}: {exc}"[:200]
        log_event(
            logger,
            "replication.dead_lettered",
            logging.WARNING,
            rule=self.rule.name,
            seq=seq,
            attempts=attempts,
            error=reason,
        )
        return [seq, time.time(), attempts, reason]

    def _wants(self, record: dict[str, Any]) -> bool:
        repo = record.get("repository") or ""
        if record.get("result") != "ok" or not repo or not wants_repo(self.rule, repo):
            return False
        if record.get("action") == "push":
            return True
        if not self.rule.replicate_deletes:
            return False
        # A tag's or a manifest's delete (a blob's goes with its manifest at the target),
        # and a restore from the trash (what a replicated delete removed there, back).
        return deleted(record) is not None or record.get("action") == "restore"

    async def _copy_event(self, copier: Copier, record: dict[str, Any]) -> None:
        repo = record["repository"]
        target = target_name(self.rule, repo)
        if record.get("action") == "restore":  # the tags it brought back, copied again
            for tag in restored_tags(record):
                if wants_tag(self.rule, tag) or referrer_tag(tag):
                    await self._copy_tag(copier, repo, target, tag)
            return
        reference = record.get("reference") or ""
        if reference and ":" not in reference:  # a tag
            if wants_tag(self.rule, reference) or referrer_tag(reference):
                await self._copy_tag(copier, repo, target, reference)
            return
        digest = record.get("digest") or reference
        manifest = await self.src.manifest(repo, digest) if digest else None
        if manifest is None:  # deleted since
            return
        parsed = parse_manifest(manifest.body, manifest.media_type or None)
        # A referrer pushed by digest: its subject's referrers, if the subject was copied.
        if parsed.subject and await self.dst.has_manifest(target, parsed.subject):
            await copier.copy_referrers(repo, target, parsed.subject, 1)

    async def _copy_tag(self, copier: Copier, repo: str, target: str, tag: str) -> None:
        if referrer_tag(tag):
            subject = "sha256:" + tag[len("sha256-") :].split(".", 1)[0]
            if await self.dst.has_manifest(target, subject):
                await copier.copy_referrers(repo, target, subject, 1)
            return
        if await self.src.manifest(repo, tag) is None:
            return  # the tag was deleted since its push
        await copier.copy_tag(repo, target, tag)
