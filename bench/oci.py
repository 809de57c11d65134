"""A small asyncio OCI Distribution client (aiohttp) that speaks the protocol itself.

It does what `docker push`/`pull` do on the wire (with token auth when given a
`bench.auth.TokenSource`: a Bearer token per repository scope, fetched once):
- blob push: `POST /blobs/uploads/`, one streamed `PATCH` with chunked transfer encoding
  (no Content-Length, no Content-Range), then `PUT <location>?digest=` with an empty body;
- blob pull: `GET /blobs/<digest>`, body read as it arrives and counted (optionally
  hashed and checked);
- manifests: `PUT`, `GET` and `HEAD` by tag or digest.

Every call raises `BenchHTTPError` on an unexpected status, so a workload never counts a
failed request as a success. The caller owns the `aiohttp.ClientSession` (and so the
number of connections).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from urllib.parse import urljoin

import aiohttp

from bench.auth import TokenSource
from bench.blobdata import BlobSpec

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT_MANIFESTS = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "*/*",
    ]
)
# Response read buffer: large, so that big bodies are not throttled 64 KiB at a time.
READ_BUFFER = 4 * 1024 * 1024


class BenchHTTPError(RuntimeError):
    """A request got a status the protocol does not allow for it."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:200]}")
        self.status = status


async def _check(resp: aiohttp.ClientResponse, *ok: int) -> None:
    if resp.status not in ok:
        body = await resp.text(errors="replace")
        raise BenchHTTPError(resp.method, str(resp.url), resp.status, body)


def _with_digest(location: str, digest: str) -> str:
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={digest}"


async def _stream(spec: BlobSpec, on_bytes: Callable[[int], None] | None) -> AsyncIterator[bytes]:
    for piece in spec.pieces():
        yield piece
        if on_bytes is not None:
            on_bytes(len(piece))


class OciClient:
    """One registry endpoint; stateless apart from its base URL and session."""

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, tokens: TokenSource | None = None
    ) -> None:
        self.base = base_url.rstrip("/")
        self.session = session
        self.tokens = tokens

    async def _auth(
        self, repo: str, push: bool = False, headers: dict[str, str] | None = None
    ) -> dict[str, str]:
        out = dict(headers or {})
        if self.tokens is not None:
            out.update(await self.tokens.header(self.session, repo, push))
        return out

    def _url(self, path: str) -> str:
        return f"{self.base}{path}"

    def _resolve(self, location: str) -> str:
        return urljoin(self.base + "/", location)

    async def ping(self) -> None:
        async with self.session.get(self._url("/v2/")) as resp:
            await _check(resp, 200)

    async def push_blob(
        self, repo: str, spec: BlobSpec, digest: str, on_bytes: Callable[[int], None] | None = None
    ) -> int:
        """Docker-style three-request push; returns the bytes acknowledged.
        `on_bytes` is told of every piece handed to the connection (progress)."""
        async with self.session.post(
            self._url(f"/v2/{repo}/blobs/uploads/"), headers=await self._auth(repo, True)
        ) as resp:
            await _check(resp, 202)
            location = self._resolve(resp.headers["Location"])
        async with self.session.patch(
            location,
            data=_stream(spec, on_bytes),
            headers=await self._auth(repo, True, {"Content-Type": "application/octet-stream"}),
        ) as resp:
            await _check(resp, 202)
            location = self._resolve(resp.headers["Location"])
        async with self.session.put(
            _with_digest(location, digest),
            headers=await self._auth(repo, True, {"Content-Length": "0"}),
        ) as resp:
            await _check(resp, 201)
            if resp.headers.get("Docker-Content-Digest", digest) != digest:
                raise BenchHTTPError("PUT", location, resp.status, "wrong digest echoed")
        return spec.size

    async def push_bytes(self, repo: str, data: bytes, digest: str) -> int:
        """Small blob (config, tiny layer): POST, PATCH with Content-Length, PUT."""
        async with self.session.post(
            self._url(f"/v2/{repo}/blobs/uploads/"), headers=await self._auth(repo, True)
        ) as resp:
            await _check(resp, 202)
            location = self._resolve(resp.headers["Location"])
        async with self.session.patch(
            location,
            data=data,
            headers=await self._auth(repo, True, {"Content-Type": "application/octet-stream"}),
        ) as resp:
            await _check(resp, 202)
            location = self._resolve(resp.headers["Location"])
        async with self.session.put(
            _with_digest(location, digest),
            headers=await self._auth(repo, True, {"Content-Length": "0"}),
        ) as resp:
            await _check(resp, 201)
        return len(data)

    async def pull_blob(self, repo: str, digest: str, verify: bool = False) -> int:
        """GET a blob, read it all; returns its size. `verify` hashes it (client cost)."""
        h = hashlib.sha256() if verify else None
        total = 0
        async with self.session.get(
            self._url(f"/v2/{repo}/blobs/{digest}"), headers=await self._auth(repo)
        ) as resp:
            await _check(resp, 200)
            expected = int(resp.headers.get("Content-Length", "-1"))
            async for piece in resp.content.iter_any():
                total += len(piece)
                if h is not None:
                    h.update(piece)
        if expected >= 0 and total != expected:
            raise BenchHTTPError("GET", digest, 200, f"short body {total}/{expected}")
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise BenchHTTPError("GET", digest, 200, "body does not match its digest")
        return total

    async def put_manifest(
        self, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        async with self.session.put(
            self._url(f"/v2/{repo}/manifests/{ref}"),
            data=body,
            headers=await self._auth(repo, True, {"Content-Type": media_type}),
        ) as resp:
            await _check(resp, 201)
            return resp.headers["Docker-Content-Digest"]

    async def get_manifest(self, repo: str, ref: str) -> bytes:
        async with self.session.get(
            self._url(f"/v2/{repo}/manifests/{ref}"),
            headers=await self._auth(repo, False, {"Accept": ACCEPT_MANIFESTS}),
        ) as resp:
            await _check(resp, 200)
            return await resp.read()

    async def head_manifest(self, repo: str, ref: str) -> str:
        async with self.session.head(
            self._url(f"/v2/{repo}/manifests/{ref}"),
            headers=await self._auth(repo, False, {"Accept": ACCEPT_MANIFESTS}),
        ) as resp:
            await _check(resp, 200)
            return resp.headers["Docker-Content-Digest"]
