"""Blob GET/HEAD/Range/DELETE through the real app and ClusterClient, against fake nodes."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, data_path, production_server, vanish_mid_body

from cargohold.digests import digest_of
from cargohold.errors import RangeInvalid
from cargohold.metadata_api import BlobUnlink
from gateway.blobs import BLOB_RECORDS, parse_range

CHUNK = 64 * 1024
DATA = os.urandom(3 * CHUNK + 1000)
DIGEST = digest_of(DATA)
URL = f"/v2/lib/app/blobs/{DIGEST}"


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for value in data_path(3):
        resp = await value.http.post(f"/v2/lib/app/blobs/uploads/?digest={DIGEST}", data=DATA)
        assert resp.status == 201
        yield value


async def test_get_and_head_agree(dp: DataPath) -> None:
    get = await dp.http.get(URL)
    assert get.status == 200
    assert await get.read() == DATA
    head = await dp.http.head(URL)
    assert head.status == 200
    assert await head.read() == b""
    for resp in (get, head):
        assert resp.headers["Content-Length"] == str(len(DATA))
        assert resp.headers["Docker-Content-Digest"] == DIGEST
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "Content-Encoding" not in resp.headers
        assert "Transfer-Encoding" not in resp.headers


async def test_never_gzipped(dp: DataPath) -> None:
    resp = await dp.http.get(URL, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == DATA


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=65530-65545", 65530, 65546),
        (f"bytes={CHUNK}-", CHUNK, len(DATA)),
        ("bytes=-5", len(DATA) - 5, len(DATA)),
        ("bytes=100-99999999", 100, len(DATA)),
        (f"bytes=-{len(DATA) + 10}", 0, len(DATA)),
    ],
)
async def test_ranges(dp: DataPath, header: str, start: int, end: int) -> None:
    resp = await dp.http.get(URL, headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert resp.headers["Content-Length"] == str(end - start)
    assert await resp.read() == DATA[start:end]
    head = await dp.http.head(URL, headers={"Range": header})
    assert head.status == 206
    assert head.headers["Content-Length"] == str(end - start)


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={len(DATA)}-",
        "bytes=-0",
        f"bytes={len(DATA) + 5}-{len(DATA) + 10}",
        # An end before the start: 416, as the OCI conformance suite expects.
        "bytes=500-0",
        "bytes=9-2",
        # Numbers past Python's int-string limit (4300 digits) are positions past the end.
        "bytes=" + "9" * 5000 + "-",
        "bytes=" + "9" * 5000 + "-" + "9" * 3000,
    ],
)
async def test_unsatisfiable_range(dp: DataPath, header: str) -> None:
    resp = await dp.http.get(URL, headers={"Range": header})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["items=0-5", "bytes=0-1,5-6", "bytes=-", "bytes=\u0661-"])
async def test_ignored_range_serves_everything(dp: DataPath, header: str) -> None:
    resp = await dp.http.get(URL, headers={"Range": header})
    assert resp.status == 200
    assert await resp.read() == DATA


def test_parse_range_edges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-" + "9" * 5000, 10) == (0, 10)
    assert parse_range("bytes=-" + "9" * 5000, 10) == (0, 10)
    assert parse_range("bytes=0-1x", 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=9-", 10) == (9, 10)
    with pytest.raises(RangeInvalid):
        parse_range("bytes=0-", 0)
    with pytest.raises(RangeInvalid):
        parse_range("bytes=-3", 0)


async def test_unknown_blob_and_bad_digest(dp: DataPath) -> None:
    other = digest_of(b"other")
    for method in ("GET", "HEAD"):
        resp = await dp.http.request(method, f"/v2/lib/app/blobs/{other}")
        assert resp.status == 404
    body = await (await dp.http.get(f"/v2/lib/app/blobs/{other}")).json()
    assert body["errors"][0]["code"] == "BLOB_UNKNOWN"
    # Linked in lib/app only: another repository cannot read it.
    assert (await dp.http.get(f"/v2/lib/else/blobs/{DIGEST}")).status == 404
    resp = await dp.http.get("/v2/lib/app/blobs/sha256:xyz")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"


async def test_served_from_the_next_replica_when_one_is_corrupt(dp: DataPath) -> None:
    for node in dp.nodes.nodes[:1]:
        node.corrupt = True
    resp = await dp.http.get(URL)
    assert await resp.read() == DATA


async def test_delete(dp: DataPath) -> None:
    resp = await dp.http.delete(URL)
    assert resp.status == 202
    assert (await dp.http.get(URL)).status == 404
    assert (await dp.http.head(URL)).status == 404
    resp = await dp.http.delete(URL)
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _link_checks(dp: DataPath) -> int:
    return dp.nodes.state.queries.count("blob_get")


async def test_repeated_pulls_share_one_link_check(dp: DataPath) -> None:
    for _ in range(3):
        assert (await dp.http.get(URL)).status == 200
        assert (await dp.http.head(URL)).status == 200
    assert _link_checks(dp) == 1


async def test_a_delete_elsewhere_is_served_at_most_the_ttl(dp: DataPath) -> None:
    """The bound gateway/blobs.py states: a link removed through another gateway (here:
    straight in the replicated state) is seen once `blob_digest_ttl_seconds` passed."""
    clock = _Clock()
    records = dp.http.app[BLOB_RECORDS]
    records.clock = clock
    assert (await dp.http.get(URL)).status == 200
    dp.nodes.state.state.execute(BlobUnlink("lib/app", DIGEST))
    clock.now += records.ttl * 0.9
    stale = await dp.http.get(URL)
    assert stale.status == 200 and await stale.read() == DATA
    clock.now += records.ttl * 0.1
    resp = await dp.http.get(URL)
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert (await dp.http.head(URL)).status == 404  # and the 404 is not remembered either
    assert _link_checks(dp) == 3


async def test_an_unknown_blob_is_never_remembered() -> None:
    async for dp in data_path(3):
        assert (await dp.http.get(URL)).status == 404
        resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={DIGEST}", data=DATA)
        assert resp.status == 201
        assert (await dp.http.get(URL)).status == 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"gateway__blob_digest_ttl_seconds": 0.0},
        # DATA is 4 chunks of 64 KiB: above a 3-chunk limit its recipe is not kept.
        {"gateway__blob_digest_cache_max_chunks": 3},
    ],
    ids=["ttl-zero", "large-recipe"],
)
async def test_ttl_zero_and_large_recipes_always_ask(overrides: dict[str, float]) -> None:
    async for dp in data_path(3, **overrides):
        resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={DIGEST}", data=DATA)
        assert resp.status == 201
        for _ in range(2):
            assert (await dp.http.head(URL)).status == 200
        assert _link_checks(dp) == 2


async def test_delete_disabled() -> None:
    async for dp in data_path(1, gateway__delete_enabled=False):
        resp = await dp.http.delete(URL)
        assert resp.status == 405
        assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_client_vanishing_mid_get_is_quiet(
    dp: DataPath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cargohold.gateway.blobs")
    big = os.urandom(16 * 1024 * 1024)
    resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={digest_of(big)}", data=big)
    assert resp.status == 201
    async for url in production_server(dp.cfg, dp.cluster):
        await vanish_mid_body(url, f"/v2/lib/app/blobs/{digest_of(big)}", caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Still serving.
    assert await (await dp.http.get(URL)).read() == DATA
