"""The client of one upstream registry: manifests and blobs of a proxy namespace's upstream.

It speaks what a production registry asks of a client:

- anonymous access, HTTP Basic, and the Docker token protocol: a 401 with
  `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is answered by asking the realm for
  a token (with the configured credentials as Basic, or anonymously), which is kept per
  scope until shortly before it expires, and the request is retried once with it;
- redirects (blob storage behind a CDN) followed by hand, at most `mirror.max_redirects`,
  never carrying the upstream's credentials to another host;
- bounded waits: `connect_timeout_seconds`, `response_timeout_seconds` for the response
  headers, `read_idle_timeout_seconds` between body reads.

A manifest's referrers are asked by gateway/mirror/referrers.py (shared with replication).

Errors are typed: `UpstreamNotFound` (the upstream answered 404: the name, tag or blob
does not exist there) and `UpstreamFailed` (unreachable, timed out, refused the
credentials, rate-limited, 5xx): the proxy serves cached content on the second, never on
the first. Nothing here verifies digests: gateway/mirror/proxy.py and fetch.py do.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from cargohold.config import MirrorConfig, ProxyConfig

# Every manifest media type a proxy stores (schema 1 is not supported, as for pushes).
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_REDIRECTS = (301, 302, 303, 307, 308)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# A token is used until this many seconds before the expiry the service announced.
_TOKEN_MARGIN = 10.0
_DEFAULT_TOKEN_SECONDS = 60.0
_DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io")


class UpstreamFailed(Exception):
    """The upstream could not be asked, or refused (auth, rate limit, 5xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamNotFound(Exception):
    """The upstream answered 404."""


@dataclass
class _Token:
    value: str
    expires: float


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {realm, service, …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class Upstream:
    """One upstream registry, shared by every request of one proxy namespace."""

    def __init__(self, proxy: ProxyConfig, cfg: MirrorConfig) -> None:
        self.proxy = proxy
        self.cfg = cfg
        parts = urlsplit(proxy.url)
        self.username = proxy.username or (parts.username or "")
        self.password = proxy.password or (parts.password or "")
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self.host = parts.hostname or ""
        self._tokens: dict[str, _Token] = {}
        self._session: aiohttp.ClientSession | None = None
        self.own_scope = False  # see _fetch_token

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.cfg.connect_timeout_seconds or None,
                sock_read=self.cfg.read_idle_timeout_seconds or None,
            )
            connector = aiohttp.TCPConnector(limit=self.cfg.max_connections)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def upstream_repo(self, repo: str) -> str:
        """Docker Hub names official images `library/<name>`; a bare name means that."""
        if self.host in _DOCKER_HUB_HOSTS and "/" not in repo:
            return f"library/{repo}"
        return repo

    def _basic(self) -> str | None:
        if not self.username:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _fetch_token(self, params: dict[str, str], scope: str) -> _Token:
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise UpstreamFailed(f"upstream token realm {realm!r} is not a URL")
        query = {"service": params["service"]} if params.get("service") else {}
        # The challenge names what the request needed; a writer (replication) asks for its
        # own scope instead (pull and push), so one token serves all its requests.
        wanted = scope if self.own_scope else (params.get("scope") or scope)
        if wanted:
            query["scope"] = wanted
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        try:
            async with asyncio.timeout(self.cfg.manifest_timeout_seconds or None):
                async with self.session().get(url, headers=headers) as resp:
                    if resp.status != 200:
                        raise UpstreamFailed(f"token service answered {resp.status}", resp.status)
                    doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamFailed(f"token service: {type(exc).__name__}: {exc}") from None
        value = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise UpstreamFailed("token service answered no token")
        seconds = float(doc.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
        return _Token(value, time.monotonic() + max(seconds - _TOKEN_MARGIN, 1.0))

    def _auth_header(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        return None

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        scope: str,
        accept: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response of the upstream (2xx only, redirects followed, auth done); 404 is
        `UpstreamNotFound`, anything else unusable `UpstreamFailed`. A request with a body
        (`data`, replication's writes) is sent again after a 401 only when it is bytes; a
        streamed one's 401 is `UpstreamFailed` (send a body-less request of the same
        scope first, so the token is at hand). `path` may also be a whole URL of this
        upstream (an upload's Location)."""
        headers = {**({"Accept": accept} if accept else {}), **(headers or {})}
        url = path if path.startswith(("http://", "https://")) else self.base + path
        auth = self._auth_header(scope) or (self._basic() if "basic" in self._tokens else None)
        resp = await self._send(method, url, headers, auth, data)
        try:
            if resp.status == 401 and (data is None or isinstance(data, bytes)):
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.release()
                auth = await self._answer(challenge, scope)
                resp = await self._send(method, url, headers, auth, data)
            if resp.status == 404:
                raise UpstreamNotFound(f"{method} {path}: 404")
            if resp.status >= 300:
                raise UpstreamFailed(
                    f"{method} {path}: upstream answered {resp.status}", resp.status
                )
            yield resp
        finally:
            resp.release()

    async def _answer(self, challenge: str, scope: str) -> str:
        scheme, params = parse_challenge(challenge)
        if scheme == "bearer":
            token = await self._fetch_token(params, scope)
            self._tokens[scope] = token
            return f"Bearer {token.value}"
        if scheme == "basic":
            basic = self._basic()
            if basic is None:
                raise UpstreamFailed("upstream wants Basic credentials; none configured", 401)
            # Basic is sent up front from now on (the upstream has no token protocol).
            self._tokens["basic"] = _Token("", float("inf"))
            return basic
        raise UpstreamFailed(f"upstream answered 401 with challenge {challenge[:100]!r}", 401)

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        auth: str | None,
        data: Any = None,
    ) -> aiohttp.ClientResponse:
        origin = urlsplit(url).netloc
        for _ in range(self.cfg.max_redirects + 1):
            sent = dict(headers)
            if auth is not None and urlsplit(url).netloc == origin:
                sent["Authorization"] = auth
            try:
                # A body is streamed for as long as it takes; only its answer is timed.
                wait = None if data is not None else (self.cfg.response_timeout_seconds or None)
                async with asyncio.timeout(wait):
                    resp = await self.session().request(
                        method, url, headers=sent, allow_redirects=False, data=data
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from None
            # A body is sent once: a redirect of a write is the caller's failure to handle.
            if data is not None or resp.status not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            url = urljoin(url, resp.headers["Location"])
            resp.release()
            if method == "HEAD" or resp.status == 303:
                method = "HEAD" if method == "HEAD" else "GET"
        raise UpstreamFailed(f"more than {self.cfg.max_redirects} redirects")

    # The registry API, by what the proxy needs.

    def pull_scope(self, repo: str) -> str:
        return f"repository:{repo}:pull"

    async def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest a tag points at upstream (None when the upstream does not say)."""
        repo = self.upstream_repo(repo)
        path = f"/v2/{repo}/manifests/{reference}"
        async with self.request("HEAD", path, self.pull_scope(repo), MANIFEST_ACCEPT) as resp:
            return resp.headers.get("Docker-Content-Digest")

    async def get_manifest(self, repo: str, reference: str, limit: int) -> tuple[bytes, str]:
        """(body, Content-Type) of a manifest; a body over `limit` bytes is refused."""
        repo = self.upstream_repo(repo)
        path = f"/v2/{repo}/manifests/{reference}"
        try:
            async with asyncio.timeout(self.cfg.manifest_timeout_seconds or None):
                async with self.request(
                    "GET", path, self.pull_scope(repo), MANIFEST_ACCEPT
                ) as resp:
                    if (resp.content_length or 0) > limit:
                        raise UpstreamFailed(f"upstream manifest larger than {limit} bytes")
                    body = await resp.content.read(limit + 1)
                    if len(body) > limit:
                        raise UpstreamFailed(f"upstream manifest larger than {limit} bytes")
                    return body, resp.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailed(f"GET {path}: {type(exc).__name__}: {exc}") from None

    async def list_tags(self, repo: str, n: int, last: str | None) -> tuple[list[str], bool]:
        """One page of the upstream's tags: (tags, whether more follow)."""
        repo = self.upstream_repo(repo)
        query = urlencode({"n": n, **({"last": last} if last else {})})
        path = f"/v2/{repo}/tags/list?{query}"
        try:
            async with asyncio.timeout(self.cfg.manifest_timeout_seconds or None):
                async with self.request("GET", path, self.pull_scope(repo)) as resp:
                    doc = await resp.json(content_type=None)
                    more = "Link" in resp.headers
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamFailed(f"GET {path}: {type(exc).__name__}: {exc}") from None
        tags = doc.get("tags") if isinstance(doc, dict) else None
        return [t for t in tags or [] if isinstance(t, str)], more

    def open_blob(
        self, repo: str, digest: str
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The blob's response (a context manager); its body is read by the caller."""
        repo = self.upstream_repo(repo)
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", self.pull_scope(repo))
