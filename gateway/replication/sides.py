"""The two ends of a replication: this cluster (`LocalRegistry`) and a remote registry
(`RemoteRegistry`, over the pull-through cache's upstream client: Basic and the Docker
token protocol), behind one interface the copier (copy.py) uses in both directions.

Every manifest read is verified against its digest here; a blob's bytes are verified by
the side that stores them (this cluster hashes them before the commit; a remote registry
checks the `?digest=` of the upload's last request), so nothing that does not match its
digest is ever committed at the target. A remote's referrers are asked as the
pull-through cache asks them (gateway/mirror/referrers.py). Deletes go to a remote only
(`RemoteRegistry.delete_manifest`: push rules' `replicate_deletes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from cargohold.digests import digest_of, new_hasher, parse_digest
from cargohold.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
)
from cargohold.lifecycle_rules import rules_for_repo
from cargohold.metadata_api import Recipe
from gateway.chunking import ingest
from gateway.context import GatewayContext
from gateway.image_info import manifest_info
from gateway.manifest_format import parse_manifest, put_command
from gateway.mirror.referrers import fetch_referrers
from gateway.mirror.upstream import MANIFEST_ACCEPT, Upstream, UpstreamFailed, UpstreamNotFound
from gateway.uploads import commit_blob

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
_PAGE = 1000
_PIECE = 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    """A manifest's bytes as read from a side (verified against `digest`)."""

    digest: str
    body: bytes
    media_type: str


BlobStream = AsyncIterator[bytes]


class Registry(Protocol):
    """One end of a replication; see the module docstring."""

    async def repositories(self, limit: int) -> list[str] | None: ...
    async def tags(self, repo: str, limit: int) -> list[str]: ...
    async def manifest(self, repo: str, reference: str) -> Manifest | None: ...
    async def has_manifest(self, repo: str, digest: str) -> bool: ...
    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> None: ...
    async def has_blob(self, repo: str, digest: str) -> bool: ...
    async def mount(self, repo: str, digest: str, source: str) -> bool: ...
    def blob(
        self, repo: str, digest: str
    ) -> AbstractAsyncContextManager[tuple[int | None, BlobStream]]: ...
    async def put_blob(self, repo: str, digest: str, size: int | None, body: BlobStream) -> int: ...
    async def referrers(self, repo: str, digest: str) -> list[dict[str, Any]] | None: ...
    async def has_referrers_api(self, repo: str, digest: str) -> bool: ...


class BlobMismatch(Exception):
    """A blob's bytes do not hash to its digest (or are not as many as announced)."""


class DeleteRefused(UpstreamFailed):
    """The remote refuses a delete it will refuse again (deletes disabled, a tag delete
    by name it cannot do): a failure that blames the event, like any 4xx."""


def _verified(body: bytes, digest: str) -> None:
    algorithm, _ = parse_digest(digest)
    if digest_of(body, algorithm) != digest:
        raise DigestInvalid("a manifest does not match its digest", detail={"digest": digest})


def _is_digest(reference: str) -> bool:
    return ":" in reference


class LocalRegistry:
    """This cluster: the replicated metadata and the chunk stores, as the gateway's own
    handlers use them. A manifest stored here obeys the immutable tag rules
    (`lifecycle.immutable_tags`), is indexed for search and queued for the SBOM scanner
    like a push; it writes no activity record (a copy is not a client's push: no
    webhook, no on_push rule sees it, so two registries replicating to each other do
    not loop)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.meta = ctx.meta
        self.cluster = ctx.cluster

    async def repositories(self, limit: int) -> list[str] | None:
        out: list[str] = []
        last: str | None = None
        while len(out) < limit:
            page = await self.meta.catalog(min(_PAGE, limit - len(out)), last)
            out.extend(page.items)
            if not page.more or not page.items:
                break
            last = page.items[-1]
        return out

    async def tags(self, repo: str, limit: int) -> list[str]:
        out: list[str] = []
        last: str | None = None
        while len(out) < limit:
            try:
                page = await self.meta.tags_list(repo, min(_PAGE, limit - len(out)), last)
            except NameUnknown:
                return []
            out.extend(page.items)
            if not page.more or not page.items:
                break
            last = page.items[-1]
        return out

    async def manifest(self, repo: str, reference: str) -> Manifest | None:
        try:
            if _is_digest(reference):
                info = await self.meta.manifest_get(repo, reference)
            else:
                info = await self.meta.tag_get(repo, reference)
        except (ManifestUnknown, NameUnknown):
            return None
        body = await self.cluster.read_all(dict(info.recipe))
        _verified(body, info.digest)
        return Manifest(info.digest, body, info.media_type)

    async def has_manifest(self, repo: str, digest: str) -> bool:
        try:
            await self.meta.manifest_get(repo, digest)
        except (ManifestUnknown, NameUnknown):
            return False
        return True

    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> None:
        parsed = parse_manifest(
            manifest.body, manifest.media_type or None, self.cfg.gateway.max_manifest_depth
        )
        recipe = await self.cluster.store_bytes(manifest.body)
        media_type = manifest.media_type or parsed.media_type
        tag = None if _is_digest(reference) else reference
        await self.meta.manifest_put(
            put_command(
                repo,
                manifest.digest,
                media_type,
                recipe,
                parsed,
                tag,
                immutable=rules_for_repo(self.cfg.lifecycle.immutable_tags, repo) if tag else (),
                info=await manifest_info(self.ctx, repo, manifest.body, media_type),
                scan=True if self.cfg.scanner.enabled and parsed.scannable else None,
            )
        )

    async def has_blob(self, repo: str, digest: str) -> bool:
        try:
            await self.meta.blob_get(repo, digest)
        except (BlobUnknown, NameUnknown):
            return False
        return True

    async def mount(self, repo: str, digest: str, source: str) -> bool:
        """Link a blob this replication stored in `source` (never one it did not: a
        digest a remote merely names must not expose a private blob)."""
        return await self.meta.blob_mount(repo, digest, source)

    @asynccontextmanager
    async def blob(self, repo: str, digest: str) -> AsyncIterator[tuple[int | None, BlobStream]]:
        try:
            recipe: dict[str, Any] = dict(await self.meta.blob_get(repo, digest))
        except NameUnknown:
            raise BlobUnknown(detail={"digest": digest}) from None
        size = int(recipe["size"])
        pieces = self.cluster.read_range(recipe, 0, size)

        async def stream() -> BlobStream:
            async for piece in pieces:
                yield bytes(piece)

        async with contextlib.aclosing(pieces):
            yield size, stream()

    async def put_blob(self, repo: str, digest: str, size: int | None, body: BlobStream) -> int:
        algorithm, _ = parse_digest(digest)
        hasher = new_hasher(algorithm)
        chunks, total = await ingest(
            self.cluster,
            _Body(body),
            hasher,
            self.cfg.cluster.chunk_size,
            self.cfg.gateway.upload_writes_in_flight,
            limit=self.cfg.gateway.max_blob_size or None,
        )
        got = f"{algorithm}:{hasher.hexdigest()}"
        if got != digest or (size is not None and total != size):
            raise BlobMismatch(f"{digest}: the source sent {total} bytes hashing to {got}")
        await commit_blob(self.ctx, repo, digest, Recipe(size=total, chunks=chunks), None)
        return total

    async def referrers(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        try:
            return list(await self.meta.referrers(repo, digest, None))
        except NameUnknown:
            return []

    async def has_referrers_api(self, repo: str, digest: str) -> bool:
        return True  # a manifest's subject is indexed as it is stored


class _Body:
    """An async iterator of bytes as `ingest` reads a body."""

    def __init__(self, it: BlobStream) -> None:
        self._it = it

    def iter_any(self) -> BlobStream:
        return self._it


class RemoteRegistry:
    """A remote registry through the upstream client (gateway/mirror/upstream.py)."""

    def __init__(self, upstream: Upstream, upload_chunk_bytes: int, manifest_limit: int) -> None:
        self.up = upstream
        upstream.own_scope = True  # tokens for pull and push, whatever a challenge names
        self.chunk = upload_chunk_bytes
        self.limit = manifest_limit
        self._referrers_api: dict[str, bool] = {}

    async def close(self) -> None:
        await self.up.close()

    @staticmethod
    def _scope(repo: str) -> str:
        # One scope for every request of a repository: a token asked for once does both.
        return f"repository:{repo}:pull,push"

    async def repositories(self, limit: int) -> list[str] | None:
        """The remote's catalog; None when it does not list one."""
        out: list[str] = []
        path = f"/v2/_catalog?{urlencode({'n': min(_PAGE, limit)})}"
        try:
            while len(out) < limit:
                async with self.up.request("GET", path, "registry:catalog:*") as resp:
                    doc = await resp.json(content_type=None)
                    link = resp.headers.get("Link", "")
                names = doc.get("repositories") if isinstance(doc, dict) else None
                out.extend(n for n in names or [] if isinstance(n, str))
                if not link or "<" not in link or not names:
                    break
                path = link[link.index("<") + 1 : link.index(">")]
        except UpstreamFailed as exc:
            if exc.status in (401, 403):  # a catalog this account may not list
                return None
            raise
        except (UpstreamNotFound, aiohttp.ClientError, ValueError):
            return None
        return out[:limit]

    async def tags(self, repo: str, limit: int) -> list[str]:
        out: list[str] = []
        last: str | None = None
        while len(out) < limit:
            try:
                items, more = await self.up.list_tags(repo, min(_PAGE, limit - len(out)), last)
            except UpstreamNotFound:
                return out
            out.extend(items)
            if not more or not items:
                break
            last = items[-1]
        return out[:limit]

    async def manifest(self, repo: str, reference: str) -> Manifest | None:
        path = f"/v2/{repo}/manifests/{reference}"
        try:
            async with self.up.request("GET", path, self._scope(repo), MANIFEST_ACCEPT) as resp:
                body = await resp.content.read(self.limit + 1)
                media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
                named = resp.headers.get("Docker-Content-Digest", "")
        except UpstreamNotFound:
            return None
        if len(body) > self.limit:
            raise DigestInvalid(f"{repo}:{reference}: manifest larger than {self.limit} bytes")
        digest = reference if _is_digest(reference) else (named or digest_of(body, "sha256"))
        _verified(body, digest)
        return Manifest(digest, body, media_type)

    async def has_manifest(self, repo: str, digest: str) -> bool:
        path = f"/v2/{repo}/manifests/{digest}"
        try:
            async with self.up.request("HEAD", path, self._scope(repo), MANIFEST_ACCEPT):
                return True
        except UpstreamNotFound:
            return False

    async def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> None:
        path = f"/v2/{repo}/manifests/{reference}"
        media_type = manifest.media_type or parse_manifest(manifest.body, None).media_type
        headers = {"Content-Type": media_type}
        async with self.up.request(
            "PUT", path, self._scope(repo), headers=headers, data=manifest.body
        ) as resp:
            named = resp.headers.get("Docker-Content-Digest")
        if named and named != manifest.digest:
            raise DigestInvalid(
                f"{repo}:{reference}: the target stored {named}, not {manifest.digest}"
            )

    async def delete_manifest(self, repo: str, reference: str) -> bool:
        """DELETE a tag (by name: the tag only) or a manifest (by digest: with its tags) at
        the remote; False when it had none (404). A refusal it will repeat is
        `DeleteRefused`; other failures are the client's `UpstreamFailed`."""
        path = f"/v2/{repo}/manifests/{reference}"
        # Registries ask a token of the `delete` action for it (Distribution, Harbor, us).
        scope = f"repository:{repo}:delete"
        try:
            async with self.up.request("DELETE", path, scope):
                return True
        except UpstreamNotFound:
            return False
        except UpstreamFailed as exc:
            # Distribution's answers: 405 UNSUPPORTED with `storage.delete.enabled` off, 400
            # DIGEST_INVALID for any tag in 2.x (it deletes by digest only).
            if exc.status == 405:
                why = "the target allows no deletes (405; Distribution: storage.delete.enabled)"
            elif exc.status == 400 and not _is_digest(reference):
                why = "the target deletes no tag by name (400; Distribution 2.x: digests only)"
            else:
                raise
            raise DeleteRefused(f"{why}: {exc}", exc.status) from None

    async def has_blob(self, repo: str, digest: str) -> bool:
        try:
            async with self.up.request("HEAD", f"/v2/{repo}/blobs/{digest}", self._scope(repo)):
                return True
        except UpstreamNotFound:
            return False

    async def mount(self, repo: str, digest: str, source: str) -> bool:
        query = urlencode({"mount": digest, "from": source})
        path = f"/v2/{repo}/blobs/uploads/?{query}"
        async with self.up.request("POST", path, self._scope(repo)) as resp:
            if resp.status == 201:
                return True
            location = resp.headers.get("Location")
        if location:  # the target started an upload instead: not wanted
            with contextlib.suppress(Exception):
                async with self.up.request("DELETE", self._url(location), self._scope(repo)):
                    pass
        return False

    def _url(self, location: str) -> str:
        url = urljoin(self.up.base + "/", location)
        if urlsplit(url).netloc != urlsplit(self.up.base).netloc:
            # Credentials are never sent to another host (an upload elsewhere is unsupported).
            raise DigestInvalid(f"the target's upload location is on another host: {url}")
        return url

    @asynccontextmanager
    async def blob(self, repo: str, digest: str) -> AsyncIterator[tuple[int | None, BlobStream]]:
        try:
            async with self.up.open_blob(repo, digest) as resp:

                async def stream() -> BlobStream:
                    async for data in resp.content.iter_chunked(_PIECE):
                        yield data

                yield resp.content_length, stream()
        except UpstreamNotFound:
            raise BlobUnknown(detail={"digest": digest}) from None

    async def put_blob(self, repo: str, digest: str, size: int | None, body: BlobStream) -> int:
        scope = self._scope(repo)
        async with self.up.request("POST", f"/v2/{repo}/blobs/uploads/", scope) as resp:
            location = self._url(resp.headers["Location"])
        sent = 0
        if size is not None and size <= self.chunk:
            counted = _Counted(body)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            async with self.up.request(
                "PUT",
                _with_digest(location, digest),
                scope,
                headers=headers,
                data=counted.iterate(),
            ):
                pass
            return counted.count
        buffer = bytearray()

        async def send(piece: bytes) -> None:
            nonlocal location, sent
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{sent}-{sent + len(piece) - 1}",
                "Content-Length": str(len(piece)),
            }
            async with self.up.request("PATCH", location, scope, headers=headers, data=piece) as r:
                location = self._url(r.headers.get("Location") or location)
            sent += len(piece)

        async for data in body:
            buffer += data
            while len(buffer) >= self.chunk:
                await send(bytes(buffer[: self.chunk]))
                del buffer[: self.chunk]
        if buffer:
            await send(bytes(buffer))
        async with self.up.request(
            "PUT", _with_digest(location, digest), scope, headers={"Content-Length": "0"}
        ):
            pass
        return sent

    async def referrers(self, repo: str, digest: str) -> list[dict[str, Any]] | None:
        """The referrers API's answer (every page); the referrers tag schema's index where
        the remote has no API (Distribution 2.x), which is remembered per repository."""
        found = await fetch_referrers(
            self.up,
            repo,
            digest,
            self._scope(repo),
            self.limit,
            use_api=self._referrers_api.get(repo, True),
        )
        self._referrers_api[repo] = found.api
        return found.descriptors

    async def has_referrers_api(self, repo: str, digest: str) -> bool:
        if repo not in self._referrers_api:
            await self.referrers(repo, digest)
        return self._referrers_api[repo]


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


class _Counted:
    """A body stream that counts what it sent."""

    def __init__(self, body: BlobStream) -> None:
        self.body = body
        self.count = 0

    async def iterate(self) -> BlobStream:
        async for piece in self.body:
            self.count += len(piece)
            yield piece
