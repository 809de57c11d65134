"""The few OCI requests the chaos workload and verifier send, over aiohttp.

Every answer is sorted into three outcomes: success; `Retryable` (a 5xx, a refused or
reset connection, a timeout: what a registry client retries while a cluster recovers);
`Violation` (an answer a correct registry never gives, whatever failed). `check_image`
reads one image back and compares bytes.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from cluster.images import MANIFEST_TYPE, ImageSpec, sha256

# Everything a push or pull may be answered while a cluster recovers; clients retry these.
_RETRYABLE_STATUS = {500, 502, 503, 504}


class Retryable(Exception):
    """A failure a client retries (through another gateway): a 5xx or no answer."""

    def __init__(self, op: str, status: int, detail: str) -> None:
        super().__init__(f"{op}: {status} {detail}")
        self.op, self.status, self.detail = op, status, detail


class Violation(Exception):
    """An answer a correct registry never gives, whatever failed."""


class RegistryClient:
    """The few OCI requests the workload needs, raising Retryable / Violation."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _request(
        self, op: str, method: str, url: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            async with self.session.request(method, url, timeout=self.timeout, **kwargs) as resp:
                body = await resp.read()
                status, headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise Retryable(op, 0, f"{type(exc).__name__}: {exc}") from None
        if status in _RETRYABLE_STATUS:
            raise Retryable(op, status, body[:300].decode(errors="replace"))
        return status, headers, body

    async def push_image(self, base: str, image: Any, chunk: int) -> str:
        """Every blob of `image` (monolithic when under `chunk` bytes), then its manifest
        under its tag; the manifest's digest. `image`: repo, tag, blobs(), manifest()."""
        for _, digest, data in image.blobs():
            await self.push_blob(base, image.repo, digest, data, monolithic=len(data) < chunk)
        return await self.put_manifest(base, image.repo, image.tag, image.manifest())

    async def push_blob(
        self, base: str, repo: str, digest: str, data: bytes, monolithic: bool
    ) -> None:
        if monolithic:
            status, _, body = await self._request(
                "blob_post_put",
                "POST",
                f"{base}/v2/{repo}/blobs/uploads/?digest={digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            _expect(status, 201, "blob monolithic POST", body)
            return
        status, headers, body = await self._request(
            "upload_start", "POST", f"{base}/v2/{repo}/blobs/uploads/"
        )
        _expect(status, 202, "upload POST", body)
        location = _absolute(base, headers["Location"])
        status, headers, body = await self._request(
            "upload_patch",
            "PATCH",
            location,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        _expect(status, 202, "upload PATCH", body)
        location = _absolute(base, headers["Location"])
        sep = "&" if "?" in location else "?"
        status, _, body = await self._request(
            "upload_put", "PUT", f"{location}{sep}digest={digest}"
        )
        _expect(status, 201, "upload PUT", body)

    async def put_manifest(self, base: str, repo: str, ref: str, body: bytes) -> str:
        status, headers, answer = await self._request(
            "manifest_put",
            "PUT",
            f"{base}/v2/{repo}/manifests/{ref}",
            data=body,
            headers={"Content-Type": MANIFEST_TYPE},
        )
        if status == 400 and b"MANIFEST_BLOB_UNKNOWN" in answer:
            raise Violation(f"manifest PUT: acknowledged blob unknown: {answer[:300]!r}")
        _expect(status, 201, "manifest PUT", answer)
        return headers.get("Docker-Content-Digest", "")

    async def get_manifest(self, base: str, repo: str, ref: str) -> tuple[int, str, bytes]:
        status, headers, body = await self._request(
            "manifest_get",
            "GET",
            f"{base}/v2/{repo}/manifests/{ref}",
            headers={"Accept": f"{MANIFEST_TYPE}, */*"},
        )
        return status, headers.get("Docker-Content-Digest", ""), body

    async def get_blob(self, base: str, repo: str, digest: str) -> tuple[int, bytes]:
        status, _, body = await self._request("blob_get", "GET", f"{base}/v2/{repo}/blobs/{digest}")
        return status, body


def _expect(status: int, wanted: int, what: str, body: bytes) -> None:
    if status != wanted:
        raise Violation(f"{what}: {status} (want {wanted}): {body[:300]!r}")


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


async def check_image(
    client: RegistryClient, base: str, spec: ImageSpec, by_tag: bool = True
) -> int:
    """Read one image back through `base`; Violation on any wrong answer. Returns bytes read."""
    manifest = spec.manifest()
    refs = [spec.tag, spec.digest] if by_tag else [spec.digest]
    read = 0
    for ref in refs:
        status, dcd, body = await client.get_manifest(base, spec.repo, ref)
        if status != 200 or body != manifest or dcd != spec.digest:
            raise Violation(
                f"{base} manifest {spec.repo}:{ref}: status {status}, dcd {dcd}, "
                f"{len(body)} bytes, want {spec.digest}"
            )
        read += len(body)
    for _, digest, data in spec.blobs():
        status, body = await client.get_blob(base, spec.repo, digest)
        if status != 200 or sha256(body) != digest or len(body) != len(data):
            raise Violation(
                f"{base} blob {spec.repo}@{digest}: status {status}, "
                f"{len(body)} bytes (want {len(data)})"
            )
        read += len(body)
    return read
