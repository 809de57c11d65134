"""Blob uploads over HTTP through the real app and ClusterClient, against fake nodes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator

import pytest
from fakenodes import DataPath, data_path, eventually, gateway_client, production_server

from cargohold.digests import EMPTY_SHA256, digest_of

CHUNK = 64 * 1024  # the fake cluster's chunk size


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for value in data_path(3):
        yield value


async def _start(dp: DataPath, repo: str = "lib/app") -> str:
    resp = await dp.http.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status == 202, await resp.text()
    return resp.headers["Location"]


async def _body(data: bytes, piece: int = 10_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def _blob(dp: DataPath, repo: str, digest: str) -> bytes:
    resp = await dp.http.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def _error_code(resp: object) -> str:
    body = await resp.json()  # type: ignore[attr-defined]
    return str(body["errors"][0]["code"])


async def test_post_opens_a_session(dp: DataPath) -> None:
    resp = await dp.http.post("/v2/lib/app/blobs/uploads/?ns=docker.io")
    assert resp.status == 202
    location = resp.headers["Location"]
    upload = resp.headers["Docker-Upload-UUID"]
    assert location == f"/v2/lib/app/blobs/uploads/{upload}"
    assert "/" not in upload and "?" not in location
    assert resp.headers["Range"] == "0-0"
    assert resp.headers["Content-Length"] == "0"
    assert resp.headers["OCI-Chunk-Min-Length"] == str(CHUNK)
    assert dp.nodes.state.commands == []  # POST costs no Raft command


async def test_post_invalid_name(dp: DataPath) -> None:
    resp = await dp.http.post("/v2/Bad_Name/blobs/uploads/")
    assert resp.status == 400
    assert await _error_code(resp) == "NAME_INVALID"


async def test_streamed_patch_then_put(dp: DataPath) -> None:
    data = os.urandom(5 * CHUNK + 123)
    digest = digest_of(data)
    location = await _start(dp)
    resp = await dp.http.patch(location, data=_body(data))  # chunked transfer encoding
    assert resp.status == 202
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    assert resp.headers["Location"] == location
    assert resp.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    # This gateway answered the POST: the PATCH did not read the session back...
    assert "upload_get" not in dp.nodes.state.queries
    resp = await dp.http.get(location)  # (a status request does)
    assert resp.status == 204
    assert dp.nodes.state.queries.count("upload_get") == 1
    resp = await dp.http.put(f"{location}?digest={digest}")
    assert resp.status == 201
    # ...nor did the PUT after the PATCH.
    assert dp.nodes.state.queries.count("upload_get") == 1
    assert resp.headers["Location"] == f"/v2/lib/app/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(dp, "lib/app", digest) == data
    ops = [op for op, _ in dp.nodes.state.commands]
    assert ops == ["upload_append", "blob_commit"]


async def test_chunked_patches_with_content_range(dp: DataPath) -> None:
    data = os.urandom(3 * 1000 + 17)
    location = await _start(dp)
    for start in range(0, len(data), 1000):
        piece = data[start : start + 1000]
        resp = await dp.http.patch(
            location,
            data=piece,
            headers={
                "Content-Range": f"{start}-{start + len(piece) - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{start + len(piece) - 1}"
    status = await dp.http.get(location)
    assert status.status == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    digest = digest_of(data)
    resp = await dp.http.put(f"{location}?digest={digest}")
    assert resp.status == 201
    assert await _blob(dp, "lib/app", digest) == data


async def test_out_of_order_patch_is_416_with_location_and_range(dp: DataPath) -> None:
    location = await _start(dp)
    resp = await dp.http.patch(location, data=b"x" * 10, headers={"Content-Range": "0-9"})
    assert resp.status == 202
    for bad in ("0-9", "20-29", "5-14"):
        resp = await dp.http.patch(location, data=b"y" * 10, headers={"Content-Range": bad})
        assert resp.status == 416
        assert resp.headers["Location"] == location
        assert resp.headers["Range"] == "0-9"
    # The session is intact.
    resp = await dp.http.get(location)
    assert resp.headers["Range"] == "0-9"


async def test_content_length_differing_from_range_is_size_invalid(dp: DataPath) -> None:
    location = await _start(dp)
    resp = await dp.http.patch(location, data=b"x" * 10, headers={"Content-Range": "0-19"})
    assert resp.status == 400
    assert await _error_code(resp) == "SIZE_INVALID"
    assert dp.nodes.state.commands == []


async def test_monolithic_post_with_digest(dp: DataPath) -> None:
    data = os.urandom(2 * CHUNK + 5)
    digest = digest_of(data)
    resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/lib/app/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(dp, "lib/app", digest) == data


async def test_monolithic_post_with_wrong_digest(dp: DataPath) -> None:
    resp = await dp.http.post(
        f"/v2/lib/app/blobs/uploads/?digest={EMPTY_SHA256}", data=b"not empty"
    )
    assert resp.status == 400
    assert await _error_code(resp) == "DIGEST_INVALID"
    assert dp.nodes.state.blobs == {}


async def test_post_then_monolithic_put(dp: DataPath) -> None:
    data = os.urandom(CHUNK + 1)
    digest = digest_of(data)
    location = await _start(dp)
    resp = await dp.http.put(f"{location}?digest={digest}", data=data)
    assert resp.status == 201
    assert await _blob(dp, "lib/app", digest) == data
    assert [op for op, _ in dp.nodes.state.commands] == ["blob_commit"]


async def test_empty_blob(dp: DataPath) -> None:
    location = await _start(dp)
    resp = await dp.http.put(f"{location}?digest={EMPTY_SHA256}")
    assert resp.status == 201
    resp = await dp.http.get(f"/v2/lib/app/blobs/{EMPTY_SHA256}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "0"
    assert await resp.read() == b""


async def test_put_with_wrong_digest_keeps_the_session(dp: DataPath) -> None:
    data = os.urandom(1000)
    location = await _start(dp)
    await dp.http.patch(location, data=data)
    resp = await dp.http.put(f"{location}?digest={EMPTY_SHA256}", data=b"tail")
    assert resp.status == 400
    assert await _error_code(resp) == "DIGEST_INVALID"
    assert dp.nodes.state.blobs == {}
    resp = await dp.http.get(location)
    assert resp.status == 204 and resp.headers["Range"] == "0-999"
    resp = await dp.http.put(f"{location}?digest={digest_of(data + b'tail')}", data=b"tail")
    assert resp.status == 201
    assert await _blob(dp, "lib/app", digest_of(data + b"tail")) == data + b"tail"


async def test_put_without_or_with_bad_digest(dp: DataPath) -> None:
    location = await _start(dp)
    for query in ("", "?digest=sha256:abc", "?digest=md5:" + "0" * 32):
        resp = await dp.http.put(f"{location}{query}")
        assert resp.status == 400
        assert await _error_code(resp) == "DIGEST_INVALID"


async def test_sha512_blobs(dp: DataPath) -> None:
    data = os.urandom(2 * CHUNK + 99)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    # Monolithic: hashed with sha512 while streaming.
    resp = await dp.http.post(f"/v2/lib/app/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(dp, "lib/app", digest) == data
    # Chunked: PATCHes hash sha256; the PUT re-reads the stored bytes for sha512.
    location = await _start(dp, "lib/other")
    await dp.http.patch(location, data=data[: CHUNK + 7])
    resp = await dp.http.put(f"{location}?digest={digest}", data=data[CHUNK + 7 :])
    assert resp.status == 201
    assert await _blob(dp, "lib/other", digest) == data


async def test_mount(dp: DataPath) -> None:
    data = os.urandom(100)
    digest = digest_of(data)
    resp = await dp.http.post(f"/v2/src/repo/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    resp = await dp.http.post(f"/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo")
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/dst/repo/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await _blob(dp, "dst/repo", digest) == data
    for query in (
        f"mount={digest}&from=nowhere/else",
        f"mount={digest}",
        "mount=sha256:bad&from=src/repo",
        f"mount={digest}&from=BAD",
    ):
        resp = await dp.http.post(f"/v2/third/repo/blobs/uploads/?{query}")
        assert resp.status == 202, query
        assert resp.headers["Range"] == "0-0"


async def test_cancel(dp: DataPath) -> None:
    location = await _start(dp)
    await dp.http.patch(location, data=b"abc")
    resp = await dp.http.delete(location)
    assert resp.status == 204
    for method in ("GET", "PATCH", "DELETE"):
        resp = await dp.http.request(method, location, data=b"x")
        assert resp.status == 404, method
        assert await _error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    resp = await dp.http.put(f"{location}?digest={digest_of(b'abc')}")
    assert resp.status == 404


async def test_forged_foreign_and_closed_ids_are_unknown(dp: DataPath) -> None:
    location = await _start(dp, "lib/app")
    upload = location.rsplit("/", 1)[1]
    for path in (
        f"/v2/lib/app/blobs/uploads/{upload[:-2]}AA",
        "/v2/lib/app/blobs/uploads/not-an-id",
        f"/v2/lib/other/blobs/uploads/{upload}",
    ):
        resp = await dp.http.get(path)
        assert resp.status == 404, path
        assert await _error_code(resp) == "BLOB_UPLOAD_UNKNOWN"
    data = b"done"
    await dp.http.put(f"{location}?digest={digest_of(data)}", data=data)
    resp = await dp.http.patch(location, data=b"more")
    assert resp.status == 404


async def test_unknown_query_parameters_are_ignored(dp: DataPath) -> None:
    location = await _start(dp)
    resp = await dp.http.patch(f"{location}?_state=xyz&origin=a", data=b"abc")
    assert resp.status == 202
    assert resp.headers["Location"] == location


async def test_another_gateway_continues_the_upload(dp: DataPath) -> None:
    data = os.urandom(3 * CHUNK + 500)
    location = await _start(dp)
    resp = await dp.http.patch(location, data=data[: CHUNK + 100])
    assert resp.status == 202
    async for other, _ in gateway_client(dp.cfg):  # a second gateway: no running hash
        resp = await other.patch(location, data=data[CHUNK + 100 : 2 * CHUNK])
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{2 * CHUNK - 1}"
    # Back on the first gateway, whose cached hash is now behind Raft's offset.
    resp = await dp.http.put(f"{location}?digest={digest_of(data)}", data=data[2 * CHUNK :])
    assert resp.status == 201
    assert await _blob(dp, "lib/app", digest_of(data)) == data


async def _disconnect_mid_patch(
    host: str, port: int, location: str, framing: bytes, dp: DataPath
) -> None:
    puts = sum(n.puts for n in dp.nodes.nodes)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"PATCH " + location.encode() + b" HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
    body = os.urandom(3 * CHUNK)
    writer.write(body if b"Length" in framing else b"%x\r\n" % len(body) + body)
    await writer.drain()
    # Wait until the gateway has stored some of the bytes, then vanish.
    await eventually(
        lambda: sum(n.puts for n in dp.nodes.nodes) >= puts + 2 * 2,
        "chunks of the partial body stored",
    )
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 500000\r\n", b"Transfer-Encoding: chunked\r\n"]
)
async def test_client_disconnect_mid_patch_commits_nothing(
    dp: DataPath, caplog: pytest.LogCaptureFixture, framing: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="cargohold.gateway.uploads")
    location = await _start(dp)
    resp = await dp.http.patch(location, data=b"a" * 100)
    assert resp.status == 202
    async for url in production_server(dp.cfg, dp.cluster):
        host, port = url.removeprefix("http://").split(":")
        await _disconnect_mid_patch(host, int(port), location, framing, dp)
        # The handler notices the lost client, drops the partial body and commits nothing.
        await eventually(
            lambda: any(r.getMessage() == "upload.body_incomplete" for r in caplog.records),
            "handler saw the lost client",
        )
    resp = await dp.http.get(location)
    assert resp.status == 204
    assert resp.headers["Range"] == "0-99"
    assert [op for op, _ in dp.nodes.state.commands] == ["upload_append"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The session continues normally afterwards.
    resp = await dp.http.put(f"{location}?digest={digest_of(b'a' * 100 + b'c')}", data=b"c")
    assert resp.status == 201


async def test_cancelled_handler_mid_patch_commits_nothing(dp: DataPath) -> None:
    # aiohttp's TestServer cancels handlers of vanished clients: that path must hold too.
    location = await _start(dp)
    server = dp.http.server
    assert server.host is not None and server.port is not None
    await _disconnect_mid_patch(
        server.host, server.port, location, b"Content-Length: 500000\r\n", dp
    )
    resp = await dp.http.get(location)
    assert resp.status == 204 and resp.headers["Range"] == "0-0"
    assert dp.nodes.state.commands == []


async def test_blob_size_limit() -> None:
    async for dp in data_path(3, gateway__max_blob_size=1000):
        location = await _start(dp)
        resp = await dp.http.patch(location, data=b"x" * 600)
        assert resp.status == 202
        resp = await dp.http.patch(location, data=b"x" * 600)
        assert resp.status == 400
        assert await _error_code(resp) == "SIZE_INVALID"
        resp = await dp.http.get(location)
        assert resp.headers["Range"] == "0-599"


async def test_r1_single_node() -> None:
    async for dp in data_path(1):
        data = os.urandom(2 * CHUNK + 1)
        resp = await dp.http.post(f"/v2/a/blobs/uploads/?digest={digest_of(data)}", data=data)
        assert resp.status == 201
        assert await _blob(dp, "a", digest_of(data)) == data


async def _push_streamed(dp: DataPath, data: bytes) -> int:
    location = await _start(dp)
    resp = await dp.http.patch(location, data=_body(data))
    assert resp.status == 202
    resp = await dp.http.put(f"{location}?digest={digest_of(data)}")
    return resp.status


async def test_concurrent_uploads_share_a_tiny_global_write_budget() -> None:
    async for dp in data_path(3, gateway__chunk_writes_in_flight_total=1):
        blobs = [os.urandom(3 * CHUNK + i) for i in range(4)]
        statuses = await asyncio.gather(*(_push_streamed(dp, b) for b in blobs))
        assert statuses == [201] * 4
        assert dp.cluster.write_slots._value == 1  # every slot came back
        for data in blobs:
            assert await _blob(dp, "lib/app", digest_of(data)) == data
