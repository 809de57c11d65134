"""Blob upload handlers: POST/PATCH/PUT/GET/DELETE under /v2/<name>/blobs/uploads/.

Every upload request of the distribution-spec, and edges 4-8 of docs/protocol.md, live
here. Choices:

- Upload ids are signed tokens (`gateway.upload_ids`): POST costs no Raft command, any
  gateway validates an id, and `Location` carries no query parameters of ours (unknown
  ones the client adds are ignored). The Raft state learns about an upload at its first
  non-empty PATCH (`upload_append`, a CAS on the offset plus a request id, so a retried
  command is idempotent).
- A 202 after PATCH means durable: the body is cut into chunks (`gateway.chunking`), the
  tail becoming a short chunk, every chunk is on W nodes, and `upload_append` committed
  before the answer. A client that disconnects mid-PATCH commits nothing: the session
  stays at its previous size and the chunks already written are garbage for GC.
- The running sha256 lives in the gateway's `HashCache` (`ctx.upload_hashes`); a
  PATCH/PUT that finds none at the right offset rebuilds it from the stored chunks. A PUT
  asking for sha512 after earlier PATCHes re-reads the stored bytes to hash them (rare); a
  monolithic upload (POST ?digest= or a PUT on a session without PATCHes) hashes sha512
  while streaming.
- A PUT whose digest does not match answers 400 DIGEST_INVALID, commits nothing, and
  leaves the session usable at its previous size (unlike Distribution, which cancels
  it): the client may retry the PUT; an abandoned session expires anyway.
- `gateway.max_blob_size` (0 = no limit) rejects a body that would grow a blob past it
  with 400 SIZE_INVALID.
- A mount that is impossible (unknown or invalid `from`, blob absent there, bad digest)
  falls back to a normal 202 session, never an error.
- The first recipe recorded for a digest is never replaced: a commit whose chunk list
  differs (another client's PATCH sizes cut other chunks) is refused by the node
  (`RecipeConflict`). This gateway then verifies the recorded recipe, reading it back
  and hashing it against the digest: when it matches, the blob is linked with the
  recorded recipe (the new chunks are garbage for GC); when it does not (a squatted
  digest), the push fails with 500 and `upload.recipe_conflict_unverified` is logged
  for the operator, and nothing of the push is linked (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from typing import Any

from aiohttp import ClientPayloadError, http_exceptions, web

from cargohold.cluster_auth import upload_id_key
from cargohold.concurrency import hash_off_loop
from cargohold.digests import new_hasher, parse_digest
from cargohold.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    MetadataStorageFull,
    NameInvalid,
    RangeInvalid,
    RecipeConflict,
    RegistryError,
    RequestTimeout,
    SizeInvalid,
    Unavailable,
)
from cargohold.log import log_event
from cargohold.metadata_api import BlobCommit, Recipe, UploadAppend
from cargohold.names import validate_name
from gateway.auth.middleware import MOUNT_ALLOWED
from gateway.body import BodyTimeout, BudgetedBody, budget
from gateway.chunking import ingest
from gateway.context import GatewayContext, context
from gateway.hash_cache import rebuild
from gateway.upload_ids import UploadId, new_upload_id, parse_upload_id

logger = logging.getLogger("cargohold.gateway.uploads")

# Offsets of at most 18 digits (int() refuses 4300+, and no blob is that large): a longer
# number is a malformed header (400), never a 500.
_CONTENT_RANGE_RE = re.compile(
    r"(?:bytes[ =])?([0-9]{1,18})-([0-9]{1,18})(?:/(?:[0-9]{1,18}|\*))?", re.ASCII
)
_SIZE_IN_MESSAGE_RE = re.compile(r"size=(\d+)")

# What reading a body raises when the client goes away (ConnectionResetError) or sends a
# broken body (aiohttp's payload/transfer-encoding errors). With handler cancellation
# on (aiohttp's TestServer) the handler is cancelled instead; both paths commit nothing.
_BODY_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncio.IncompleteReadError,
    http_exceptions.HttpProcessingError,
    ClientPayloadError,
)


class ClientGone(BlobUploadInvalid):
    """The request body ended early (client disconnected or broke the encoding)."""

    default_message = "request body incomplete"


# -- headers --------------------------------------------------------------------------
def upload_location(name: str, upload: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload}"


def range_value(size: int) -> str:
    """Upload `Range`: inclusive, no `bytes=`; `0-0` for an empty session."""
    return f"0-{size - 1}" if size > 0 else "0-0"


def session_headers(name: str, upload: str, size: int) -> dict[str, str]:
    return {
        "Location": upload_location(name, upload),
        "Range": range_value(size),
        "Docker-Upload-UUID": upload,
    }


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
    )


def _accepted(name: str, upload: str, size: int, status: int = 202) -> web.Response:
    return web.Response(status=status, headers=session_headers(name, upload, size))


# -- session look-up ------------------------------------------------------------------
def _ids(request: web.Request) -> tuple[GatewayContext, str, UploadId]:
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    upload = parse_upload_id(
        upload_id_key(ctx.cfg),
        name,
        request.match_info["upload"],
        ctx.cfg.gateway.upload_expiry_seconds,
    )
    return ctx, name, upload


async def _session(ctx: GatewayContext, upload: UploadId) -> tuple[int, list[list[Any]]]:
    """(size, chunks) the cluster holds for an upload; BlobUploadUnknown when closed."""
    state = await ctx.meta.upload_get(upload.value)
    if state.state == "new":
        return 0, []
    if state.repo not in (None, upload.repo):
        raise BlobUploadUnknown(detail={"upload": upload.value})
    return state.size, state.chunks


def _content_range(request: web.Request, name: str, upload: str, size: int) -> int | None:
    """Expected body length from `Content-Range` (None when absent); 416 when misplaced."""
    header = request.headers.get("Content-Range")
    if not header:
        return None
    match = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if not match:
        raise BlobUploadInvalid("malformed Content-Range", detail={"Content-Range": header[:256]})
    start, end = int(match.group(1)), int(match.group(2))
    if start != size or end < start:
        raise RangeInvalid(
            detail={"Content-Range": header, "size": size},
            headers=session_headers(name, upload, size),
        )
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise SizeInvalid(
            detail={"Content-Range": header, "Content-Length": request.content_length}
        )
    return length


def _limit(ctx: GatewayContext, size: int) -> int | None:
    limit = ctx.cfg.gateway.max_blob_size
    return None if limit <= 0 else max(0, limit - size)


async def _running_hash(
    ctx: GatewayContext, upload: str, size: int, chunks: list[list[Any]], algorithm: str = "sha256"
) -> Any:
    if algorithm == "sha256":
        cached = ctx.upload_hashes.take(upload, size)
        if cached is not None:
            return cached
    if size == 0:
        return new_hasher(algorithm)
    log_event(logger, "upload.hash_rebuild", upload=upload, size=size, algorithm=algorithm)
    return await rebuild(ctx.cluster, chunks, algorithm)


async def _ingest(
    ctx: GatewayContext,
    request: web.Request,
    hasher: Any,
    size: int,
    resume: dict[str, str] | None = None,
) -> tuple[list[list[Any]], int]:
    """Store the request body as chunks under the body budget (gateway/body.py).

    A body idle for `gateway.body_idle_timeout_seconds` is 408 with `resume` (the session's
    Location/Range at its last acknowledged size) as headers: nothing of it is committed.
    """
    body = BudgetedBody(
        request.content,
        budget(request),
        ctx.cfg.cluster.chunk_size,
        ctx.cfg.gateway.body_idle_timeout_seconds,
        request.content_length,
        ctx.cfg.gateway.body_read_bytes,
    )
    try:
        return await ingest(
            ctx.cluster,
            body,
            hasher,
            ctx.cfg.cluster.chunk_size,
            ctx.cfg.gateway.upload_writes_in_flight,
            _limit(ctx, size),
            stored=body.chunk_stored,
        )
    except BodyTimeout:
        log_event(logger, "upload.body_idle", logging.INFO, path=request.path, size=size)
        raise RequestTimeout(detail={"size": size}, headers=resume) from None
    except _BODY_ERRORS as exc:
        log_event(
            logger,
            "upload.body_incomplete",
            logging.DEBUG,
            path=request.path,
            error=type(exc).__name__,
        )
        # aiohttp's StreamReader keeps this exception, whose traceback holds our frames
        # and the body's buffers: a reference cycle only the cyclic collector would free.
        exc.__traceback__ = None
        raise ClientGone() from None
    finally:
        body.close()


def _now() -> float:
    return time.time()


# -- handlers ---------------------------------------------------------------------------
async def start_upload(request: web.Request) -> web.StreamResponse:
    """POST /v2/<name>/blobs/uploads/ (plain, ?digest= monolithic, ?mount=&from=)."""
    ctx = context(request)
    name = validate_name(request.match_info["name"])
    query = request.query
    mount, source = query.get("mount"), query.get("from")
    # No pull right on `from` (gateway/auth/middleware.py): a plain upload, no existence leak.
    if not request.get(MOUNT_ALLOWED, True):
        mount = None
    if mount and source and await _try_mount(ctx, name, mount, source):
        return _created(name, mount)
    if "digest" in query:
        return await _monolithic(ctx, request, name, query["digest"])
    upload = new_upload_id(upload_id_key(ctx.cfg), name)
    response = _accepted(name, upload.value, 0)
    # distribution-spec v1.1: chunked clients (regctl) send PATCHes of at least this size,
    # so stored chunks stay full-size (fewer chunks per recipe, better deduplication).
    response.headers["OCI-Chunk-Min-Length"] = str(ctx.cfg.cluster.chunk_size)
    return response


async def _try_mount(ctx: GatewayContext, name: str, digest: str, source: str) -> bool:
    try:
        parse_digest(digest)
        validate_name(source)
        mounted = await ctx.meta.blob_mount(name, digest, source)
    except (DigestInvalid, NameInvalid):
        return False
    except (Unavailable, MetadataStorageFull):
        raise  # not a refusal of the mount: the client must hear it
    except RegistryError as exc:
        log_event(logger, "upload.mount_refused", logging.DEBUG, repo=name, error=exc.message)
        return False
    return mounted


async def _commit(
    ctx: GatewayContext, name: str, digest: str, recipe: Recipe, upload: str | None
) -> None:
    """`blob_commit`, verifying the recorded recipe when the node reports a conflict."""
    try:
        await ctx.meta.blob_commit(BlobCommit(name, digest, recipe, upload, _now()))
        return
    except RecipeConflict:
        recorded = await ctx.meta.blob_recipe(digest)
    if not await _recipe_matches(ctx, recorded, digest):
        log_event(logger, "upload.recipe_conflict_unverified", logging.ERROR, digest=digest)
        raise RegistryError(
            "this digest is recorded with content that does not match it",
            detail={"digest": digest},
        )
    await ctx.meta.blob_commit(BlobCommit(name, digest, recorded, upload, _now()))


async def _recipe_matches(ctx: GatewayContext, recipe: Recipe, digest: str) -> bool:
    """Whether the stored bytes of `recipe` hash to `digest` (read through the verified
    chunk path, hashed off the event loop)."""
    algorithm, _ = parse_digest(digest)
    hasher = new_hasher(algorithm)
    async with contextlib.aclosing(ctx.cluster.read_range(dict(recipe), 0, recipe["size"])) as it:
        async for piece in it:
            await hash_off_loop(len(piece), hasher.update, piece)
    return f"{algorithm}:{hasher.hexdigest()}" == digest


async def _monolithic(
    ctx: GatewayContext, request: web.Request, name: str, digest: str
) -> web.StreamResponse:
    algorithm, _ = parse_digest(digest)
    hasher = new_hasher(algorithm)
    chunks, total = await _ingest(ctx, request, hasher, 0)
    if f"{algorithm}:{hasher.hexdigest()}" != digest:
        raise DigestInvalid(detail={"digest": digest})
    await _commit(ctx, name, digest, {"size": total, "chunks": chunks}, None)
    return _created(name, digest)


async def patch_upload(request: web.Request) -> web.StreamResponse:
    """PATCH an upload: streamed (no Content-Range/Length) or one chunk with Content-Range."""
    ctx, name, upload = _ids(request)
    size, chunks = await _session(ctx, upload)
    expected = _content_range(request, name, upload.value, size)
    hasher = await _running_hash(ctx, upload.value, size, chunks)
    resume = session_headers(name, upload.value, size)
    new_chunks, added = await _ingest(ctx, request, hasher, size, resume)
    if expected is not None and added != expected:
        raise SizeInvalid(detail={"expected": expected, "received": added})
    if added == 0:
        ctx.upload_hashes.put(upload.value, size, hasher)
        return _accepted(name, upload.value, size)
    try:
        new_size = await ctx.meta.upload_append(
            UploadAppend(
                upload=upload.value,
                repo=name,
                offset=size,
                chunks=new_chunks,
                request=secrets.token_hex(12),
                now=_now(),
            )
        )
    except RangeInvalid as exc:
        # Another request appended first: tell the client where the session really is.
        match = _SIZE_IN_MESSAGE_RE.search(exc.message)
        current = int(match.group(1)) if match else size
        raise RangeInvalid(
            detail={"size": current}, headers=session_headers(name, upload.value, current)
        ) from None
    ctx.upload_hashes.put(upload.value, new_size, hasher)
    return _accepted(name, upload.value, new_size)


async def put_upload(request: web.Request) -> web.StreamResponse:
    """PUT ?digest= completes an upload, with an optional last piece of body."""
    ctx, name, upload = _ids(request)
    digest = request.query.get("digest", "")
    algorithm, _ = parse_digest(digest)
    size, chunks = await _session(ctx, upload)
    expected = _content_range(request, name, upload.value, size)
    base = await _running_hash(ctx, upload.value, size, chunks, algorithm)
    # Hash the last piece into a copy: on a digest mismatch the session stays usable.
    hasher = base.copy()
    resume = session_headers(name, upload.value, size)
    new_chunks, added = await _ingest(ctx, request, hasher, size, resume)
    if expected is not None and added != expected:
        raise SizeInvalid(detail={"expected": expected, "received": added})
    if f"{algorithm}:{hasher.hexdigest()}" != digest:
        if algorithm == "sha256":
            ctx.upload_hashes.put(upload.value, size, base)
        raise DigestInvalid(detail={"digest": digest})
    await _commit(
        ctx, name, digest, {"size": size + added, "chunks": chunks + new_chunks}, upload.value
    )
    ctx.upload_hashes.drop(upload.value)
    return _created(name, digest)


async def get_upload_status(request: web.Request) -> web.StreamResponse:
    """GET an upload: 204 with its Range."""
    ctx, name, upload = _ids(request)
    size, _ = await _session(ctx, upload)
    return _accepted(name, upload.value, size, status=204)


async def cancel_upload(request: web.Request) -> web.StreamResponse:
    """DELETE an upload: 204; later requests on it are 404 BLOB_UPLOAD_UNKNOWN."""
    ctx, _, upload = _ids(request)
    # Cancelling twice is a no-op in the state machine; the client must see 404 instead.
    await _session(ctx, upload)
    await ctx.meta.upload_cancel(upload.value, _now())
    ctx.upload_hashes.drop(upload.value)
    return web.Response(status=204)
