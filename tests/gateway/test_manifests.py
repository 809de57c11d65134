"""Manifest PUT/GET/HEAD/DELETE of the gateway over the in-memory FakeCluster."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cargohold.config import Config
from cargohold.metadata_api import TrashList, TrashRestore
from gateway.app import build_app
from gateway.context import GatewayContext
from gateway.manifest_cache import ManifestCache, RecordCache, Stamp
from gateway.manifest_format import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from gateway.manifests import RECORDS

REPO = "library/app"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def desc(media_type: str, seed: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(seed.encode()), "size": len(seed), **extra}


def image(media_type: str | None = OCI_MANIFEST, layers: int = 2, **extra: Any) -> dict:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type:
        doc["mediaType"] = media_type
    doc["config"] = desc("application/vnd.oci.image.config.v1+json", "config")
    doc["layers"] = [
        desc("application/vnd.oci.image.layer.v1.tar+gzip", f"layer{i}") for i in range(layers)
    ]
    doc.update(extra)
    return doc


def encode(doc: dict) -> bytes:
    # Unusual spacing on purpose: the gateway must store and hash these exact bytes.
    return json.dumps(doc, indent=3).encode()


def link_all(fake, doc: dict, repo: str = REPO) -> None:
    for d in [doc.get("config"), *doc.get("layers", [])]:
        if d:
            fake.link_blob(repo, d["digest"])


async def put(
    gw: TestClient, ref: str, body: bytes, content_type: str | None = OCI_MANIFEST, repo: str = REPO
):
    headers = {"Content-Type": content_type} if content_type else {}
    return await gw.put(f"/v2/{repo}/manifests/{ref}", data=body, headers=headers)


async def codes(resp) -> list[str]:
    return [e["code"] for e in (await resp.json())["errors"]]


# -- PUT ----------------------------------------------------------------------------------
async def test_put_by_tag_returns_201_with_location_and_digest(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)
    resp = await put(gw, "v1", body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == sha(body)
    assert resp.headers["Location"] == f"/v2/{REPO}/manifests/{sha(body)}"
    assert "OCI-Subject" not in resp.headers
    [(_, _, args)] = [c for c in fake_cluster.calls if c[1] == "manifest_put"]
    assert args["tag"] == "v1"
    assert args["media_type"] == OCI_MANIFEST
    assert args["blobs"] == [doc["config"]["digest"]] + [d["digest"] for d in doc["layers"]]
    assert args["manifests"] == []
    assert args["artifact_type"] == "application/vnd.oci.image.config.v1+json"
    assert args["recipe"]["size"] == len(body)


async def test_put_with_unknown_blob_is_manifest_blob_unknown(gw, fake_cluster) -> None:
    doc = image()
    fake_cluster.link_blob(REPO, doc["config"]["digest"])
    resp = await put(gw, "v1", encode(doc))
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_layers_with_urls_are_not_required(gw, fake_cluster) -> None:
    doc = image(layers=1)
    doc["layers"].append(
        desc(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "foreign",
            urls=["https://example.com/layer"],
        )
    )
    fake_cluster.link_blob(REPO, doc["config"]["digest"])
    fake_cluster.link_blob(REPO, doc["layers"][0]["digest"])
    resp = await put(gw, "v1", encode(doc))
    assert resp.status == 201


async def test_artifact_with_subject_and_empty_config(gw, fake_cluster) -> None:
    subject = desc(OCI_MANIFEST, "not-pushed-yet")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": EMPTY_CONFIG, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [],
        "subject": subject,
        "annotations": {"org.example": "yes"},
    }
    fake_cluster.link_blob(REPO, EMPTY_DIGEST)
    body = encode(doc)
    resp = await put(gw, sha(body), body)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject["digest"]
    [(_, _, args)] = [c for c in fake_cluster.calls if c[1] == "manifest_put"]
    assert args["subject"] == subject["digest"]
    assert args["blobs"] == [EMPTY_DIGEST]
    assert args["artifact_type"] == "application/vnd.example.sbom"
    assert args["annotations"] == {"org.example": "yes"}
    assert args["tag"] is None


async def test_manifest_without_media_type_uses_content_type(gw, fake_cluster) -> None:
    doc = image(media_type=None)
    link_all(fake_cluster, doc)
    body = encode(doc)
    assert (await put(gw, "v1", body, content_type=OCI_MANIFEST)).status == 201
    resp = await gw.get(f"/v2/{REPO}/manifests/v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    assert await resp.read() == body


async def test_manifest_without_any_type_is_recognised_by_shape(gw, fake_cluster) -> None:
    doc = image(media_type=None)
    link_all(fake_cluster, doc)
    assert (await put(gw, "v1", encode(doc), content_type="application/json")).status == 201
    resp = await gw.head(f"/v2/{REPO}/manifests/v1")
    assert resp.headers["Content-Type"] == OCI_MANIFEST


async def test_content_type_mismatch_is_manifest_invalid(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    resp = await put(gw, "v1", encode(doc), content_type=DOCKER_MANIFEST)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]


async def test_content_type_parameters_are_ignored(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    resp = await put(gw, "v1", encode(doc), content_type=f"{OCI_MANIFEST}; charset=utf-8")
    assert resp.status == 201


async def test_docker_schema2_and_manifest_list(gw, fake_cluster) -> None:
    doc = image(media_type=DOCKER_MANIFEST)
    doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    link_all(fake_cluster, doc)
    child = encode(doc)
    assert (await put(gw, sha(child), child, content_type=DOCKER_MANIFEST)).status == 201
    index = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": sha(child),
                "size": len(child),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    resp = await put(gw, "latest", encode(index), content_type=DOCKER_LIST)
    assert resp.status == 201
    got = await gw.get(f"/v2/{REPO}/manifests/latest")
    assert got.headers["Content-Type"] == DOCKER_LIST


async def test_index_children_must_exist(gw, fake_cluster) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc(OCI_MANIFEST, "missing-child")],
    }
    resp = await put(gw, "v1", encode(index), content_type=OCI_INDEX)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]
    [(_, _, args)] = [c for c in fake_cluster.calls if c[1] == "manifest_put"]
    assert args["manifests"] == [desc(OCI_MANIFEST, "missing-child")["digest"]]
    assert args["blobs"] == []


async def test_index_without_media_type_recognised_by_shape(gw, fake_cluster) -> None:
    child = image()
    link_all(fake_cluster, child)
    child_body = encode(child)
    assert (await put(gw, sha(child_body), child_body)).status == 201
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha(child_body), "size": len(child_body)}
        ],
    }
    assert (await put(gw, "multi", encode(index), content_type=None)).status == 201
    resp = await gw.get(f"/v2/{REPO}/manifests/multi")
    assert resp.headers["Content-Type"] == OCI_INDEX


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b"\xff\xfe",
        b'{"schemaVersion": 1}',
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x/y", "digest": "sha256:abc", "size": 1},
                "layers": [],
            }
        ).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x/y", "digest": EMPTY_DIGEST, "size": -1},
                "layers": [],
            }
        ).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": "x"}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.example.unknown+json",
                "config": {},
                "layers": [],
            }
        ).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "x/y", "digest": EMPTY_DIGEST, "size": 2},
                "layers": [],
                "annotations": {"a": 1},
            }
        ).encode(),
    ],
)
async def test_malformed_manifests_are_manifest_invalid(gw, body: bytes) -> None:
    resp = await put(gw, "v1", body, content_type=None)
    assert resp.status == 400
    assert await codes(resp) == ["MANIFEST_INVALID"]


async def test_put_by_wrong_digest_is_digest_invalid(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    resp = await put(gw, sha(b"something else"), encode(doc))
    assert resp.status == 400
    assert await codes(resp) == ["DIGEST_INVALID"]
    assert fake_cluster.ops("command") == []


async def test_put_by_sha512_digest(gw, fake_cluster) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    resp = await put(gw, digest, body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    got = await gw.get(f"/v2/{REPO}/manifests/{digest}")
    assert await got.read() == body


@pytest.mark.parametrize("ref", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64])
async def test_put_by_malformed_digest_is_digest_invalid(gw, ref: str) -> None:
    resp = await put(gw, ref, encode(image()))
    assert resp.status == 400
    assert await codes(resp) == ["DIGEST_INVALID"]


@pytest.mark.parametrize("ref", ["-dash", ".dot", "a" * 129, "t@g"])
async def test_put_by_invalid_tag_is_tag_invalid(gw, ref: str) -> None:
    resp = await put(gw, ref, encode(image()))
    assert resp.status == 400
    assert await codes(resp) == ["TAG_INVALID"]


@pytest.mark.parametrize("repo", ["UPPER/case", "a//b", "a/", "-a", "a" * 256])
async def test_invalid_name_is_name_invalid(gw, repo: str) -> None:
    resp = await put(gw, "v1", encode(image()), repo=repo)
    assert resp.status == 400
    assert await codes(resp) == ["NAME_INVALID"]


async def test_oversized_manifest_is_413(gw, gateway_cfg: Config) -> None:
    body = b" " * (gateway_cfg.gateway.max_manifest_size + 1)
    resp = await put(gw, "v1", body)
    assert resp.status == 413
    assert await codes(resp) == ["MANIFEST_INVALID"]


async def test_oversized_streamed_manifest_is_413(gw, gateway_cfg: Config) -> None:
    limit = gateway_cfg.gateway.max_manifest_size

    async def stream():
        for _ in range(4):
            yield b" " * (limit // 2)

    resp = await gw.put(
        f"/v2/{REPO}/manifests/v1", data=stream(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 413
    assert await codes(resp) == ["MANIFEST_INVALID"]


async def test_manifest_of_exactly_the_limit_is_accepted(
    gw, fake_cluster, gateway_cfg: Config
) -> None:
    doc = image()
    link_all(fake_cluster, doc)
    body = json.dumps(doc).encode()
    body += b" " * (gateway_cfg.gateway.max_manifest_size - len(body))
    resp = await put(gw, "big", body)
    assert resp.status == 201
    got = await gw.get(f"/v2/{REPO}/manifests/big")
    assert await got.read() == body


# -- GET / HEAD ---------------------------------------------------------------------------
async def _pushed(gw, fake_cluster, tag: str = "v1") -> bytes:
    doc = image()
    link_all(fake_cluster, doc)
    body = encode(doc)
    assert (await put(gw, tag, body)).status == 201
    return body


async def test_get_by_tag_and_digest_serve_exact_bytes(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    for ref in ("v1", sha(body)):
        resp = await gw.get(
            f"/v2/{REPO}/manifests/{ref}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, */*"},
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == sha(body)
        assert resp.headers["Content-Length"] == str(len(body))
        assert await resp.read() == body


async def test_head_agrees_with_get(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    for ref in ("v1", sha(body)):
        got = await gw.get(f"/v2/{REPO}/manifests/{ref}")
        head = await gw.head(f"/v2/{REPO}/manifests/{ref}")
        assert head.status == got.status == 200
        for header in ("Content-Type", "Content-Length", "Docker-Content-Digest"):
            assert head.headers[header] == got.headers[header]
        assert await head.read() == b""


@pytest.fixture
def no_cache(gateway_cfg: Config) -> None:
    gateway_cfg.gateway.manifest_cache_bytes = 0


@pytest.mark.usefixtures("no_cache")
async def test_get_reads_body_from_store_when_not_cached(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    resp = await gw.get(f"/v2/{REPO}/manifests/v1")
    assert await resp.read() == body
    assert resp.headers["Content-Length"] == str(len(body))


@pytest.mark.usefixtures("no_cache")
async def test_corrupt_recipe_is_500_not_wrong_bytes(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    [chunk] = [c for c, data in fake_cluster.chunks.items() if data == body]
    fake_cluster.chunks[chunk] = body.replace(b"config", b"CONFIG")
    resp = await gw.get(f"/v2/{REPO}/manifests/v1")
    assert resp.status == 500


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(gw) -> FakeClock:
    """Drives the gateway's RecordCache (by-digest TTL) instead of the real clock."""
    fake = FakeClock()
    gw.app[RECORDS].clock = fake
    return fake


@pytest.fixture
def no_digest_ttl(gateway_cfg: Config) -> None:
    gateway_cfg.gateway.manifest_digest_ttl_seconds = 0


@pytest.mark.usefixtures("no_digest_ttl")
async def test_without_ttl_a_delete_elsewhere_is_404_at_once(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    assert (await gw.get(f"/v2/{REPO}/manifests/{sha(body)}")).status == 200
    # Another gateway deletes it: this gateway's body cache still holds the body.
    fake_cluster.delete_manifest(REPO, sha(body))
    resp = await gw.get(f"/v2/{REPO}/manifests/{sha(body)}")
    assert resp.status == 404
    assert await codes(resp) == ["MANIFEST_UNKNOWN"]
    assert fake_cluster.ops("query").count("manifest_get") == 2


async def test_delete_elsewhere_is_seen_by_digest_once_the_ttl_passed(
    gw, fake_cluster, clock: FakeClock
) -> None:
    ttl = gw.app[RECORDS].ttl
    body = await _pushed(gw, fake_cluster)
    url = f"/v2/{REPO}/manifests/{sha(body)}"
    assert (await gw.get(url)).status == 200
    fake_cluster.delete_manifest(REPO, sha(body))  # deleted through another gateway
    clock.now += ttl * 0.9
    stale = await gw.get(url)
    assert stale.status == 200 and await stale.read() == body
    assert (await gw.head(url)).status == 200
    assert fake_cluster.ops("query").count("manifest_get") == 1  # served from the cache
    clock.now += ttl * 0.1
    resp = await gw.get(url)
    assert resp.status == 404
    assert await codes(resp) == ["MANIFEST_UNKNOWN"]
    assert (await gw.head(url)).status == 404


async def test_delete_through_this_gateway_is_seen_by_digest_at_once(
    gw, fake_cluster, clock: FakeClock
) -> None:
    body = await _pushed(gw, fake_cluster)
    url = f"/v2/{REPO}/manifests/{sha(body)}"
    assert (await gw.get(url)).status == 200
    assert (await gw.delete(url)).status == 202
    resp = await gw.get(url)
    assert resp.status == 404
    assert await codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_an_unknown_digest_is_never_cached(gw, fake_cluster, clock: FakeClock) -> None:
    body = await _pushed(gw, fake_cluster, tag="v1")
    fake_cluster.delete_manifest(REPO, sha(body))
    url = f"/v2/{REPO}/manifests/{sha(body)}"
    assert (await gw.get(url)).status == 404
    await _pushed(gw, fake_cluster, tag="v1")  # pushed again: visible at once
    assert (await gw.get(url)).status == 200


async def test_tag_reads_always_ask_the_cluster(gw, fake_cluster, clock: FakeClock) -> None:
    await _pushed(gw, fake_cluster)
    for _ in range(3):
        assert (await gw.head(f"/v2/{REPO}/manifests/v1")).status == 200
    assert fake_cluster.ops("query").count("tag_get") == 3


async def test_every_get_asks_the_cluster(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    await gw.get(f"/v2/{REPO}/manifests/v1")
    await gw.get(f"/v2/{REPO}/manifests/{sha(body)}")
    # (the pull policy's `trust_list`, re-read every policy.refresh_seconds, is not a lookup,
    # nor is the push's read of the config blob for search: gateway/image_info.py)
    lookups = [op for op in fake_cluster.ops("query") if op not in ("trust_list", "blob_get")]
    assert lookups == ["tag_get", "manifest_get"]


async def test_unknown_manifest_is_404(gw, fake_cluster) -> None:
    await _pushed(gw, fake_cluster)
    for ref in ("nope", sha(b"nope")):
        resp = await gw.get(f"/v2/{REPO}/manifests/{ref}")
        assert resp.status == 404
        assert await codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_unknown_repository_by_tag_is_name_unknown(gw) -> None:
    resp = await gw.get("/v2/no/such/repo/manifests/latest")
    assert resp.status == 404
    assert await codes(resp) == ["NAME_UNKNOWN"]


async def test_get_by_bad_digest_is_400(gw) -> None:
    resp = await gw.get(f"/v2/{REPO}/manifests/sha256:1234")
    assert resp.status == 400
    assert await codes(resp) == ["DIGEST_INVALID"]


# -- DELETE -------------------------------------------------------------------------------
async def test_delete_by_tag_removes_only_the_tag(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster)
    resp = await gw.delete(f"/v2/{REPO}/manifests/v1")
    assert resp.status == 202
    assert (await gw.get(f"/v2/{REPO}/manifests/v1")).status == 404
    assert (await gw.get(f"/v2/{REPO}/manifests/{sha(body)}")).status == 200


async def test_delete_by_digest_removes_manifest_and_tags(gw, fake_cluster) -> None:
    body = await _pushed(gw, fake_cluster, tag="v1")
    assert (await put(gw, "v2", body)).status == 201
    resp = await gw.delete(f"/v2/{REPO}/manifests/{sha(body)}")
    assert resp.status == 202
    for ref in ("v1", "v2", sha(body)):
        assert (await gw.get(f"/v2/{REPO}/manifests/{ref}")).status == 404


async def test_deletes_go_into_the_trash_unless_its_retention_is_0(
    gw, fake_cluster, gateway_cfg: Config
) -> None:
    body = await _pushed(gw, fake_cluster, tag="v1")
    assert (await put(gw, "v2", body)).status == 201
    assert (await gw.delete(f"/v2/{REPO}/manifests/v2")).status == 202
    assert (await gw.delete(f"/v2/{REPO}/manifests/{sha(body)}")).status == 202
    for ref in ("v1", "v2", sha(body)):
        assert (await gw.get(f"/v2/{REPO}/manifests/{ref}")).status == 404
    trash = fake_cluster.state.execute(TrashList(REPO))
    assert [(e.kind, e.tag) for e in trash] == [("manifest", None), ("tag", "v1"), ("tag", "v2")]
    assert {e.digest for e in trash} == {sha(body)}
    fake_cluster.state.execute(TrashRestore(REPO, sha(body)))
    for ref in ("v1", "v2", sha(body)):
        assert (await gw.get(f"/v2/{REPO}/manifests/{ref}")).status == 200
    gateway_cfg.lifecycle.trash_retention_seconds = 0
    assert (await gw.delete(f"/v2/{REPO}/manifests/{sha(body)}")).status == 202
    assert fake_cluster.state.execute(TrashList(REPO)) == []


async def test_delete_unknown_is_404(gw, fake_cluster) -> None:
    await _pushed(gw, fake_cluster)
    resp = await gw.delete(f"/v2/{REPO}/manifests/{sha(b'x')}")
    assert resp.status == 404
    assert await codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_delete_disabled_is_405_unsupported(gw, fake_cluster, gateway_cfg: Config) -> None:
    body = await _pushed(gw, fake_cluster)
    gateway_cfg.gateway.delete_enabled = False
    resp = await gw.delete(f"/v2/{REPO}/manifests/{sha(body)}")
    assert resp.status == 405
    assert await codes(resp) == ["UNSUPPORTED"]
    assert (await gw.get(f"/v2/{REPO}/manifests/v1")).status == 200


# -- the cache ----------------------------------------------------------------------------
def test_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = ManifestCache(10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"
    cache.put("c", b"1234")
    assert cache.get("b") is None
    assert cache.get("a") == b"1234" and cache.get("c") == b"1234"
    assert cache.size_bytes == 8
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None
    cache.discard("a")
    assert len(cache) == 1 and cache.size_bytes == 4


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 5000\r\n", b"Transfer-Encoding: chunked\r\n"]
)
async def test_client_vanishing_mid_body_is_not_a_server_error(
    gateway_cfg: Config, fake_cluster, caplog: pytest.LogCaptureFixture, framing: bytes
) -> None:
    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    @web.middleware
    async def observe(request: web.Request, handler):
        try:
            response = await handler(request)
        except BaseException as exc:
            ended.set_result(exc)
            raise
        ended.set_result(None)
        return response

    app = build_app(GatewayContext(cfg=gateway_cfg, cluster=fake_cluster))
    app.middlewares.insert(0, observe)
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"PUT /v2/" + REPO.encode() + b"/manifests/v1 HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\n" + framing + b"\r\n"
        )
        await writer.drain()
        # "100 Continue" is sent right before the handler runs and starts reading the body.
        assert (await reader.readline()).startswith(b"HTTP/1.1 100")
        body = b'{"schemaVersion": 2'
        writer.write(body if b"Content-Length" in framing else b"%x\r\n" % 1000 + body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        outcome = await asyncio.wait_for(ended, 30)
    # The handler stopped (cancelled, or a 400 nobody reads), nothing was committed and
    # nothing was logged as a server failure.
    assert outcome is None or isinstance(outcome, asyncio.CancelledError | ConnectionError)
    assert not [r for r in caplog.records if r.getMessage() == "request.failed"]
    assert fake_cluster.ops("command") == []


def test_record_cache_expiry_bound_and_discard() -> None:
    clock = FakeClock()
    cache = RecordCache(ttl=1.0, max_entries=2, clock=clock)
    sent = cache.stamp()
    clock.now += 0.4  # the confirming query took 0.4 s: the entry lives 0.6 s more
    cache.put("r", "d1", {"n": 1}, sent)
    assert cache.get("r", "d1") == {"n": 1}
    clock.now += 0.6
    assert cache.get("r", "d1") is None and len(cache) == 0
    for i in range(3):
        cache.put("r", f"x{i}", {"n": i}, cache.stamp())
    assert len(cache) == 2 and cache.get("r", "x0") is None
    # An answer to a query sent before a delete through this gateway is not cached.
    sent = cache.stamp()
    cache.discard("r", "x1")
    cache.put("r", "x1", {"n": 1}, sent)
    assert cache.get("r", "x1") is None
    cache.put("r", "x1", {"n": 1}, Stamp(clock.now + 0.001, None))
    assert cache.get("r", "x1") == {"n": 1}


def test_record_cache_under_the_lease_trusts_the_unlink_revision_not_the_clock() -> None:
    clock = FakeClock()
    leased: list[str | None] = ["e.1"]
    cache = RecordCache(ttl=1.0, max_entries=10, clock=clock, unlinks=lambda: leased[0])
    cache.put("r", "d", {"n": 1}, cache.stamp())
    clock.now += 3600  # an hour past the TTL: still the revision it was confirmed at
    assert cache.get("r", "d") == {"n": 1}
    leased[0] = "e.2"  # a removal somewhere, acknowledged after this gateway had it
    assert cache.get("r", "d") is None and len(cache) == 0
    # Confirmed at e.2, then the lease lapses (a leader change): the TTL rules again...
    cache.put("r", "d", {"n": 1}, cache.stamp())
    leased[0] = None
    assert cache.get("r", "d") == {"n": 1}
    clock.now += 1.0
    assert cache.get("r", "d") is None
    # ... and an entry confirmed without a lease is not trusted under one.
    cache.put("r", "d", {"n": 1}, cache.stamp())
    leased[0] = "f.0"
    assert cache.get("r", "d") is None
    # A revision moving between the stamp and the answer: the entry is never trusted.
    stamp = cache.stamp()
    leased[0] = "f.1"
    cache.put("r", "d", {"n": 1}, stamp)
    assert cache.get("r", "d") is None


def test_record_cache_ttl_zero_keeps_nothing_without_a_lease() -> None:
    cache = RecordCache(ttl=0.0, max_entries=10)
    cache.put("r", "d", {"n": 1}, cache.stamp())
    assert cache.get("r", "d") is None and len(cache) == 0
