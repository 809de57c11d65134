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
  PATCH/PUT that finds none at the right offset rebuilds it from the stored chunks.
- A PATCH/PUT on a session whose entry (size, running sha256, chunk list) this gateway
  holds — it answered the POST or the last PATCH — skips the linearizable `upload_get`
  read (one Raft log entry each: two of the four a three-request push cost). The entry
  can only be stale when another gateway appended to the session since; the Raft state
  catches that at the write: `upload_append` is a CAS on the offset (a streamed PATCH
  then appends at the real size and drops its running hash, a Content-Range one gets
  the 416 it would have had), and `blob_commit` refuses a recipe that does not extend
  what the session appended (the PUT then redoes the check from the stored bytes, as
  without the entry). A commit never links a recipe whose bytes this gateway did not
  hash to the digest, whichever path it took. A PUT
  asking for sha512 after earlier PATCHes re-reads the stored bytes to hash them (rare); a
  monolithic upload (POST ?digest= or a PUT on a session without PATCHes) hashes sha512
  while streaming.
- A PUT whose digest does not match answers 400 DIGEST_INVALID, commits nothing, and
  leaves the session usable at its previous size (unlike Distribution, which cancels
  it): the client may retry the PUT; an abandoned session expires anyway.
- `gateway.max_blob_size` (0 = no limit) rejects a body that would grow a blob past it
  with 400 SIZE_INVALID.
- Namespace quotas (gateway/quotas.py): a body whose declared length (Content-Length or
  Content-Range) cannot fit in the room its namespace has left is refused with 403 DENIED
  before a byte of it is read; a streamed one as soon as it crosses; the state refuses
  the `upload_append` that crosses, and every commit or mount past the quota, exactly.
  A mount refused by a quota is an error, not a fallback to an upload.
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
import functools
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
    QuotaExceeded,
    RangeInvalid,
    RecipeConflict,
    RegistryError,
    RequestTimeout,
    SizeInvalid,
    Unavailable,
)
from cargohold.log import log_event
from cargohold.metadata_api import Actor, BlobCommit, Recipe, UploadAppend
from cargohold.names import validate_name
from gateway.activity import blob_actor
from gateway.auth.middleware import MOUNT_ALLOWED
from gateway.body import BodyTimeout, BudgetedBody, budget
from gateway.chunking import ingest
from gateway.context import GatewayContext, context
from gateway.hash_cache import rebuild
from gateway.image_info import note_pushed_config
from gateway.quotas import Room
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


# A streamed body (no declared length) starting with less room than this many chunks left
# in its namespace makes the gateway read the quotas again first.
_TIGHT_CHUNKS = 64


def _limit(ctx: GatewayContext, size: int) -> int | None:
    limit = ctx.cfg.gateway.max_blob_size
    return None if limit <= 0 else max(0, limit - size)


async def _quota_room(
    ctx: GatewayContext, request: web.Request, name: str, size: int, expected: int | None
) -> Room | None:
    """The quota a body for `name` must fit in (None: none); refuses at once, before the
    body is read, when its declared length does not fit next to the session's `size`.
    The quotas are read again before a refusal, and before a body of unknown length starts
    with less than `_TIGHT_CHUNKS` chunks of room (gateway/quotas.py)."""
    room = await ctx.quotas.room(name)
    if room is None:
        return None
    declared = expected if expected is not None else request.content_length
    tight = room.left - size < _TIGHT_CHUNKS * ctx.cfg.cluster.chunk_size
    if (declared is not None and size + declared > room.left) or (declared is None and tight):
        room = await ctx.quotas.room(name, fresh=True)
        if room is None:
            return None
    if declared is not None and size + declared > room.left:
        raise room.refuse(size + declared)
    return room


def _declared_start(request: web.Request) -> int | None:
    """The start offset a `Content-Range` header declares (None: absent or malformed)."""
    match = _CONTENT_RANGE_RE.fullmatch(request.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


async def _open_session(
    ctx: GatewayContext, request: web.Request, upload: UploadId, algorithm: str = "sha256"
) -> tuple[int, list[list[Any]], Any, bool]:
    """(size, chunks, running hash, from_cache) of a session: from this gateway's entry
    when it holds one that the request's Content-Range agrees with (no Raft read), else
    from the cluster (`upload_get`). See the module docstring for why a stale entry is
    caught by the state machine."""
    if algorithm == "sha256":
        known = ctx.upload_hashes.take_session(upload.value)
        if known is not None and known.chunks is not None:
            if _declared_start(request) in (None, known.offset):
                return known.offset, known.chunks, known.hasher, True
            # The client knows of bytes this gateway did not see: ask the cluster.
            ctx.upload_hashes.put(upload.value, known.offset, known.hasher, known.chunks)
    size, chunks = await _session(ctx, upload)
    return size, chunks, await _running_hash(ctx, upload.value, size, chunks, algorithm), False


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
    quota: Room | None = None,
) -> tuple[list[list[Any]], int]:
    """Store the request body as chunks under the body budget (gateway/body.py).

    A body idle for `gateway.body_idle_timeout_seconds` is 408 with `resume` (the session's
    Location/Range at its last acknowledged size) as headers: nothing of it is committed.
    A body crossing the room `quota` leaves is refused as it crosses (nothing committed).
    """
    limit = _limit(ctx, size)
    quota_limit = None if quota is None else max(0, quota.left - size)
    by_quota = quota_limit is not None and (limit is None or quota_limit < limit)
    if by_quota:
        limit = quota_limit
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
            limit,
            stored=body.chunk_stored,
            # A body that starts a sha256 blob: its first chunk's id is the running digest.
            fresh=size == 0 and getattr(hasher, "name", "") == "sha256",
            first=functools.partial(note_pushed_config, ctx),
        )
    except SizeInvalid:
        if quota is not None and by_quota:
            raise quota.refuse(size + (limit or 0) + 1) from None
        raise
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
    # This gateway knows the new session (empty): its first PATCH/PUT here needs no read.
    ctx.upload_hashes.put(upload.value, 0, new_hasher("sha256"), [])
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
    except (Unavailable, MetadataStorageFull, QuotaExceeded):
        raise  # not a refusal of the mount: the client must hear it
    except RegistryError as exc:
        log_event(logger, "upload.mount_refused", logging.DEBUG, repo=name, error=exc.message)
        return False
    return mounted


async def commit_blob(
    ctx: GatewayContext,
    name: str,
    digest: str,
    recipe: Recipe,
    upload: str | None,
    audit: Actor | None = None,
) -> None:
    """`blob_commit`, verifying the recorded recipe when the node reports a conflict (also
    the pull-through cache's, gateway/mirror/fetch.py, which records no push: `audit`)."""
    try:
        await ctx.meta.blob_commit(BlobCommit(name, digest, recipe, upload, _now(), audit))
        return
    except RecipeConflict:
        recorded = await ctx.meta.blob_recipe(digest)
    if not await _recipe_matches(ctx, recorded, digest):
        log_event(logger, "upload.recipe_conflict_unverified", logging.ERROR, digest=digest)
        raise RegistryError(
            "this digest is recorded with content that does not match it",
            detail={"digest": digest},
        )
    await ctx.meta.blob_commit(BlobCommit(name, digest, recorded, upload, _now(), audit))


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
    quota = await _quota_room(ctx, request, name, 0, None)
    chunks, total = await _ingest(ctx, request, hasher, 0, quota=quota)
    if f"{algorithm}:{hasher.hexdigest()}" != digest:
        raise DigestInvalid(detail={"digest": digest})
    await commit_blob(
        ctx, name, digest, {"size": total, "chunks": chunks}, None, blob_actor(request)
    )
    return _created(name, digest)


async def patch_upload(request: web.Request) -> web.StreamResponse:
    """PATCH an upload: streamed (no Content-Range/Length) or one chunk with Content-Range."""
    ctx, name, upload = _ids(request)
    size, chunks, hasher, cached = await _open_session(ctx, request, upload)
    expected = _content_range(request, name, upload.value, size)
    quota = await _quota_room(ctx, request, name, size, expected)
    resume = session_headers(name, upload.value, size)
    new_chunks, added = await _ingest(ctx, request, hasher, size, resume, quota)
    if expected is not None and added != expected:
        raise SizeInvalid(detail={"expected": expected, "received": added})
    if added == 0:
        ctx.upload_hashes.put(upload.value, size, hasher, chunks)
        return _accepted(name, upload.value, size)
    try:
        new_size = await _append(ctx, upload, name, size, new_chunks)
    except RangeInvalid as exc:
        current = exc.detail["size"]
        if not (cached and expected is None and current > size):
            raise
        # This gateway's entry was stale (another gateway appended): a streamed body
        # goes at the real end, as it would have without the entry. The running hash
        # covers the stale prefix only, so it is not kept (the PUT rebuilds it).
        log_event(logger, "upload.session_stale", logging.DEBUG, upload=upload.value, size=current)
        limit = _limit(ctx, current)
        if limit is not None and added > limit:
            raise SizeInvalid("blob exceeds the size limit", detail={"limit": limit}) from None
        new_size = await _append(ctx, upload, name, current, new_chunks)
        return _accepted(name, upload.value, new_size)
    ctx.upload_hashes.put(upload.value, new_size, hasher, chunks + new_chunks)
    return _accepted(name, upload.value, new_size)


async def _append(
    ctx: GatewayContext, upload: UploadId, name: str, offset: int, chunks: list[list[Any]]
) -> int:
    """`upload_append` of `chunks` at `offset`; the session's new size. RangeInvalid (416,
    with the session's real size in `detail` and headers) when another request appended
    first."""
    try:
        return await ctx.meta.upload_append(
            UploadAppend(
                upload=upload.value,
                repo=name,
                offset=offset,
                chunks=chunks,
                request=secrets.token_hex(12),
                now=_now(),
            )
        )
    except RangeInvalid as exc:
        match = _SIZE_IN_MESSAGE_RE.search(exc.message)
        current = int(match.group(1)) if match else offset
        raise RangeInvalid(
            detail={"size": current}, headers=session_headers(name, upload.value, current)
        ) from None


async def put_upload(request: web.Request) -> web.StreamResponse:
    """PUT ?digest= completes an upload, with an optional last piece of body."""
    ctx, name, upload = _ids(request)
    digest = request.query.get("digest", "")
    algorithm, _ = parse_digest(digest)
    size, chunks, base, cached = await _open_session(ctx, request, upload, algorithm)
    expected = _content_range(request, name, upload.value, size)
    quota = await _quota_room(ctx, request, name, size, expected)
    # Hash the last piece into a copy: on a digest mismatch the session stays usable.
    hasher = base.copy()
    resume = session_headers(name, upload.value, size)
    new_chunks, added = await _ingest(ctx, request, hasher, size, resume, quota)
    if expected is not None and added != expected:
        raise SizeInvalid(detail={"expected": expected, "received": added})
    recipe: Recipe = {"size": size + added, "chunks": chunks + new_chunks}
    try:
        if f"{algorithm}:{hasher.hexdigest()}" != digest:
            raise DigestInvalid(detail={"digest": digest})
        await commit_blob(ctx, name, digest, recipe, upload.value, blob_actor(request))
    except (DigestInvalid, SizeInvalid):
        if cached and await _settle_stale(ctx, request, name, upload, digest, size, new_chunks):
            return _created(name, digest)
        if algorithm == "sha256":
            ctx.upload_hashes.put(upload.value, size, base, chunks)
        raise
    ctx.upload_hashes.drop(upload.value)
    return _created(name, digest)


async def _settle_stale(
    ctx: GatewayContext,
    request: web.Request,
    name: str,
    upload: UploadId,
    digest: str,
    size: int,
    new_chunks: list[list[Any]],
) -> bool:
    """A PUT that trusted this gateway's entry failed its digest or recipe check: when the
    cluster holds more of the session than the entry knew (another gateway appended),
    check and commit the whole session from the stored bytes, as without the entry.
    False when the entry was current (the failure stands)."""
    current, chunks = await _session(ctx, upload)
    if current == size:
        return False
    ctx.upload_hashes.drop(upload.value)
    if _declared_start(request) is not None:
        # The client placed its body at a size the session no longer has: 416, as a read
        # of the session before the body would have answered.
        raise RangeInvalid(
            detail={"size": current}, headers=session_headers(name, upload.value, current)
        )
    log_event(logger, "upload.session_stale", logging.DEBUG, upload=upload.value, size=current)
    algorithm, _ = parse_digest(digest)
    whole = chunks + new_chunks
    hasher = await rebuild(ctx.cluster, whole, algorithm)
    if f"{algorithm}:{hasher.hexdigest()}" != digest:
        raise DigestInvalid(detail={"digest": digest})
    total = sum(int(c[1]) for c in whole)
    await commit_blob(
        ctx, name, digest, {"size": total, "chunks": whole}, upload.value, blob_actor(request)
    )
    return True


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
