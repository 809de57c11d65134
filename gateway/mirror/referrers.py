"""The referrers of a manifest at a remote registry, as the pull-through cache
(gateway/mirror/proxy.py) and replication (gateway/replication/sides.py) both ask them.

`fetch_referrers` asks the OCI referrers API (`GET /v2/<repo>/referrers/<digest>`),
following its `Link: <…>; rel="next"` pages up to `mirror.referrers_max_pages`; a
registry without the API (Distribution 2.x answers 404) is asked for the OCI referrers
tag schema's index instead, tagged `<alg>-<hex>`; no such tag is no referrers. The
answer says which of the two it came from (replication remembers it per repository).

Errors are the upstream client's (gateway/mirror/upstream.py): an answer that is too
large, not JSON, not an image index or not the digest it names is `UpstreamFailed` with
the answer's HTTP status (so it is never taken for an unreachable registry). A next page
on another host is not asked (the credentials never leave the registry's host): the pages
before it are the answer, as when the page limit is reached; both are logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from cargohold.digests import digest_of
from cargohold.log import log_event
from gateway.mirror.upstream import (
    INDEX_TYPE,
    MANIFEST_ACCEPT,
    Upstream,
    UpstreamFailed,
    UpstreamNotFound,
)

logger = logging.getLogger("cargohold.gateway.mirror")

# One `<url>; params` element of a Link header (RFC 8288), and a `rel` parameter's value.
_LINK = re.compile(r"<([^>]*)>\s*((?:;[^,<]*)*)")
_REL = re.compile(r';\s*rel\s*=\s*"?([^";]*)"?', re.IGNORECASE)


@dataclass(frozen=True)
class Referrers:
    """Descriptors of the manifests referring to a digest, and whether the referrers API
    answered (False: the tag schema's index, or nothing, stood in for it)."""

    descriptors: list[dict[str, Any]]
    api: bool


def next_link(header: str) -> str | None:
    """The target of a Link header's `rel="next"` element, if there is one."""
    for target, params in _LINK.findall(header):
        for rel in _REL.findall(params):
            if "next" in rel.lower().split():
                return str(target)
    return None


def fallback_tag(digest: str) -> str:
    """The OCI referrers tag schema's tag of `digest`'s referrers index."""
    algorithm, hexpart = digest.split(":", 1)
    return f"{algorithm}-{hexpart}"


async def fetch_referrers(
    up: Upstream,
    repo: str,
    digest: str,
    scope: str,
    limit: int,
    use_api: bool = True,
) -> Referrers:
    """The referrers of `digest` in `repo` (the name as the registry knows it), asked with
    a token for `scope`; each answer (page) at most `limit` bytes. `use_api=False` goes
    straight to the tag schema (a registry known to lack the API)."""
    if use_api:
        try:
            return Referrers(await _api_pages(up, repo, digest, scope, limit), True)
        except UpstreamNotFound:
            pass
    tag = fallback_tag(digest)
    path = f"/v2/{repo}/manifests/{tag}"
    try:
        body, status, named = await _read(up, path, scope, MANIFEST_ACCEPT, limit)
    except UpstreamNotFound:
        return Referrers([], False)
    if named:
        algorithm = named.partition(":")[0]
        if algorithm not in ("sha256", "sha512") or digest_of(body, algorithm) != named:
            raise UpstreamFailed(f"{repo}:{tag}: the index does not match {named}", status)
    return Referrers(_descriptors(body, status), False)


async def _api_pages(
    up: Upstream, repo: str, digest: str, scope: str, limit: int
) -> list[dict[str, Any]]:
    """Every page of the referrers API's answer, up to `referrers_max_pages`; the first
    page's 404 is `UpstreamNotFound` (no API)."""
    url = f"{up.base}/v2/{repo}/referrers/{digest}"
    out: list[dict[str, Any]] = []
    for page in range(up.cfg.referrers_max_pages):
        try:
            body, status, link = await _read(up, url, scope, INDEX_TYPE, limit, want_link=True)
        except UpstreamNotFound:
            if page == 0:
                raise
            raise UpstreamFailed(f"{url}: a next page of referrers answered 404", 404) from None
        out.extend(_descriptors(body, status))
        if not link:
            return out
        following = urljoin(url, link)
        if urlsplit(following).netloc != urlsplit(up.base).netloc:
            _log_truncated(repo, digest, page + 1, "next page on another host")
            return out
        url = following
    _log_truncated(repo, digest, up.cfg.referrers_max_pages, "referrers_max_pages")
    return out


def _log_truncated(repo: str, digest: str, pages: int, why: str) -> None:
    """The referrers list ends early: `pages` pages read, `why` the rest was not."""
    log_event(
        logger,
        "mirror.referrers_truncated",
        logging.WARNING,
        repo=repo,
        digest=digest,
        pages=pages,
        why=why,
    )


async def _read(
    up: Upstream,
    path: str,
    scope: str,
    accept: str,
    limit: int,
    want_link: bool = False,
) -> tuple[bytes, int, str]:
    """(body, HTTP status, and the next page's link or else the named digest)."""
    try:
        async with asyncio.timeout(up.cfg.manifest_timeout_seconds or None):
            async with up.request("GET", path, scope, accept) as resp:
                if (resp.content_length or 0) > limit:
                    raise UpstreamFailed(
                        f"upstream referrers larger than {limit} bytes", resp.status
                    )
                body = await resp.content.read(limit + 1)
                if want_link:
                    extra = next_link(resp.headers.get("Link", "")) or ""
                else:
                    extra = resp.headers.get("Docker-Content-Digest", "")
                status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamFailed(f"GET {path}: {type(exc).__name__}: {exc}") from None
    if len(body) > limit:
        raise UpstreamFailed(f"upstream referrers larger than {limit} bytes", status)
    return body, status, extra


def _descriptors(body: bytes, status: int) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise UpstreamFailed("upstream referrers are not JSON", status) from None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list):
        raise UpstreamFailed("upstream referrers are not an image index", status)
    return [d for d in manifests if isinstance(d, dict) and isinstance(d.get("digest"), str)]
