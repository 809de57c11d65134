"""A bounded, seeded fuzz run of the `/v2/` API against a real dev cluster.

5,000+ requests with random methods, paths (valid and broken names, references,
digests, upload ids), query strings, headers (Range, Content-Range, Content-Type,
request ids) and bodies (random bytes, mutated manifests, deep nesting, huge numbers),
plus raw malformed HTTP on bare sockets. Asserted: no 5xx, no process died, no request
went unanswered for 10 s (the client timeout: a hang guard, not a timing assertion).
`CARGOHOLD_FUZZ_SEED` replays a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from yarl import URL

from cargohold_cli.devcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REQUESTS = 6000
RAW_EVERY = 10  # one request in this many is raw bytes on a bare socket
WORKERS = 12
_TIMEOUT = 10.0
SEED = int(os.environ.get("CARGOHOLD_FUZZ_SEED", "20261203"))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Corpus:
    """What the generator draws from: real names, blobs, uploads, and broken variants."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.repos = ["fuzz/a", "fuzz/b", "fuzz/deep/c"]
        self.config = b'{"architecture":"amd64","os":"linux"}'
        self.layer = os.urandom(3000)
        self.digests = [sha(self.config), sha(self.layer), sha(b"absent")]
        self.uploads: list[str] = []

    def pick(self, items: list[Any]) -> Any:
        return items[self.rng.randrange(len(items))]

    def name(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return self.pick(self.repos)
        return self.pick(
            [
                "UPPER/case",
                "a//b",
                "-lead",
                "x" * 300,
                "ok/repo%0A",
                "ok/%00nul",
                "../../etc",
                "ok/r%C3%A9po",
                "a/" * 60 + "z",
                "_catalog",
                "",
            ]
        )

    def digest(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.pick(self.digests)
        return self.pick(
            [
                "sha256:" + "a" * 64 + "%0A",
                "sha256:" + "A" * 64,
                "sha256:abc",
                "sha512:" + "0" * 128,
                "md5:" + "0" * 32,
                "sha256:" + "9" * 5000,
                "sha256%3A" + "0" * 64,
                "",
                "sha256:" + "g" * 64,
            ]
        )

    def reference(self) -> str:
        if self.rng.random() < 0.4:
            return self.digest()
        return self.pick(
            ["latest", "v1", "latest%0A", "-bad", "a" * 129, "t@g", "%00", "v1.2_3-x", "%20"]
        )

    def number(self) -> str:
        return self.pick(
            ["0", "1", "5", "-1", "9" * 5000, "1" * 19, "1e3", "\u0661", "", "0x10", " 7"]
        )

    def manifest(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(self.config),
                "size": len(self.config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(self.layer),
                    "size": len(self.layer),
                }
            ],
        }
        mutation = self.rng.randrange(12)
        if mutation == 0:
            doc["subject"] = {"mediaType": "x/y", "digest": self.digest(), "size": 1}
        elif mutation == 1:
            doc["layers"][0]["size"] = int("9" * 300)
        elif mutation == 2:
            doc["annotations"] = {"k": self.rng.random()}
        elif mutation == 3:
            doc["mediaType"] = self.pick(["", 5, None, "application/json", "x" * 1000])
        elif mutation == 4:
            doc["schemaVersion"] = self.pick([1, 3, "2", True, None])
        elif mutation == 5:
            del doc["config"]
        elif mutation == 6:
            doc["manifests"] = [doc["config"]] * 3
        elif mutation == 7:
            return b"[" * 50_000 + b"]" * 50_000
        elif mutation == 8:
            return json.dumps(doc).encode().replace(b"3000", b"3" * 5000)
        elif mutation == 9:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(200)))
        elif mutation == 10:
            return json.dumps(doc).encode()[: self.rng.randrange(40, 200)]
        return json.dumps(doc).encode()

    def body(self) -> bytes:
        kind = self.rng.randrange(6)
        if kind == 0:
            return b""
        if kind == 1:
            return self.manifest()
        if kind == 2:
            return self.layer[: self.rng.randrange(len(self.layer))]
        if kind == 3:
            return os.urandom(self.rng.randrange(1, 70_000))
        if kind == 4:
            return self.config
        return b"{}"


def generate(corpus: Corpus) -> tuple[str, str, dict[str, str], bytes]:
    """One request: (method, raw path with query, headers, body)."""
    rng = corpus.rng
    name = corpus.name()
    upload = corpus.pick(corpus.uploads) if corpus.uploads and rng.random() < 0.7 else None
    upload_path = upload or f"/v2/{name}/blobs/uploads/{corpus.pick(['x', 'A' * 56, '%0A', ''])}"
    # Each path with the methods its route serves (used 3 times in 4), else any method.
    routes: list[tuple[str, list[str]]] = [
        ("/v2/", ["GET", "HEAD"]),
        ("/v2", ["GET"]),
        (f"/v2/_catalog?n={corpus.number()}&last={corpus.name()}", ["GET"]),
        (f"/v2/{name}/tags/list?n={corpus.number()}", ["GET", "HEAD"]),
        (f"/v2/{name}/manifests/{corpus.reference()}", ["GET", "HEAD", "PUT", "DELETE"]),
        (f"/v2/{name}/manifests/{corpus.digest()}?tag={corpus.reference()}&tag=b", ["PUT"]),
        (f"/v2/{name}/blobs/{corpus.digest()}", ["GET", "HEAD", "DELETE"]),
        (f"/v2/{name}/blobs/uploads/", ["POST"]),
        (f"/v2/{name}/blobs/uploads/?digest={corpus.digest()}", ["POST"]),
        (f"/v2/{name}/blobs/uploads/?mount={corpus.digest()}&from={corpus.name()}", ["POST"]),
        (upload_path, ["GET", "PATCH", "PATCH", "PUT", "DELETE"]),
        (f"{upload_path}?digest={corpus.digest()}", ["PUT"]),
        (f"/v2/{name}/referrers/{corpus.digest()}?artifactType={corpus.name()}", ["GET"]),
        ("/v2/" + "%" * rng.randrange(1, 4), ["GET"]),
        ("/metrics", ["GET"]),
        ("/" + "a" * rng.randrange(1, 3000), ["GET"]),
    ]
    path, natural = corpus.pick(routes)
    method = (
        corpus.pick(natural)
        if rng.random() < 0.75
        else corpus.pick(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "BREW"])
    )
    headers: dict[str, str] = {"X-Request-Id": corpus.pick(["fuzz-1", "x" * 100, "a b", "ok"])}
    if rng.random() < 0.4:
        headers["Range"] = corpus.pick(
            [
                "bytes=0-10",
                "bytes=500-0",
                "bytes=-5",
                "bytes=" + "9" * 5000 + "-",
                "bytes=0-1,3-4",
                "items=1-2",
                "bytes=-",
                f"bytes={corpus.number()}-{corpus.number()}",
            ]
        )
    if rng.random() < 0.4:
        headers["Content-Range"] = corpus.pick(
            ["0-9", "bytes 0-9/10", "10-5", "0-" + "9" * 5000, "x", "0-0", "5-"]
        )
    if rng.random() < 0.5:
        headers["Content-Type"] = corpus.pick(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/json; charset=utf-8",
                "text/plain",
                "a" * 500,
            ]
        )
    return method, path, headers, corpus.body() if method in ("PUT", "POST", "PATCH") else b""


RAW = [
    b"GET /v2/\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /v2/ HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /v2/fuzz/a/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: " + b"h" * 9000 + b"\r\n\r\n",
    b"PATCH /v2/fuzz/a/blobs/uploads/x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"GET /v2/%zz HTTP/1.1\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
]


async def raw_request(host: str, port: int, data: bytes) -> int | None:
    """Send raw bytes; the status the gateway answered, None if it only closed."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), _TIMEOUT)
    finally:
        writer.close()
    if not answer:
        return None
    parts = answer.split(b" ", 2)
    assert parts[0].startswith(b"HTTP/1."), answer[:100]
    return int(parts[1])


async def _prepare(http: aiohttp.ClientSession, base: str, corpus: Corpus) -> None:
    """Real blobs and upload sessions, so that the fuzzed requests reach deep code."""
    # Ready once the gateway has learned a leader (its view refreshes every few seconds).
    for _ in range(60):
        async with http.get(f"{base}/readyz") as resp:
            if resp.status == 200:
                break
            assert resp.status == 503
        await asyncio.sleep(0.5)
    assert resp.status == 200, await resp.text()
    for repo in corpus.repos:
        for blob in (corpus.config, corpus.layer):
            url = f"{base}/v2/{repo}/blobs/uploads/?digest={sha(blob)}"
            async with http.post(url, data=blob) as resp:
                assert resp.status == 201, await resp.text()
        for _ in range(5):
            async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
                assert resp.status == 202
                corpus.uploads.append(resp.headers["Location"])


async def _fuzz(host: str, port: int) -> dict[str, Any]:
    base = f"http://{host}:{port}"
    rng = random.Random(SEED)
    corpus = Corpus(rng)
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await _prepare(http, base, corpus)
        plan: list[Any] = [
            ("raw", corpus.pick(RAW)) if i % RAW_EVERY == 0 else generate(corpus)
            for i in range(REQUESTS)
        ]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        server_errors: list[str] = []
        hung: list[str] = []
        statuses: dict[int, int] = {}

        async def worker() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                try:
                    if item[0] == "raw":
                        status = await raw_request(host, port, item[1])
                        what = repr(item[1][:80])
                    else:
                        method, path, headers, body = item
                        what = f"{method} {path[:120]} {headers}"
                        url = URL(base + path, encoded=True)
                        async with http.request(method, url, headers=headers, data=body) as resp:
                            await resp.read()
                            status = resp.status
                except TimeoutError:
                    hung.append(what)
                    continue
                except aiohttp.ClientError as exc:
                    # The gateway may close a connection it answered (Connection: close)
                    # or refused to parse; a reset is not a 5xx, but keep counting.
                    statuses[-1] = statuses.get(-1, 0) + 1
                    del exc
                    continue
                if status is not None:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status >= 500:
                        server_errors.append(f"{status} {what}")

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return {"errors": server_errors, "hung": hung, "statuses": statuses}


def test_fuzz_v2_routes(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    url = urlsplit(cluster.gateway_url)
    result = asyncio.run(_fuzz(url.hostname or "127.0.0.1", url.port or 80))
    statuses = result["statuses"]
    print(f"seed {SEED}: statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) + len(result["hung"]) >= 5000
    assert not result["errors"], result["errors"][:20]
    assert not result["hung"], result["hung"][:20]
    dead = [p.args for p in [*cluster.node_procs, *cluster.gateway_procs] if p and p.poll()]
    assert not dead, cluster.tail_logs()
    # Transport errors (connections the gateway closed) stay a small minority.
    assert statuses.get(-1, 0) < REQUESTS // 20, statuses
