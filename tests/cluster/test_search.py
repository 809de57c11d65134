"""The search API (docs/search.md) on a real token-mode cluster: a prepared set of images
(names, config labels, platforms, annotations, push times) pushed through one gateway,
searched through the other, returns exactly the documented results; each caller sees only
what it may pull (cluster admin, a namespace reader, anonymous); a deleted tag leaves the
results at once; a node restarted from its snapshot and log rebuilds the index and answers
the same; `podman search` (when installed) lists what the catalog shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.test_auth_roles import admin
from cluster.token_client import TokenClient
from gateway.auth.keys import generate_signing_key

pytestmark = pytest.mark.cluster

SEARCH = "/_cargohold/api/v1/search"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image(
    seed: str, arch: str, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> tuple[list[bytes], bytes]:
    """(blobs, manifest) of a one-layer image with that platform, labels and annotations."""
    config = json.dumps(
        {"architecture": arch, "os": "linux", "config": {"Labels": labels}, "seed": seed}
    ).encode()
    layer = hashlib.sha256(seed.encode()).digest() * 64
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha(layer),
                "size": len(layer),
            }
        ],
    }
    if annotations:
        doc["annotations"] = annotations
    return [config, layer], json.dumps(doc).encode()


async def push(client: TokenClient, repo: str, tag: str, blobs: list[bytes], body: bytes) -> None:
    for data in blobs:
        status, _h, text = await client.request(
            "POST", f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", data=data
        )
        assert status == 201, text
    status, _h, text = await client.request(
        "PUT",
        f"/v2/{repo}/manifests/{tag}",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, text


async def search(
    http: aiohttp.ClientSession, base: str, auth: aiohttp.BasicAuth | None, **params: Any
) -> dict[str, Any]:
    async with http.get(base + SEARCH, params=params, auth=auth) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def refs(body: dict[str, Any]) -> list[str]:
    return [f"{i['repository']}:{i['tag']}" for i in body["items"]]


# The prepared set, in push order: (repo, tag, arch, labels, annotations).
VENDOR = "org.opencontainers.image.vendor"
SOURCE = "org.opencontainers.image.source"
PREPARED = [
    ("team/web", "1.0", "amd64", {VENDOR: "acme", "tier": "web"}, None),
    ("team/web", "2.0", "arm64", {VENDOR: "acme", "tier": "web"}, None),
    ("team/api", "latest", "amd64", {VENDOR: "acme", SOURCE: "https://git/api"}, None),
    ("pub/base", "bookworm", "amd64", {VENDOR: "debian"}, {"org.example.lts": "yes"}),
    ("pub/base", "trixie", "arm64", {VENDOR: "debian"}, None),
    ("secret/db", "16", "amd64", {"tier": "db"}, None),
]


async def test_search_on_a_cluster(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    auth = {"mode": "token", "signing_key": str(key), "directory_refresh_seconds": 0.5}
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    await admin(cluster, "users", "add", "boss", "--admin", "--password-stdin", stdin="boss\n")
    await admin(cluster, "users", "add", "rita", "--password-stdin", stdin="rita-pw\n")
    await admin(cluster, "namespaces", "add", "team")
    await admin(cluster, "namespaces", "add", "pub", "public")
    await admin(cluster, "namespaces", "grant", "team", "rita", "reader")
    first, second = cluster.gateway_urls
    boss = TokenClient(http, first, "boss", "boss")
    marks: list[float] = []
    for repo, tag, arch, labels, notes in PREPARED:
        marks.append(time.time())
        blobs, body = image(f"{repo}:{tag}", arch, labels, notes)
        await push(boss, repo, tag, blobs, body)
        await asyncio.sleep(0.05)  # distinct push times

    as_boss = aiohttp.BasicAuth("boss", "boss")
    as_rita = aiohttp.BasicAuth("rita", "rita-pw")
    everything = [f"{r}:{t}" for r, t, *_ in sorted(PREPARED, key=lambda p: (p[0], p[1]))]
    assert refs(await search(http, second, as_boss)) == everything
    # Role filtering: rita reads team and the public pub; anonymous only pub.
    assert refs(await search(http, second, as_rita)) == [
        "pub/base:bookworm",
        "pub/base:trixie",
        "team/api:latest",
        "team/web:1.0",
        "team/web:2.0",
    ]
    assert refs(await search(http, second, None)) == ["pub/base:bookworm", "pub/base:trixie"]
    assert refs(await search(http, second, None, label="tier=db")) == []
    async with http.get(second + SEARCH, auth=aiohttp.BasicAuth("rita", "wrong")) as resp:
        assert resp.status == 401

    # Names, globs, namespaces.
    assert refs(await search(http, second, as_boss, q="web")) == ["team/web:1.0", "team/web:2.0"]
    assert refs(await search(http, second, as_boss, q="*/ba?e", tag="t*")) == ["pub/base:trixie"]
    assert refs(await search(http, second, as_boss, namespace="team", tag="*.0")) == [
        "team/web:1.0",
        "team/web:2.0",
    ]
    # Config labels (OCI keys and any key=value), annotations, platforms, media types.
    assert refs(await search(http, second, as_boss, label=f"{VENDOR}=debian")) == [
        "pub/base:bookworm",
        "pub/base:trixie",
    ]
    assert refs(await search(http, second, as_boss, label=SOURCE)) == ["team/api:latest"]
    both = await search(
        http, second, as_rita, label=["tier=web", f"{VENDOR}=acme"], platform="linux/arm64"
    )
    assert refs(both) == ["team/web:2.0"]
    assert refs(await search(http, second, as_boss, annotation="org.example.lts=yes")) == [
        "pub/base:bookworm"
    ]
    arm = await search(http, second, as_boss, platform="linux/arm64")
    assert refs(arm) == ["pub/base:trixie", "team/web:2.0"]
    assert arm["items"][0]["labels"] == {VENDOR: "debian"}
    assert arm["items"][0]["platforms"] == ["linux/arm64"]
    mt = "application/vnd.oci.image.manifest.v1+json"
    assert len((await search(http, second, as_boss, media_type=mt))["items"]) == len(PREPARED)
    # Times: pushed at or after the fourth push's start, newest first; sizes.
    after = await search(http, second, as_boss, pushed_after=marks[3], sort="-pushed")
    assert refs(after) == ["secret/db:16", "pub/base:trixie", "pub/base:bookworm"]
    before = await search(http, second, as_boss, pushed_before=marks[1])
    assert refs(before) == ["team/web:1.0"]
    item = before["items"][0]
    blobs, body = image("team/web:1.0", "amd64", PREPARED[0][3])
    assert item["size"] == len(body) + sum(len(b) for b in blobs)  # manifest, config, layer
    assert item["digest"] == sha(body)
    assert refs(await search(http, second, as_boss, min_size=item["size"] + 10_000)) == []
    # Paging by cursor gives every tag once, in order.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"n": 2, "sort": "-pushed"}
        if cursor:
            params["cursor"] = cursor
        page = await search(http, first, as_boss, **params)
        seen += refs(page)
        if not (cursor := page["next"]):
            break
    assert seen == [f"{r}:{t}" for r, t, *_ in reversed(PREPARED)]
    # Repositories.
    repos = await search(http, second, as_rita, kind="repository")
    assert [r["repository"] for r in repos["items"]] == ["pub/base", "team/api", "team/web"]
    assert [r["tags"] for r in repos["items"]] == [2, 1, 2]

    # A deleted tag leaves the results at once (through the other gateway).
    status, _h, _b = await boss.request("DELETE", "/v2/team/web/manifests/1.0")
    assert status == 202
    assert refs(await search(http, second, as_boss, q="web")) == ["team/web:2.0"]

    # A node rebuilds the index from its state after a restart: restart every node in turn
    # (whichever answers next rebuilt it from its snapshot and log) and ask again.
    for i in cluster.running_nodes():
        cluster.restart_node(i)
        cluster.wait_answering(i, 60)
    cluster.wait_ready(60)
    found = await search(http, first, as_boss, label="tier=web")
    assert refs(found) == ["team/web:2.0"]

    # podman search lists the catalog (it has no v1 search to ask).
    if shutil.which("podman"):
        out = await asyncio.to_thread(
            subprocess.run,
            [
                "podman",
                "search",
                "--tls-verify=false",
                "--format",
                "{{.Name}}",
                f"{first.removeprefix('http://')}/base",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [f"{first.removeprefix('http://')}/pub/base"]
