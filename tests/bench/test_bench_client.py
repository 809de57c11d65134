"""The OCI clients of bench (aiohttp and raw) against the do-nothing registry, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bench.blobdata import BlobSpec, digest_of
from bench.images import Image, pull_image, push_image
from bench.oci import ACCEPT_MANIFESTS, BenchHTTPError, OciClient
from bench.rawhttp import RawBlobReader, RawClient, RawHTTPError
from bench.trivial_server import make_app

MiB = 1024 * 1024


@pytest.fixture
async def registry() -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_blob_push_and_pull_move_the_whole_blob(registry: str) -> None:
    spec = BlobSpec.unique(1, 3 * MiB + 5)
    async with aiohttp.ClientSession() as session:
        client = OciClient(registry, session)
        await client.ping()
        assert await client.push_blob("a/b", spec, digest_of(spec)) == spec.size
        assert await client.pull_blob("a/b", digest_of(spec)) == spec.size


async def test_image_round_trip_and_raw_manifest_reads(registry: str) -> None:
    image = Image.build("t", [BlobSpec.unique(2, 100_000), BlobSpec.unique(3, MiB)])
    async with aiohttp.ClientSession() as session:
        client = OciClient(registry, session)
        pushed = await push_image(client, "a/img", "v1", image)
        assert pushed == len(image.config) + image.layer_bytes + len(image.manifest)
        assert await client.head_manifest("a/img", "v1") == image.digest
        assert await pull_image(client, "a/img", "v1") == len(image.config) + image.layer_bytes
    raw = RawClient(registry)
    try:
        get = raw.build("GET", f"/v2/a/img/manifests/{image.digest}", ACCEPT_MANIFESTS)
        head = raw.build("HEAD", "/v2/a/img/manifests/v1", ACCEPT_MANIFESTS)
        for _ in range(3):  # the same connection, kept alive
            assert await raw.request(get, head=False) == len(image.manifest)
            assert await raw.request(head, head=True) == 0
        with pytest.raises(RawHTTPError):
            await raw.request(raw.build("GET", "/v2/a/img/manifests/nope", "*/*"), head=False)
        assert await raw.request(get, head=False) == len(image.manifest)
    finally:
        raw.close()


async def test_unexpected_status_is_an_error(registry: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = OciClient(registry, session)
        with pytest.raises(BenchHTTPError) as info:
            await client.pull_blob("a/b", "sha256:" + "0" * 64)
        assert info.value.status == 404


async def test_raw_blob_reader_counts_bodies_on_one_connection(registry: str) -> None:
    sizes = [0, 1, 3 * MiB + 5, 100]
    specs = [BlobSpec.unique(20 + i, n) for i, n in enumerate(sizes)]
    async with aiohttp.ClientSession() as session:
        client = OciClient(registry, session)
        for spec in specs:
            await client.push_blob("a/raw", spec, digest_of(spec))
    reader = RawBlobReader(registry, bufsize=64 * 1024)
    try:
        for _ in range(2):
            got = [await reader.get(f"/v2/a/raw/blobs/{digest_of(s)}") for s in specs]
            assert got == sizes
        assert reader.received > 2 * sum(sizes)  # bodies and headers, counted as they flow
        with pytest.raises(RawHTTPError):
            await reader.get("/v2/a/raw/blobs/sha256:" + "1" * 64)
        assert await reader.get(f"/v2/a/raw/blobs/{digest_of(specs[2])}") == sizes[2]
    finally:
        reader.close()


async def test_raw_blob_reader_sends_the_authorization_it_is_given() -> None:
    """The pull storm's blob GETs carry the client's Bearer token (auth-on systems)."""
    seen: list[str] = []

    async def blob(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer t0k":
            return web.Response(status=401)
        return web.Response(body=b"x" * 10)

    app = web.Application()
    app.router.add_get("/v2/a/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    reader = RawBlobReader(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        assert await reader.get("/v2/a/blobs/d", "Bearer t0k") == 10
        with pytest.raises(RawHTTPError):
            await reader.get("/v2/a/blobs/d")
        assert seen == ["Bearer t0k", ""]
    finally:
        reader.close()
        await runner.cleanup()
