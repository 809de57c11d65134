"""Blob uploads and reads against real node and gateway processes (LocalCluster).

The shared suite-wide cluster (3 nodes, R=3, W=2, two gateways A and B) serves the protocol
edges; a private cluster serves the gateway-restart test. Read-after-write goes through
the other gateway wherever it matters (invariant 2), and uploads move between gateways
(invariant 5). Raw `http.client` sends chunked bodies without Content-Length, as docker
does; raw sockets play a client that vanishes mid-PATCH.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client as httplib
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster

pytestmark = pytest.mark.cluster

CHUNK = 4 * 1024 * 1024  # LocalCluster's default chunk size


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def a(cluster: LocalCluster) -> str:
    return cluster.gateway_urls[0]


@pytest.fixture
def b(cluster: LocalCluster) -> str:
    return cluster.gateway_urls[-1]


async def _code(resp: aiohttp.ClientResponse) -> str:
    return str((await resp.json())["errors"][0]["code"])


async def _start(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == "0-0"
        assert resp.headers["Docker-Upload-UUID"]
        return resp.headers["Location"]


def _stream_patch(
    base: str, location: str, data: bytes, piece: int = 256 * 1024
) -> tuple[int, dict[str, str]]:
    """PATCH with chunked transfer encoding, no Content-Length/Content-Range (docker)."""
    host, port = base.removeprefix("http://").split(":")
    conn = httplib.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(
            "PATCH",
            location,
            body=(data[i : i + piece] for i in range(0, len(data), piece)),
            encode_chunked=True,
            headers={"Transfer-Encoding": "chunked"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.headers)
    finally:
        conn.close()


async def _get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, bytes, Any]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_docker_style_push_then_immediate_head_elsewhere(
    http: aiohttp.ClientSession, a: str, b: str, repo_name: str
) -> None:
    data = os.urandom(2 * CHUNK + 12345)
    digest = sha256(data)
    location = await _start(http, a, repo_name)
    status, headers = await asyncio.to_thread(_stream_patch, a, location, data)
    assert status == 202
    assert headers["Range"] == f"0-{len(data) - 1}"
    assert headers["Location"] == location
    async with http.put(f"{a}{location}", params={"digest": digest}) as resp:
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Location"] == f"/v2/{repo_name}/blobs/{digest}"
    async with http.head(f"{b}/v2/{repo_name}/blobs/{digest}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Docker-Content-Digest"] == digest
    status, body, _ = await _get(http, f"{b}/v2/{repo_name}/blobs/{digest}")
    assert status == 200 and body == data


async def test_content_range_patches_416_and_size_invalid(
    http: aiohttp.ClientSession, a: str, b: str, repo_name: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    piece = 1024 * 1024
    location = await _start(http, a, repo_name)
    for i, start in enumerate(range(0, len(data), piece)):
        chunk = data[start : start + piece]
        base = (a, b)[i % 2]  # alternate gateways: each must continue the other's upload
        async with http.patch(
            f"{base}{location}",
            data=chunk,
            headers={
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
                "Content-Type": "application/octet-stream",
            },
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{start + len(chunk) - 1}"
    async with http.patch(
        f"{a}{location}", data=b"x" * 10, headers={"Content-Range": "0-9"}
    ) as resp:
        assert resp.status == 416
        assert resp.headers["Location"] == location
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
    async with http.patch(
        f"{a}{location}", data=b"x" * 10, headers={"Content-Range": f"{len(data)}-{len(data) + 19}"}
    ) as resp:
        assert resp.status == 400
        assert await _code(resp) == "SIZE_INVALID"
    async with http.get(f"{b}{location}") as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == f"0-{len(data) - 1}"
    async with http.put(f"{b}{location}", params={"digest": sha256(data)}) as resp:
        assert resp.status == 201
    status, body, _ = await _get(http, f"{a}/v2/{repo_name}/blobs/{sha256(data)}")
    assert status == 200 and body == data


async def test_streamed_patches_and_put_on_a_gateway_that_missed_appends(
    http: aiohttp.ClientSession, a: str, b: str, repo_name: str
) -> None:
    """A gateway skips the session read when it holds the session (it answered the POST or
    the last PATCH); another gateway appending meanwhile makes that entry stale. A streamed
    PATCH there still goes at the real end, and a PUT there checks the whole session."""
    parts = [os.urandom(CHUNK + 1000), os.urandom(300_000), os.urandom(CHUNK // 2)]
    data = b"".join(parts)
    location = await _start(http, a, repo_name)
    status, _ = await asyncio.to_thread(_stream_patch, a, location, parts[0])
    assert status == 202
    status, _ = await asyncio.to_thread(_stream_patch, b, location, parts[1])
    assert status == 202
    # A's entry covers parts[0] only: its append must land after parts[1].
    status, headers = await asyncio.to_thread(_stream_patch, a, location, parts[2])
    assert status == 202
    assert headers["Range"] == f"0-{len(data) - 1}"
    # B's entry covers parts[0..1] only: a wrong digest is still refused...
    async with http.put(f"{b}{location}", params={"digest": sha256(parts[0])}) as resp:
        assert resp.status == 400
        assert await _code(resp) == "DIGEST_INVALID"
    # ...and the right one, over every byte the session holds, commits.
    async with http.put(f"{b}{location}", params={"digest": sha256(data)}) as resp:
        assert resp.status == 201, await resp.text()
    status, body, _ = await _get(http, f"{a}/v2/{repo_name}/blobs/{sha256(data)}")
    assert status == 200 and body == data

    # A PUT with a last piece on a gateway whose entry missed another gateway's PATCH.
    location = await _start(http, a, repo_name)
    status, _ = await asyncio.to_thread(_stream_patch, a, location, parts[1])
    assert status == 202
    status, _ = await asyncio.to_thread(_stream_patch, b, location, parts[0])
    assert status == 202
    whole = parts[1] + parts[0] + parts[2]
    async with http.put(f"{a}{location}", params={"digest": sha256(whole)}, data=parts[2]) as resp:
        assert resp.status == 201, await resp.text()
    status, body, _ = await _get(http, f"{b}/v2/{repo_name}/blobs/{sha256(whole)}")
    assert status == 200 and body == whole


async def test_monolithic_uploads_mount_and_digest_errors(
    http: aiohttp.ClientSession, a: str, b: str, repo_name: str
) -> None:
    data = os.urandom(CHUNK + 99)
    digest = sha256(data)
    async with http.post(
        f"{a}/v2/{repo_name}/blobs/uploads/", params={"digest": digest}, data=data
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
    # POST then one monolithic PUT (containerd), on the other gateway.
    location = await _start(http, b, repo_name + "-2")
    async with http.put(f"{b}{location}", params={"digest": digest}, data=data) as resp:
        assert resp.status == 201
    # Mount: 201 when the source has it; otherwise a plain session.
    async with http.post(
        f"{b}/v2/{repo_name}-3/blobs/uploads/", params={"mount": digest, "from": repo_name}
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
    status, body, _ = await _get(http, f"{a}/v2/{repo_name}-3/blobs/{digest}")
    assert status == 200 and body == data
    for params in ({"mount": digest, "from": "nowhere/at-all"}, {"mount": digest}):
        async with http.post(f"{a}/v2/{repo_name}-4/blobs/uploads/", params=params) as resp:
            assert resp.status == 202
    # Wrong digests commit nothing.
    async with http.post(
        f"{a}/v2/{repo_name}-5/blobs/uploads/", params={"digest": sha256(b"other")}, data=data
    ) as resp:
        assert resp.status == 400
        assert await _code(resp) == "DIGEST_INVALID"
    location = await _start(http, a, repo_name + "-5")
    async with http.put(f"{a}{location}", params={"digest": sha256(b"other")}, data=data) as resp:
        assert resp.status == 400
    status, _, _ = await _get(http, f"{b}/v2/{repo_name}-5/blobs/{digest}")
    assert status == 404


async def test_sha512_blobs(http: aiohttp.ClientSession, a: str, b: str, repo_name: str) -> None:
    data = os.urandom(CHUNK + 4321)
    digest = sha512(data)
    async with http.post(
        f"{a}/v2/{repo_name}/blobs/uploads/", params={"digest": digest}, data=data
    ) as resp:
        assert resp.status == 201
    location = await _start(http, a, repo_name + "-x")
    async with http.patch(f"{a}{location}", data=data[:1000]) as resp:
        assert resp.status == 202
    async with http.put(f"{b}{location}", params={"digest": digest}, data=data[1000:]) as resp:
        assert resp.status == 201
    for repo in (repo_name, repo_name + "-x"):
        status, body, headers = await _get(http, f"{b}/v2/{repo}/blobs/{digest}")
        assert status == 200 and body == data
        assert headers["Docker-Content-Digest"] == digest


async def test_cancel_status_and_blob_delete(
    http: aiohttp.ClientSession, a: str, b: str, repo_name: str
) -> None:
    location = await _start(http, a, repo_name)
    async with http.patch(f"{a}{location}", data=b"abc") as resp:
        assert resp.status == 202
    async with http.delete(f"{b}{location}") as resp:
        assert resp.status == 204
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{a}{location}") as resp:
            assert resp.status == 404
            assert await _code(resp) == "BLOB_UPLOAD_UNKNOWN"
    data = os.urandom(1000)
    async with http.post(
        f"{a}/v2/{repo_name}/blobs/uploads/", params={"digest": sha256(data)}, data=data
    ) as resp:
        assert resp.status == 201
    async with http.delete(f"{a}/v2/{repo_name}/blobs/{sha256(data)}") as resp:
        assert resp.status == 202
    status, _, _ = await _get(http, f"{b}/v2/{repo_name}/blobs/{sha256(data)}")
    assert status == 404


async def test_ranges(http: aiohttp.ClientSession, a: str, b: str, repo_name: str) -> None:
    data = os.urandom(CHUNK + 100)
    digest = sha256(data)
    async with http.post(
        f"{a}/v2/{repo_name}/blobs/uploads/", params={"digest": digest}, data=data
    ) as resp:
        assert resp.status == 201
    url = f"{b}/v2/{repo_name}/blobs/{digest}"
    for header, start, end in [
        (f"bytes={CHUNK - 5}-{CHUNK + 5}", CHUNK - 5, CHUNK + 6),
        (f"bytes={CHUNK}-", CHUNK, len(data)),
        ("bytes=-10", len(data) - 10, len(data)),
        ("bytes=7-999999999", 7, len(data)),
    ]:
        status, body, headers = await _get(http, url, headers={"Range": header})
        assert status == 206
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
        assert body == data[start:end]
    status, _, headers = await _get(http, url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"


def _vanish_mid_patch(base: str, location: str, sent: int, framing: str) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n"
        body = os.urandom(sent)
        if "chunked" in framing:
            body = b"%x\r\n" % len(body) + body
        sock.sendall(head.encode() + body)


async def test_client_vanishing_mid_patch_commits_nothing(
    http: aiohttp.ClientSession, cluster: LocalCluster, a: str, b: str, repo_name: str
) -> None:
    location = await _start(http, a, repo_name)
    async with http.patch(f"{a}{location}", data=b"a" * 100) as resp:
        assert resp.status == 202
    for framing in (f"Content-Length: {3 * CHUNK}", "Transfer-Encoding: chunked"):
        await asyncio.to_thread(_vanish_mid_patch, a, location, 2 * CHUNK + 10, framing)
    async with http.get(f"{b}{location}") as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == "0-99"
    # The gateway is fine and the session continues.
    async with http.put(
        f"{a}{location}", params={"digest": sha256(b"a" * 100 + b"z")}, data=b"z"
    ) as resp:
        assert resp.status == 201
    # Quiet: nothing about this upload (the shared cluster's log also holds other tests').
    upload = location.rsplit("/", 1)[1]
    log = (cluster.base_dir / "logs" / "gateway-1.log").read_text(errors="replace")
    assert not [
        line
        for line in log.splitlines()
        if upload in line and ("level=error" in line or "level=warning" in line)
    ]
    for module in ("gateway/uploads.py", "gateway/chunking.py", "gateway/cluster/"):
        assert module not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_gateway_restart_between_patch_and_put(
    http: aiohttp.ClientSession, make_cluster: Callable[..., LocalCluster], sig: signal.Signals
) -> None:
    private = make_cluster(nodes=1, gateways=1)
    base = private.gateway_url
    data = os.urandom(CHUNK + 5000)
    location = await _start(http, base, "restart/me")
    status, _ = await asyncio.to_thread(_stream_patch, base, location, data[: CHUNK + 10])
    assert status == 202, private.tail_logs()
    await asyncio.to_thread(private.restart_gateway, 0, sig)
    await asyncio.to_thread(private.wait_ready, 60)
    # The new process has no running hash: it rebuilds it from the stored chunks. (A new
    # client session: a kept-alive connection to the old process would be a client-side
    # failure, not the gateway's.)
    async with aiohttp.ClientSession() as fresh:
        async with fresh.put(
            f"{base}{location}", params={"digest": sha256(data)}, data=data[CHUNK + 10 :]
        ) as resp:
            assert resp.status == 201, (await resp.text()) + private.tail_logs()
        status, body, _ = await _get(fresh, f"{base}/v2/restart/me/blobs/{sha256(data)}")
    assert status == 200 and body == data, private.tail_logs()


@pytest.mark.chaos
async def test_patch_survives_gateway_and_node_sigkill(
    http: aiohttp.ClientSession, make_cluster: Callable[..., LocalCluster]
) -> None:
    # Invariant 5 + 1: bytes acknowledged by a PATCH 202 outlive their gateway and any
    # one node; another gateway finishes the upload, rebuilding the hash from replicas.
    local = make_cluster(nodes=3, gateways=2)
    first, second = local.gateway_urls
    data = os.urandom(2 * CHUNK + 999)
    location = await _start(http, first, "survive/it")
    status, _ = await asyncio.to_thread(_stream_patch, first, location, data[: CHUNK + 3])
    assert status == 202
    await asyncio.to_thread(local.kill_gateway, 0)
    await asyncio.to_thread(local.kill_node, 0)
    # n1 may have led: this PATCH is about surviving bytes, not about riding an election (a
    # gateway answers 503 when none is done within its metadata attempts).
    await asyncio.to_thread(local.wait_ready)
    status, _ = await asyncio.to_thread(
        _stream_patch, second, location, data[CHUNK + 3 : 2 * CHUNK]
    )
    assert status == 202
    async with http.put(
        f"{second}{location}", params={"digest": sha256(data)}, data=data[2 * CHUNK :]
    ) as resp:
        assert resp.status == 201, await resp.text()
    status, body, _ = await _get(http, f"{second}/v2/survive/it/blobs/{sha256(data)}")
    assert status == 200 and body == data


@pytest.mark.chaos
async def test_one_node_lost_loses_nothing_and_pushes_continue(
    http: aiohttp.ClientSession, make_cluster: Callable[..., LocalCluster]
) -> None:
    local = make_cluster(nodes=3, gateways=1)
    base = local.gateway_url
    data = os.urandom(2 * CHUNK + 77)
    async with http.post(
        f"{base}/v2/keep/me/blobs/uploads/", params={"digest": sha256(data)}, data=data
    ) as resp:
        assert resp.status == 201
    location = await _start(http, base, "keep/me")
    async with http.patch(f"{base}{location}", data=data[: CHUNK + 1]) as resp:
        assert resp.status == 202
    leader = local.leader_index()
    assert leader is not None
    await asyncio.to_thread(local.kill_node, leader)  # SIGKILL the Raft leader
    status, body, _ = await _get(http, f"{base}/v2/keep/me/blobs/{sha256(data)}")
    assert status == 200 and body == data
    # The upload begun before the loss completes (rebuilding nothing: same gateway).
    async with http.put(
        f"{base}{location}", params={"digest": sha256(data)}, data=data[CHUNK + 1 :]
    ) as resp:
        assert resp.status == 201, await resp.text()
    other = os.urandom(CHUNK + 3)
    async with http.post(
        f"{base}/v2/keep/me/blobs/uploads/", params={"digest": sha256(other)}, data=other
    ) as resp:
        assert resp.status == 201, await resp.text()
    status, body, _ = await _get(http, f"{base}/v2/keep/me/blobs/{sha256(other)}")
    assert status == 200 and body == other


async def test_small_edges(http: aiohttp.ClientSession, a: str, b: str, repo_name: str) -> None:
    # Empty blob, through POST + PUT without body.
    location = await _start(http, a, repo_name)
    empty = sha256(b"")
    async with http.put(f"{b}{location}", params={"digest": empty}) as resp:
        assert resp.status == 201
    async with http.head(f"{a}/v2/{repo_name}/blobs/{empty}") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "0"
    # PUT without a (valid) digest.
    location = await _start(http, a, repo_name)
    for params in ({}, {"digest": "sha256:short"}):
        async with http.put(f"{a}{location}", params=params) as resp:
            assert resp.status == 400
            assert await _code(resp) == "DIGEST_INVALID"
    # Unknown query parameters are ignored; Location keeps none.
    async with http.patch(
        f"{b}{location}", params={"_state": "x", "origin": "y"}, data=b"hello"
    ) as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == location
    # Forged, foreign-repository and malformed ids are unknown on every gateway.
    upload = location.rsplit("/", 1)[1]
    for path in (
        f"/v2/{repo_name}/blobs/uploads/{upload[:-3]}AAA",
        f"/v2/{repo_name}-other/blobs/uploads/{upload}",
        f"/v2/{repo_name}/blobs/uploads/nonsense",
    ):
        for base in (a, b):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 404
                assert await _code(resp) == "BLOB_UPLOAD_UNKNOWN"
    # Names are validated.
    async with http.post(f"{a}/v2/Not_Valid/blobs/uploads/") as resp:
        assert resp.status == 400
        assert await _code(resp) == "NAME_INVALID"
    async with http.get(f"{a}/v2/{repo_name}/blobs/sha256:nothex") as resp:
        assert resp.status == 400
        assert await _code(resp) == "DIGEST_INVALID"
