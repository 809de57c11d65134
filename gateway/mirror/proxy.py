"""Proxy namespaces: pulls of `<namespace>/<repo>` answered from an upstream registry and
kept in the cluster (the pull-through cache; docs/mirroring.md).

`Mirror` is one per gateway. The handlers (gateway/manifests.py, gateway/blobs.py) ask it
`route(request, name)`; for a proxied name they serve what is stored like any pull, and
ask it for what is not:

- **Tags** (`resolve`): a tag is asked upstream with one HEAD at most once per
  `mirror.tag_ttl_seconds` in this gateway (concurrent askers share the HEAD); the answer
  is remembered and served meanwhile. An upstream that cannot be reached or refuses
  leaves the last known digest in force (this gateway's memory, else the stored tag),
  however old: documented staleness. An upstream 404 is a 404.
- **Manifests by digest** (`fetch_manifest`): fetched once (concurrent askers share it),
  verified against the digest, parsed like a push, served from memory, and stored in the
  background (`_store`): an image manifest once every blob it references is stored
  (they are fetched through the same single-flight downloads the clients use, so a
  manifest pulled alone still ends up complete), an index at once with the children
  already stored (children are fetched when a client asks for them, by platform), and
  again as more of them are stored, so retention sees them as its children.
- **Blobs** (`join_blob`): single-flight streamed downloads (gateway/mirror/fetch.py).
- **Referrers** (`referrers`): the upstream's answer (its referrers API, else the tag
  schema's index), asked at most once per `mirror.tag_ttl_seconds` like a tag; every
  manifest it lists is fetched and stored in the background (so signatures pull from
  here, and the stored ones answer while the upstream is unavailable).

Content is never linked from another repository of the cluster without the upstream
sending it: a digest an upstream merely names could otherwise expose a private blob.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cargohold.config import Config
from cargohold.digests import digest_of, parse_digest
from cargohold.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    Unavailable,
)
from cargohold.log import log_event
from cargohold.metadata_api import Metadata, Page
from cargohold.periodic import cancel_all_and_wait
from gateway.cluster import ClusterClient
from gateway.manifest_cache import ManifestCache
from gateway.manifest_format import ParsedManifest, parse_manifest, put_command
from gateway.mirror.fetch import BlobFetch, Commit, Fetches
from gateway.mirror.metrics import TAG_CHECKS
from gateway.mirror.referrers import fetch_referrers
from gateway.mirror.upstream import Upstream, UpstreamFailed, UpstreamNotFound

logger = logging.getLogger("cargohold.gateway.mirror")


@dataclass(frozen=True)
class Route:
    """A proxied repository: its name here, its upstream and its name there."""

    name: str
    namespace: str
    upstream: Upstream
    upstream_repo: str


@dataclass
class _Resolved:
    digest: str
    checked: float  # monotonic time of the upstream answer


@dataclass
class _Referrers:
    descriptors: list[dict[str, Any]]
    checked: float  # monotonic time of the upstream answer


@dataclass
class Fetched:
    """A manifest as the upstream sent it (verified against its digest)."""

    digest: str
    body: bytes
    media_type: str
    parsed: ParsedManifest


class Mirror:
    def __init__(self, cfg: Config, cluster: ClusterClient, meta: Metadata, commit: Commit):
        self.cfg = cfg
        self.meta = meta
        self.cluster = cluster
        self.upstreams = {p.namespace: Upstream(p, cfg.mirror) for p in cfg.mirror.proxies}
        self.fetches = Fetches(cfg, cluster, commit)
        self._tags: collections.OrderedDict[tuple[str, str], _Resolved] = collections.OrderedDict()
        self._pending = ManifestCache(cfg.mirror.pending_manifest_bytes)
        self._flights: dict[tuple[str, ...], asyncio.Future[object]] = {}
        self._stores: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._store_tags: dict[tuple[str, str], set[str]] = {}
        # (repo, child digest) -> indexes of `repo` listing it, to store again with it.
        self._parents: dict[tuple[str, str], set[str]] = {}
        self.upstream_heads = 0  # tag HEADs sent upstream (tests, metrics)
        self._media_types: collections.OrderedDict[str, str] = collections.OrderedDict()
        # (repo, tag) -> the digest the stored tag was last made to point at.
        self._retagged: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        # (repo, subject digest) -> the upstream's referrers of it, last answer.
        self._referrers: collections.OrderedDict[tuple[str, str], _Referrers] = (
            collections.OrderedDict()
        )

    async def close(self) -> None:
        await cancel_all_and_wait([*self._stores.values(), *self._background])
        await self.fetches.close()
        for upstream in self.upstreams.values():
            await upstream.close()

    # Which names are proxied.

    def route(self, request: web.Request, name: str) -> Route | None:
        """The route of `name`, or None: not proxied (served like any repository)."""
        first, sep, rest = name.partition("/")
        upstream = self.upstreams.get(first) if sep else None
        if upstream is not None:
            return Route(name, first, upstream, rest)
        ns = request.query.get("ns")
        if ns:  # containerd's mirror requests name the registry they stand in for
            for namespace, candidate in self.upstreams.items():
                if ns in candidate.proxy.hosts:
                    return Route(f"{namespace}/{name}", namespace, candidate, name)
        return None

    def root_route(self, name: str) -> Route | None:
        """Root mirror mode: the route a name not found locally falls back to."""
        root = self.cfg.mirror.root
        if not root or name.partition("/")[0] in self.upstreams:
            return None
        return Route(f"{root}/{name}", root, self.upstreams[root], name)

    # Single flight of any awaitable by key.

    async def _once(self, key: tuple[str, ...], make: Callable[[], Awaitable[object]]) -> object:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(make())
            self._flights[key] = flight

            def forget(_: object, key: tuple[str, ...] = key) -> None:
                self._flights.pop(key, None)

            flight.add_done_callback(forget)
        return await asyncio.shield(flight)

    # Tags.

    async def resolve(self, route: Route, tag: str) -> str:
        """The digest `tag` stands for: asked upstream at most once per TTL."""
        key = (route.name, tag)
        known = self._tags.get(key)
        if known is not None and time.monotonic() - known.checked < self.cfg.mirror.tag_ttl_seconds:
            self._tags.move_to_end(key)
            return known.digest
        digest = await self._once(("tag", *key), lambda: self._ask_tag(route, tag, known))
        assert isinstance(digest, str)
        return digest

    async def _ask_tag(self, route: Route, tag: str, known: _Resolved | None) -> str:
        self.upstream_heads += 1
        try:
            digest = await route.upstream.head_manifest(route.upstream_repo, tag)
            if digest is None or not _valid_digest(digest):
                # The upstream did not name it: GET the manifest and digest it here.
                body, media_type = await route.upstream.get_manifest(
                    route.upstream_repo, tag, self.cfg.gateway.max_manifest_size
                )
                digest = digest_of(body, "sha256")
                self._remember(route, digest, body, media_type)
        except UpstreamNotFound:
            TAG_CHECKS.labels(route.namespace, "not_found").inc()
            self._tags.pop((route.name, tag), None)
            raise ManifestUnknown(detail={"name": route.name, "tag": tag}) from None
        except UpstreamFailed as exc:
            stale = known.digest if known is not None else await self._stored_tag(route, tag)
            _unavailable(route, exc, stale, tag=tag)
            TAG_CHECKS.labels(route.namespace, "stale" if stale else "unavailable").inc()
            if stale is None:
                raise Unavailable(
                    "the upstream registry cannot be reached and this tag is not cached",
                    detail={"name": route.name, "tag": tag, "upstream": str(exc)},
                ) from None
            # Asked again after a TTL, not by every pull while the upstream is down.
            digest = stale
        else:
            TAG_CHECKS.labels(route.namespace, "fresh").inc()
        self._tags[(route.name, tag)] = _Resolved(digest, time.monotonic())
        self._tags.move_to_end((route.name, tag))
        while len(self._tags) > self.cfg.mirror.tag_entries:
            self._tags.popitem(last=False)
        return digest

    async def _stored_tag(self, route: Route, tag: str) -> str | None:
        try:
            return (await self.meta.tag_get(route.name, tag)).digest
        except (ManifestUnknown, NameUnknown):
            return None

    # Manifests.

    def _remember(self, route: Route, digest: str, body: bytes, media_type: str) -> None:
        # Per repository: bytes fetched with one proxy's credentials never answer another's.
        key = f"{route.name}@{digest}"
        self._pending.put(key, body)
        self._media_types[key] = media_type
        self._media_types.move_to_end(key)
        while len(self._media_types) > self.cfg.mirror.tag_entries:
            self._media_types.popitem(last=False)

    async def fetch_manifest(self, route: Route, digest: str, tag: str | None) -> Fetched:
        """A manifest not stored here: fetched (once), verified, and queued for storing."""
        key = f"{route.name}@{digest}"
        body = self._pending.get(key)
        if body is None:
            try:
                got = await self._once(
                    ("manifest", route.name, digest),
                    lambda: route.upstream.get_manifest(
                        route.upstream_repo, digest, self.cfg.gateway.max_manifest_size
                    ),
                )
            except UpstreamNotFound:
                raise ManifestUnknown(detail={"name": route.name, "digest": digest}) from None
            except UpstreamFailed as exc:
                raise Unavailable(
                    "the upstream registry cannot send this manifest now",
                    detail={"name": route.name, "digest": digest, "upstream": str(exc)},
                ) from None
            assert isinstance(got, tuple)
            body, media_type = got
            algorithm, _ = parse_digest(digest)
            if digest_of(body, algorithm) != digest:
                log_event(logger, "mirror.manifest_mismatch", logging.WARNING, digest=digest)
                raise DigestInvalid(
                    "the upstream sent a manifest that does not match its digest",
                    detail={"digest": digest},
                )
            self._remember(route, digest, body, media_type)
        media_type = self._media_types.get(key, "")
        parsed = parse_manifest(body, media_type or None, self.cfg.gateway.max_manifest_depth)
        fetched = Fetched(digest, body, media_type or parsed.media_type, parsed)
        self.store(route, fetched, tag)
        return fetched

    def store(self, route: Route, fetched: Fetched, tag: str | None) -> None:
        """Store `fetched` (and point `tag` at it) in the background, once per digest."""
        key = (route.name, fetched.digest)
        tags = self._store_tags.setdefault(key, set())
        if tag is not None:
            tags.add(tag)
        if key in self._stores:
            return
        self._stores[key] = asyncio.create_task(self._store(route, fetched, key))

    async def _store(self, route: Route, fetched: Fetched, key: tuple[str, str]) -> None:
        try:
            parsed = fetched.parsed
            for child in parsed.manifests:
                self._parents.setdefault((route.name, child), set()).add(fetched.digest)
            present: list[str] = []
            if parsed.manifests:  # an index: its children come when asked for
                present = [c for c in parsed.manifests if await self._has_manifest(route, c)]
            for blob in parsed.blobs:  # an image: every blob first
                await self.ensure_blob(route, blob)
            while True:
                tags = self._store_tags.get(key) or {None}  # type: ignore[arg-type]
                self._store_tags[key] = set()
                for tag in sorted(tags, key=lambda t: t or ""):
                    await self._put(route, fetched, present, tag)
                if not self._store_tags.get(key):
                    break
            # Kept in `_pending` (an LRU): a pull that missed the stored record just
            # before the commit finds it there, not upstream.
            log_event(logger, "mirror.manifest_stored", repo=route.name, digest=fetched.digest)
            for parent in self._parents.pop((route.name, fetched.digest), set()):
                body = self._pending.get(f"{route.name}@{parent}")
                if body is None:
                    body = await self._stored_body(route, parent)
                if body is not None:
                    again = Fetched(
                        parent,
                        body,
                        self._media_types.get(f"{route.name}@{parent}", ""),
                        parse_manifest(body, None, self.cfg.gateway.max_manifest_depth),
                    )
                    self._stores.pop((route.name, parent), None)
                    self.store(route, again, None)
        except Exception as exc:  # logged: the next pull of it tries again
            log_event(
                logger,
                "mirror.manifest_store_failed",
                logging.WARNING,
                repo=route.name,
                digest=fetched.digest,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            if self._stores.get(key) is asyncio.current_task():
                del self._stores[key]
            self._store_tags.pop(key, None)

    async def _put(
        self, route: Route, fetched: Fetched, present: list[str], tag: str | None
    ) -> None:
        parsed = fetched.parsed
        recipe = await self.cluster.store_bytes(fetched.body)
        await self.meta.manifest_put(
            put_command(
                route.name, fetched.digest, fetched.media_type, recipe, parsed, tag, present
            )
        )

    async def _has_manifest(self, route: Route, digest: str) -> bool:
        try:
            await self.meta.manifest_get(route.name, digest)
        except (ManifestUnknown, NameUnknown):
            return False
        return True

    async def _stored_body(self, route: Route, digest: str) -> bytes | None:
        try:
            record = await self.meta.manifest_get(route.name, digest)
        except (ManifestUnknown, NameUnknown):
            return None
        self._media_types[f"{route.name}@{digest}"] = record.media_type
        return await self.cluster.read_all(dict(record.recipe))

    def needs_retag(self, route: Route, tag: str, digest: str) -> bool:
        """Whether the stored `tag` may not point at `digest` yet (asked once per answer)."""
        return self._retagged.get((route.name, tag)) != digest

    def retag_soon(self, route: Route, digest: str, tag: str, body: bytes) -> None:
        key = (route.name, tag)
        self._retagged[key] = digest
        self._retagged.move_to_end(key)
        while len(self._retagged) > self.cfg.mirror.tag_entries:
            self._retagged.popitem(last=False)
        self._background_task(self._retag(route, digest, tag, body))

    async def _retag(self, route: Route, digest: str, tag: str, body: bytes) -> None:
        try:
            await self.retag(route, digest, tag, body)
        except RegistryError as exc:
            self._retagged.pop((route.name, tag), None)
            log_event(
                logger, "mirror.retag_failed", logging.WARNING, repo=route.name, error=str(exc)
            )

    async def retag(self, route: Route, digest: str, tag: str, body: bytes) -> None:
        """Point a stored tag at the digest the upstream now names (a stored manifest)."""
        try:
            current = (await self.meta.tag_get(route.name, tag)).digest
        except (ManifestUnknown, NameUnknown):
            current = None
        if current == digest:
            return
        record = await self.meta.manifest_get(route.name, digest)
        parsed = parse_manifest(body, record.media_type, self.cfg.gateway.max_manifest_depth)
        present = [c for c in parsed.manifests if await self._has_manifest(route, c)]
        fetched = Fetched(digest, body, record.media_type, parsed)
        try:
            await self._put(route, fetched, present, tag)
        except ManifestBlobUnknown:
            self.store(route, fetched, tag)

    async def tags(self, route: Route, n: int, last: str | None) -> Page:
        """The upstream's tags; the stored ones while it is unavailable."""
        try:
            items, more = await route.upstream.list_tags(route.upstream_repo, n, last)
        except UpstreamNotFound:
            raise NameUnknown(detail={"name": route.name}) from None
        except UpstreamFailed as exc:
            _unavailable(route, exc, "stored tags")
            return await self.meta.tags_list(route.name, n, last)
        return Page(items[:n], more or len(items) > n)

    # Referrers.

    async def referrers(self, route: Route, digest: str) -> list[dict[str, Any]]:
        """The descriptors of the manifests referring to `digest`: the upstream's answer,
        asked at most once per tag TTL in this gateway; while the upstream is unavailable
        the last answer, else the referrers stored here. Each manifest listed is fetched
        and stored in the background, once."""
        key = (route.name, digest)
        known = self._referrers.get(key)
        if known is not None and time.monotonic() - known.checked < self.cfg.mirror.tag_ttl_seconds:
            self._referrers.move_to_end(key)
            return known.descriptors
        try:
            got = await self._once(
                ("referrers", *key),
                lambda: self._upstream_referrers(route, digest),
            )
        except UpstreamFailed as exc:
            serving = "last answer" if known is not None else "stored referrers"
            _unavailable(route, exc, serving, referrers_of=digest)
            if known is None:
                try:
                    return list(await self.meta.referrers(route.name, digest, None))
                except NameUnknown:
                    return []
            descriptors = known.descriptors  # asked again after a TTL, not every time
        else:
            assert isinstance(got, list)
            descriptors = [d for d in got if _valid_descriptor(d)]
            if known is None or known.descriptors != descriptors:
                self._background_task(self._keep_referrers(route, descriptors))
        self._referrers[key] = _Referrers(descriptors, time.monotonic())
        self._referrers.move_to_end(key)
        while len(self._referrers) > self.cfg.mirror.tag_entries:
            self._referrers.popitem(last=False)
        return descriptors

    async def _upstream_referrers(self, route: Route, digest: str) -> list[dict[str, Any]]:
        up = route.upstream
        repo = up.upstream_repo(route.upstream_repo)
        limit = self.cfg.gateway.max_manifest_size
        return (await fetch_referrers(up, repo, digest, up.pull_scope(repo), limit)).descriptors

    async def _keep_referrers(self, route: Route, descriptors: list[dict[str, Any]]) -> None:
        """Fetch and store the referring manifests not stored yet (their blobs too)."""
        for descriptor in descriptors:
            digest = descriptor["digest"]
            try:
                if not await self._has_manifest(route, digest):
                    await self.fetch_manifest(route, digest, None)
            except RegistryError as exc:  # logged: the next answer that lists it retries
                log_event(
                    logger,
                    "mirror.referrer_fetch_failed",
                    logging.WARNING,
                    repo=route.name,
                    digest=digest,
                    error=str(exc),
                )

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the requests (cancelled when the gateway stops)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Blobs.

    async def ensure_blob(self, route: Route, digest: str) -> None:
        """Return once `digest` is stored in the proxy repository (fetching it if not)."""
        try:
            await self.meta.blob_get(route.name, digest)
            return
        except (BlobUnknown, NameUnknown):
            pass
        fetch = self.join_blob(route, digest)
        await asyncio.shield(fetch.done)
        if fetch.error is not None:
            raise fetch.error
        if not fetch.committed:
            raise Unavailable("blob not stored", detail={"digest": digest})

    def join_blob(self, route: Route, digest: str) -> BlobFetch:
        return self.fetches.join(route.upstream, route.name, route.upstream_repo, digest)


def _unavailable(route: Route, exc: UpstreamFailed, serving: str | None, **detail: str) -> None:
    """Log an upstream that could not answer, and what is served instead."""
    log_event(
        logger,
        "mirror.upstream_unavailable",
        logging.WARNING,
        repo=route.name,
        error=str(exc),
        serving=serving,
        **detail,
    )


def _valid_descriptor(doc: dict[str, Any]) -> bool:
    """A descriptor an upstream listed, fit to be answered and fetched."""
    digest, media_type, size = doc.get("digest"), doc.get("mediaType"), doc.get("size")
    return (
        isinstance(digest, str)
        and _valid_digest(digest)
        and isinstance(media_type, str)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    )


def _valid_digest(digest: str) -> bool:
    try:
        parse_digest(digest)
    except DigestInvalid:
        return False
    return True


MIRROR: web.AppKey[Mirror] = web.AppKey("cargohold_mirror", Mirror)
