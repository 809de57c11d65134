"""`/v2/<name>/manifests/<reference>`: push (PUT), pull (GET/HEAD) and DELETE of manifests.

PUT reads the body bounded by `gateway.max_manifest_size` (never more than the limit + 1
bytes; a larger `Content-Length` is refused before reading: 413), validates it
(`gateway.manifest_format`), digests the exact bytes (sha256, or the reference's
algorithm when pushed by digest, which must then match: `DIGEST_INVALID`), stores the
bytes as chunks (`cluster.store_bytes`) and commits ONE `manifest_put` command, which
checks that the referenced blobs and child manifests exist (`MANIFEST_BLOB_UNKNOWN`) and
moves the tag when pushed by tag.
While the chunks are written, an image's config blob is read for its platform and labels
(search indexes them: gateway/image_info.py), which never fails the push. So a PUT by tag
waits for two things in turn: the chunk writes (W fsynced copies), then the one Raft
commit; no linearizable read precedes the command, whose apply is where every check that
must be linearizable happens (docs/architecture.md, "A push, step by step").

A body this gateway's `ManifestCache` holds (it stored or served those bytes lately: the
`docker tag` + push and CI re-tag case) is not written again: the gateway computes the
recipe as `store_bytes` would (`split_bytes`: same chunk size, same sha256 ids) and flags
each command `reuse_stored`. The apply accepts that only when the digest is recorded in
`blobs` with exactly that recipe; otherwise it refuses (`ManifestBytesNotStored`, state
unchanged) and the gateway writes the chunks and sends the command again unflagged (for
that tag and the next ones), so the response is the one of an ordinary push. A cached
body is no proof of anything (a mirror caches bodies it never stored; another gateway may
have deleted the manifest and GC collected it): only the state's check is. Why a recipe
in `blobs` at apply time proves its chunks are there (node/gc.py): `blobs` shrinks only by
`gc_prune`, which re-checks links and the trash in its apply, and every GC pass marks
every chunk of every recipe in `blobs` of the state it copied after a barrier, sweeping
nothing else marked. So a pass that can delete those chunks copied a state without the
digest, which then entered `blobs` again before our apply only by a command whose own
chunks were written (or found present: a touch) within a request of its commit, hence
after the pass's cutoff (the grace contract every push relies on, gateway/cluster/
writes.py); a flagged command cannot add the digest itself. The W fsynced copies were
made when the bytes were first stored, and repair keeps R. Every check that must be
linearizable (blobs linked, immutable tags, quotas) and the activity-log record still
happen in the one apply; `gateway.reuse_stored_manifests` = false turns this off.

GET/HEAD by tag ask a linearizable `tag_get`: one small query per request, so a tag
pushed, moved or deleted through any gateway is seen at once (docs/architecture.md,
invariant 2).
GET/HEAD by digest ask a linearizable `manifest_get` too, but its answer is kept in the
gateway's `RecordCache` (gateway/manifest_cache.py; by digest a manifest is immutable, so
docs/architecture.md lets a gateway cache it). What that may serve stale:
- a manifest pushed anywhere is seen at once (only found records are cached, never 404s);
- a delete through THIS gateway is seen at once (the entry is dropped, and answers to
  queries sent before the delete are not cached);
- a delete through ANOTHER gateway: seen at once while this gateway holds the lease on
  the leader's unlink revision (`gateway.lease_record_caches`: the delete is acknowledged
  only after every leaseholder has the new revision); without a fresh lease GET/HEAD by
  digest here may still answer 200 (the old record and body) until at most
  `gateway.manifest_digest_ttl_seconds` (1 s; 0 = ask every time) after that delete was
  acknowledged (202). Pulls by tag are never affected (the tag is gone at once; the
  digest is only reachable by digest).
Identical concurrent lookups share one query that started after each of them arrived
(`gateway.coalesce`, `gateway.coalesce_manifest_reads`), which keeps them linearizable
and turns a herd of pulls of one tag into at most two queries in flight.
Bodies come from the gateway's `ManifestCache` (immutable by digest) or the chunk store.
The stored media type is echoed exactly, whatever `Accept` says; HEAD
carries the real `Content-Length` without reading the body. A GET answered 200 is queued
as a pull (gateway/pull_events.py: batched, never awaited) for the last-pulled times and
the activity log (the state appends a `pull` record per event). Pushes and deletes carry
their actor context (gateway/activity.py), so the state appends their activity-log record
in the same apply.

Unknown references: 404 `MANIFEST_UNKNOWN`; by tag in a repository that does not exist,
the node may answer `NAME_UNKNOWN` (also 404) and that is passed through.

DELETE by tag removes the tag only (`tag_delete`); by digest the manifest and every tag
on it (`manifest_delete`); with `lifecycle.trash_retention_seconds` > 0 both keep what
they remove in the trash, restorable by an operator. 202 on success; 405 `UNSUPPORTED`
when deletes are disabled; 403 `DENIED` in a delete-protected namespace, or when an
immutable tag rule covers the tag (the state refuses: `TagImmutable`; a push moving such a
tag gets the same).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import ClientPayloadError, http_exceptions, web
from multidict import CIMultiDict

from cargohold.concurrency import hash_off_loop
from cargohold.digests import digest_of, is_digest, parse_digest
from cargohold.errors import (
    DigestInvalid,
    ManifestBytesNotStored,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    RequestTimeout,
    TagInvalid,
    Unsupported,
)
from cargohold.lifecycle_rules import refuse_protected_delete, rules_for_repo
from cargohold.log import log_event
from cargohold.metadata_api import (
    ManifestDelete,
    ManifestGet,
    ManifestInfo,
    ManifestPut,
    Recipe,
    TagDelete,
    TagGet,
)
from cargohold.names import validate_name, validate_tag
from gateway.activity import actor_context
from gateway.body import budget
from gateway.coalesce import Coalescer
from gateway.context import GatewayContext, context
from gateway.image_info import manifest_info
from gateway.manifest_cache import ManifestCache, RecordCache
from gateway.manifest_format import parse_manifest, put_command
from gateway.mirror.proxy import MIRROR, Mirror, Route
from gateway.pull_events import record_pull
from gateway.scanner.worker import SCANNER
from gateway.signatures.policy import POLICY
from gateway.signatures.policy import enforce as enforce_pull_policy

logger = logging.getLogger("cargohold.gateway.manifests")

MANIFEST_CACHE: web.AppKey[ManifestCache] = web.AppKey("cargohold_manifest_cache", ManifestCache)
READS: web.AppKey[Coalescer] = web.AppKey("cargohold_manifest_reads", Coalescer)
RECORDS: web.AppKey[RecordCache[ManifestInfo]] = web.AppKey(
    "cargohold_manifest_records", RecordCache
)
_READ_SIZE = 64 * 1024
# What reading a body raises when the client vanishes or breaks its framing mid-body.
_BODY_ERRORS = (ConnectionError, ClientPayloadError, http_exceptions.HttpProcessingError)


class _Reference:
    """A manifest reference from the URL: a tag or a digest, validated."""

    def __init__(self, reference: str) -> None:
        self.tag: str | None = None
        self.digest: str | None = None
        if is_digest(reference):
            self.algorithm, _ = parse_digest(reference)
            self.digest = reference
        else:
            self.tag = validate_tag(reference)
            self.algorithm = "sha256"


async def _digest(body: bytes, algorithm: str) -> str:
    return await hash_off_loop(len(body), digest_of, body, algorithm)


async def read_bounded(request: web.Request, limit: int, idle: float = 0) -> bytes:
    """The request body, refusing (413) anything larger than `limit` bytes; 408 when it
    sends nothing for `idle` seconds (0 = wait forever)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ManifestTooLarge(detail={"size": declared, "limit": limit})
    buf = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle or None):
                piece = await request.content.read(min(_READ_SIZE, limit + 1 - len(buf)))
        except TimeoutError:
            raise RequestTimeout(detail={"received": len(buf)}) from None
        except _BODY_ERRORS as exc:
            log_event(
                logger,
                "manifest.body_incomplete",
                logging.DEBUG,
                path=request.path,
                error=type(exc).__name__,
            )
            exc.__traceback__ = None  # kept by the StreamReader: a cycle through `buf`
            raise ManifestInvalid("request body incomplete") from None
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > limit:
            raise ManifestTooLarge(detail={"limit": limit})


def _push_tags(request: web.Request, ref: _Reference, limit: int) -> list[str]:
    """The `?tag=` parameters (distribution-spec v1.1), validated before anything is stored."""
    tags = list(dict.fromkeys(request.query.getall("tag", [])))
    if len(tags) > limit:
        raise TagInvalid("too many tags in one push", detail={"tags": len(tags), "limit": limit})
    for tag in tags:
        validate_tag(tag)
    return [t for t in tags if t != ref.tag]


async def put_manifest(request: web.Request) -> web.StreamResponse:
    """PUT by tag or digest; `?tag=a&tag=b` also points those tags at it (`OCI-Tag`).

    Everything echoed into a response header (digest, subject, tags) is validated before
    the commit, so a manifest is never stored with an answer that cannot be sent.
    """
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    ref = _Reference(request.match_info["reference"])
    extra_tags = _push_tags(request, ref, ctx.cfg.gateway.max_tags_per_push)
    limit = ctx.cfg.gateway.max_manifest_size
    declared = request.content_length
    # The body counts against the gateway's body budget until it is stored (gateway/body.py).
    reserve = limit + 1 if declared is None else min(declared, limit + 1)
    async with budget(request).hold(reserve):
        body = await read_bounded(request, limit, ctx.cfg.gateway.body_idle_timeout_seconds)
        parsed = parse_manifest(
            body, request.headers.get("Content-Type"), ctx.cfg.gateway.max_manifest_depth
        )
        digest = await _digest(body, ref.algorithm)
        if ref.digest is not None and digest != ref.digest:
            raise DigestInvalid(detail={"reference": ref.digest, "digest": digest})
        # Platform and labels for search (gateway/image_info.py; never fails the push) are
        # read while the body's chunks are written: neither needs the other.
        reading = asyncio.ensure_future(manifest_info(ctx, name, body, parsed.media_type))
        # A body this gateway stored or served lately is stored already: no chunk writes,
        # the commands below say so and the state checks it (module docstring).
        reuse = (
            ctx.cfg.gateway.reuse_stored_manifests
            and request.app[MANIFEST_CACHE].get(digest) is not None
        )
        try:
            if reuse:
                recipe = await ctx.cluster.recipe_of(body)
            else:
                recipe = await ctx.cluster.store_bytes(body)
        except BaseException:
            reading.cancel()
            raise
    info = await reading
    # One manifest_put per tag (the first also stores the manifest; the others only move
    # their tag, the command being idempotent): each is atomic, together they are not.
    tags: list[str | None] = [ref.tag] if ref.tag is not None else []
    tags += extra_tags
    # The state refuses to move a tag these rules protect (cargohold/lifecycle_rules.py).
    immutable = rules_for_repo(ctx.cfg.lifecycle.immutable_tags, name)
    actor = actor_context(request, ctx.cfg.audit.enabled)
    # An image manifest is queued for the SBOM scanner in the same command (gateway/scanner/).
    scan = True if ctx.cfg.scanner.enabled and parsed.scannable else None

    def command(tag: str | None, recipe: dict[str, Any], reuse: bool) -> ManifestPut:
        return put_command(
            name,
            digest,
            parsed.media_type,
            recipe,
            parsed,
            tag,
            immutable=immutable if tag is not None else (),
            audit=actor,
            info=info,
            scan=scan,
            reuse_stored=True if reuse else None,
        )

    for tag in tags or [None]:
        try:
            await ctx.meta.manifest_put(command(tag, recipe, reuse))
        except ManifestBytesNotStored:
            if not reuse:
                raise
            # Not recorded (deleted and collected since, or a body only fetched, never
            # stored): write the chunks as any push does and commit again, unflagged.
            log_event(logger, "manifest.reuse_refused", logging.DEBUG, repo=name, digest=digest)
            reuse = False
            async with budget(request).hold(len(body)):
                recipe = await ctx.cluster.store_bytes(body)
            await ctx.meta.manifest_put(command(tag, recipe, reuse))
    request.app[MANIFEST_CACHE].put(digest, body)
    scanner = request.app.get(SCANNER)
    if scan and scanner is not None:
        scanner.nudge()
    for tag in tags or [None]:  # a new signature: the pull policy asks again
        request.app[POLICY].signature_stored(name, parsed.subject, tag)
    headers = CIMultiDict(
        {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    )
    if parsed.subject is not None:
        headers["OCI-Subject"] = parsed.subject
    for tag in extra_tags:
        headers.add("OCI-Tag", tag)
    return web.Response(status=201, headers=headers)


async def _lookup(
    request: web.Request, ctx: GatewayContext, name: str, ref: _Reference
) -> ManifestInfo:
    """The manifest record (it may be cached and shared)."""
    if ref.digest is None:
        assert ref.tag is not None
        return await _query(request, ctx, TagGet(name, ref.tag))
    records = request.app[RECORDS]
    record = records.get(name, ref.digest)
    if record is None:
        stamp = records.stamp()
        record = await _query(request, ctx, ManifestGet(name, ref.digest))
        records.put(name, ref.digest, record, stamp)
    return record


async def _query(
    request: web.Request, ctx: GatewayContext, query: TagGet | ManifestGet
) -> ManifestInfo:
    if not ctx.cfg.gateway.coalesce_manifest_reads:
        return await ctx.meta.call(query)
    key = (query.op, query.repo, query.digest if isinstance(query, ManifestGet) else query.tag)
    info: ManifestInfo = await request.app[READS].run(key, lambda: ctx.meta.call(query))
    return info


async def _load(ctx: GatewayContext, cache: ManifestCache, record: ManifestInfo) -> bytes:
    digest = record.digest
    cached = cache.get(digest)
    if cached is not None:  # filled by the previous shared read
        return cached
    body = await ctx.cluster.read_all(dict(record.recipe))
    algorithm, _ = parse_digest(digest)
    if await _digest(body, algorithm) != digest:
        # Every chunk was verified, so a recipe that disagrees is a bug, not bit rot.
        log_event(logger, "manifest.digest_mismatch", logging.ERROR, digest=digest)
        raise RegistryError("stored manifest does not match its digest", detail={"digest": digest})
    cache.put(digest, body)
    return body


async def manifest_body(request: web.Request, ctx: GatewayContext, record: ManifestInfo) -> bytes:
    """The manifest's bytes: from the cache, else read once for all concurrent misses."""
    cache = request.app[MANIFEST_CACHE]
    body = cache.get(record.digest)
    if body is not None:
        return body
    return bytes(
        await request.app[READS].run(
            ("manifest_body", record.digest), lambda: _load(ctx, cache, record)
        )
    )


async def get_manifest(request: web.Request) -> web.StreamResponse:
    """GET and HEAD (aiohttp routes HEAD here): the same status and headers for both."""
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    ref = _Reference(request.match_info["reference"])
    mirror = request.app.get(MIRROR)
    route = mirror.route(request, name) if mirror is not None else None
    if mirror is not None and route is None and mirror.cfg.mirror.root:
        try:
            return await _serve(request, ctx, name, ref, await _lookup(request, ctx, name, ref))
        except (ManifestUnknown, NameUnknown):
            route = mirror.root_route(name)
            if route is None:
                raise
    if mirror is not None and route is not None:
        return await _proxied(request, ctx, mirror, route, ref)
    return await _serve(request, ctx, name, ref, await _lookup(request, ctx, name, ref))


async def _proxied(
    request: web.Request, ctx: GatewayContext, mirror: Mirror, route: Route, ref: _Reference
) -> web.StreamResponse:
    """A pull of a proxy namespace (gateway/mirror/): the digest the upstream names for a
    tag (at most one HEAD per TTL), served from the cluster when stored, else fetched."""
    name = route.name
    digest = ref.digest if ref.digest is not None else await mirror.resolve(route, ref.tag or "")
    by_digest = _Reference(digest)
    try:
        record = await _lookup(request, ctx, name, by_digest)
    except (ManifestUnknown, NameUnknown):
        fetched = await mirror.fetch_manifest(route, digest, ref.tag)
        record = ManifestInfo(
            digest,
            fetched.media_type,
            len(fetched.body),
            Recipe(size=0, chunks=[]),
            fetched.parsed.subject,
            fetched.parsed.artifact_type,
            fetched.parsed.annotations,
        )
        request.app[MANIFEST_CACHE].put(digest, fetched.body)
        return await _serve(request, ctx, name, ref, record)
    if ref.tag is not None and mirror.needs_retag(route, ref.tag, digest):
        # The upstream moved the tag to a manifest stored already: move the stored tag.
        mirror.retag_soon(route, digest, ref.tag, await manifest_body(request, ctx, record))
    return await _serve(request, ctx, name, ref, record)


async def _serve(
    request: web.Request, ctx: GatewayContext, name: str, ref: _Reference, record: ManifestInfo
) -> web.StreamResponse:
    # A namespace may require a signature (gateway/signatures/policy.py): 403 DENIED if not.
    await enforce_pull_policy(
        request, name, ref.tag or record.digest, record, lambda r: manifest_body(request, ctx, r)
    )
    headers = {"Content-Type": record.media_type, "Docker-Content-Digest": record.digest}
    if request.method == "HEAD":
        headers["Content-Length"] = str(record.size)
        return web.Response(headers=headers)
    body = await manifest_body(request, ctx, record)
    record_pull(request, name, record.digest, ref.tag)  # a pull time for retention
    return web.Response(body=body, headers=headers)


async def delete_manifest(request: web.Request) -> web.StreamResponse:
    name = validate_name(request.match_info["name"])
    await delete_reference(request, name, request.match_info["reference"])
    return web.Response(status=202)


async def delete_reference(request: web.Request, name: str, reference: str) -> None:
    """Delete a tag, or a manifest by digest (the module docstring's rules; the web UI's
    delete too). The caller checked the right to delete."""
    ctx = context(request)
    if not ctx.cfg.gateway.delete_enabled:
        raise Unsupported("deletes are disabled on this registry")
    refuse_protected_delete(ctx.cfg.lifecycle.delete_protected, name)
    ref = _Reference(reference)
    immutable = rules_for_repo(ctx.cfg.lifecycle.immutable_tags, name)
    actor = actor_context(request, ctx.cfg.audit.enabled)
    # With a trash, what this removes stays restorable (node/metadata/trash.py).
    trash = ctx.cfg.lifecycle.trash_retention_seconds > 0
    if ref.digest is not None:
        await ctx.meta.call(
            ManifestDelete(name, ref.digest, immutable, actor, now=time.time(), trash=trash)
        )
        request.app[RECORDS].discard(name, ref.digest)
        request.app[MANIFEST_CACHE].discard(ref.digest)
    else:
        assert ref.tag is not None
        await ctx.meta.call(
            TagDelete(name, ref.tag, immutable, actor, now=time.time(), trash=trash)
        )
