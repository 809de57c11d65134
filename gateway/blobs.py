"""Blob handlers: GET/HEAD (whole or `Range`) and DELETE of /v2/<name>/blobs/<digest>.

A blob is readable through a repository only when linked there (`blob_get`, a
linearizable query, so a blob is visible right after its 201 and 404s right after a
delete through this gateway). A confirmed link (recipes of at most
`blob_digest_cache_max_chunks` chunks) is remembered as manifests by digest are
(gateway/manifest_cache.py): repeated pulls skip the query. A link deleted through
*another* gateway is seen at once while this gateway holds the lease on the leader's unlink
revision (`gateway.lease_record_caches`); without a fresh lease it may still be served here
for up to `gateway.blob_digest_ttl_seconds` (1 s) after the delete's 202 (its chunks
outlive it: GC spares chunks for a grace period far longer). A 404 is never remembered.
GET streams the recipe's chunks through `ClusterClient.read_range` (verified, read-ahead,
hedged); HEAD answers the same status and headers with the real `Content-Length` and no
body. Responses are never compressed. Chunks the gateway's host's node holds go out by
sendfile(2) from its LMDB file where the connection allows (gateway/local_send.py), in
recipe order with the rest.

`Range` (RFC 9110, one range only): `bytes=a-b`, `bytes=a-`, `bytes=-n`; an end past
the size is clamped; a satisfiable range is 206 with `Content-Range: bytes a-b/total`;
an unsatisfiable one (a start past the end, an end before the start, `bytes=-0`) 416
with `Content-Range: bytes */total`. A malformed or multi-range header is ignored (200
with the whole blob), as RFC 9110 allows. Positions of any length are accepted (a
start of 5,000 digits is simply past the end).

In a proxy namespace (gateway/mirror/), a blob not stored yet is streamed from the
gateway's one upstream download of it while that download is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

from aiohttp import web

from cargohold.digests import parse_digest
from cargohold.errors import BlobUnknown, NameUnknown, RangeInvalid, Unavailable, Unsupported
from cargohold.lifecycle_rules import refuse_protected_delete
from cargohold.log import log_event
from cargohold.metadata_api import Recipe
from cargohold.names import validate_name
from gateway.activity import blob_actor
from gateway.cluster.reads import LocalSlice
from gateway.context import GatewayContext, context
from gateway.local_send import DirectSender
from gateway.manifest_cache import RecordCache
from gateway.mirror.fetch import BlobFetch
from gateway.mirror.proxy import MIRROR
from gateway.mirror.upstream import UpstreamFailed, UpstreamNotFound
from gateway.pull_events import record_pull

logger = logging.getLogger("cargohold.gateway.blobs")

BLOB_RECORDS: web.AppKey[RecordCache[Recipe]] = web.AppKey("cargohold_blob_records", RecordCache)

_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII)
# Positions past any blob size; longer digit strings are not converted (Python refuses
# int() of more than 4300 digits, and a number that long is past every size anyway).
_FAR = 2**63
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    return _FAR if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a single-range header; None = whole blob; RangeInvalid = 416."""
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    unsatisfiable = RangeInvalid(
        headers={"Content-Range": f"bytes */{size}"},
        detail={"Range": header[:256], "size": size},
    )
    if not first:  # suffix: the last n bytes
        n = _position(last)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size
    start = _position(first)
    if last and _position(last) < start:
        raise unsatisfiable  # an end before the start (the OCI conformance suite wants 416)
    if start >= size:
        raise unsatisfiable
    end = size if not last else min(_position(last) + 1, size)
    return start, end


async def get_blob(request: web.Request) -> web.StreamResponse:
    """GET or HEAD a blob (200 whole, 206 range)."""
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    digest = request.match_info["digest"]
    parse_digest(digest)
    mirror = request.app.get(MIRROR)
    route = mirror.route(request, name) if mirror is not None else None
    if route is None and mirror is not None and mirror.cfg.mirror.root:
        try:
            recipe = await _linked(request, ctx, name, digest)
        except (BlobUnknown, NameUnknown):
            route = mirror.root_route(name)
            if route is None:
                raise
        else:
            return await _serve(request, ctx, name, digest, recipe)
    if mirror is not None and route is not None:
        try:
            recipe = await _linked(request, ctx, route.name, digest)
        except (BlobUnknown, NameUnknown):
            return await _proxied(request, ctx, name, mirror.join_blob(route, digest), digest)
        return await _serve(request, ctx, name, digest, recipe)
    return await _serve(request, ctx, name, digest, await _linked(request, ctx, name, digest))


async def _linked(request: web.Request, ctx: GatewayContext, repo: str, digest: str) -> Recipe:
    """The recipe of `digest` if linked in `repo`: from this gateway's record cache while
    it trusts what the cluster confirmed (gateway/manifest_cache.py), else asked."""
    records = request.app[BLOB_RECORDS]
    recipe = records.get(repo, digest)
    if recipe is None:
        stamp = records.stamp()
        recipe = await ctx.meta.blob_get(repo, digest)
        if len(recipe.get("chunks") or ()) <= ctx.cfg.gateway.blob_digest_cache_max_chunks:
            records.put(repo, digest, recipe, stamp)
    return recipe


def _response(
    request: web.Request, digest: str, size: int | None
) -> tuple[web.StreamResponse, int, int | None]:
    """The response's status and headers; (response, start, end) of the bytes to send."""
    span = parse_range(request.headers.get("Range"), size) if size is not None else None
    response = web.StreamResponse(status=200 if span is None else 206)
    response.headers["Docker-Content-Digest"] = digest
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Type"] = "application/octet-stream"
    response.headers["Cache-Control"] = "max-age=31536000"
    response.headers["ETag"] = f'"{digest}"'
    start, end = (0, size) if span is None else span
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{span[1] - 1}/{size}"
    if end is not None:
        response.content_length = end - start
    return response, start, end


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    digest: str,
    pieces: AsyncIterator[bytes | memoryview | LocalSlice],
    direct: DirectSender | None = None,
) -> web.StreamResponse:
    """Stream the body (not for HEAD); a client going away mid-body is only logged.
    `LocalSlice` pieces (only asked for with a `direct` sender) go out by it."""
    sent = 0
    try:
        async with contextlib.aclosing(pieces) as body:  # type: ignore[type-var]
            async for piece in body:
                if isinstance(piece, LocalSlice):
                    assert direct is not None
                    sent += await direct.send(piece)
                else:
                    await response.write(piece)
                    sent += len(piece)
    except (ConnectionError, OSError) as exc:
        # The client went away mid-body; nothing to answer any more.
        log_event(
            logger,
            "blob.client_gone",
            logging.DEBUG,
            digest=digest,
            sent=sent,
            error=type(exc).__name__,
        )
        return response
    await response.write_eof()
    return response


async def _serve(
    request: web.Request, ctx: GatewayContext, name: str, digest: str, recipe: Recipe
) -> web.StreamResponse:
    """A stored blob, from the cluster's chunks."""
    size = int(recipe["size"])
    response, start, end = _response(request, digest, size)
    writer = await response.prepare(request)
    if request.method == "HEAD" or end is None or end <= start:
        await response.write_eof()
        return response
    audit = ctx.cfg.audit
    if start == 0 and audit.enabled and audit.blob_events:  # not a pull resumed by range
        record_pull(request, name, digest, None, size)
    direct = DirectSender.for_response(request, response, writer, ctx)
    if direct is None:
        return await _send(
            request, response, digest, ctx.cluster.read_range(dict(recipe), start, end)
        )
    pieces = ctx.cluster.read_range_marked(dict(recipe), start, end)
    return await _send(request, response, digest, pieces, direct)


async def _proxied(
    request: web.Request, ctx: GatewayContext, name: str, fetch: BlobFetch, digest: str
) -> web.StreamResponse:
    """A blob of a proxy namespace not stored yet: streamed from its single-flight
    download (gateway/mirror/fetch.py) while that download is stored; a download that
    fails before the response started is an error, after it a response cut short. A
    download joined after it was stored and its bytes released is read from the cluster."""
    fetch.acquire()
    try:
        recipe = fetch.stored()
        if recipe is not None:
            return await _serve(request, ctx, name, digest, recipe)
        try:
            size = await asyncio.shield(fetch.headers)
        except UpstreamNotFound:
            raise BlobUnknown(detail={"digest": digest}) from None
        except UpstreamFailed as exc:
            raise Unavailable(
                "the upstream registry cannot send this blob now",
                detail={"digest": digest, "upstream": str(exc)},
            ) from None
        response, start, end = _response(request, digest, size)
        await response.prepare(request)
        if request.method == "HEAD" or (end is not None and end <= start):
            await response.write_eof()
            return response
        return await _send(request, response, digest, fetch.stream(start, end))
    finally:
        fetch.release()


async def delete_blob(request: web.Request) -> web.StreamResponse:
    """DELETE a blob's link from a repository: 202; 405 UNSUPPORTED when deletes are off."""
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    if not ctx.cfg.gateway.delete_enabled:
        raise Unsupported("deletes are disabled")
    refuse_protected_delete(ctx.cfg.lifecycle.delete_protected, name)
    digest = request.match_info["digest"]
    parse_digest(digest)
    await ctx.meta.blob_unlink(name, digest, blob_actor(request))
    request.app[BLOB_RECORDS].discard(name, digest)
    return web.Response(status=202)
