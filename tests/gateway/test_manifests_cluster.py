"""Manifests, tags, catalog, referrers and deletes against real node and gateway processes.

Uses the suite-wide shared cluster (3 nodes, R=3, W=2, two gateways): writes go through
gateway A and reads through gateway B wherever read-after-write matters (invariant 2).
Numbers in the test names refer to the numbered edges of docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from cargohold.config import GatewayConfig
from cargohold_cli.devcluster import LocalCluster

pytestmark = pytest.mark.cluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
EMPTY_JSON = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """A tiny registry client over one aiohttp session, for one gateway URL."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    def url(self, path: str) -> str:
        return self.base + path

    async def push_blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = sha(data)
        async with self.session.post(
            self.url(f"/v2/{repo}/blobs/uploads/"),
            params={"digest": digest},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 201, await resp.text()
        return {"digest": digest, "size": len(data)}

    async def put_manifest(
        self, repo: str, ref: str, body: bytes, content_type: str | None = OCI_MANIFEST
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.put(
            self.url(f"/v2/{repo}/manifests/{ref}"), data=body, headers=headers
        ) as resp:
            await resp.read()
            return resp

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.session.request(method, self.url(path), **kwargs) as resp:
            return resp, await resp.read()


@pytest.fixture
async def gateways(cluster: LocalCluster) -> AsyncIterator[tuple[Registry, Registry]]:
    # auto_decompress off and identity encoding: we compare exact bytes and lengths.
    async with aiohttp.ClientSession(
        auto_decompress=False, headers={"Accept-Encoding": "identity"}
    ) as session:
        urls = cluster.gateway_urls
        yield Registry(session, urls[0]), Registry(session, urls[-1])


async def push_image(
    reg: Registry,
    repo: str,
    tag: str | None = "v1",
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    extra: dict | None = None,
) -> tuple[bytes, str]:
    config = await reg.push_blob(repo, json.dumps({"repo": repo, "tag": tag}).encode())
    layer_descs = []
    for i in range(layers):
        blob = await reg.push_blob(repo, f"{repo} layer {i} {tag}".encode() * 100)
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob})
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": layer_descs,
        **(extra or {}),
    }
    body = json.dumps(doc, indent=2).encode()
    resp = await reg.put_manifest(repo, tag or sha(body), body, media_type)
    assert resp.status == 201
    return body, sha(body)


def codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


# -- push and pull --------------------------------------------------------------------------
async def test_put_then_head_and_get_through_another_gateway(gateways, repo_name) -> None:
    a, b = gateways
    config = await a.push_blob(repo_name, b'{"architecture":"amd64"}')
    layer = await a.push_blob(repo_name, b"layer bytes" * 1000)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    resp = await a.put_manifest(repo_name, "latest", body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == sha(body)
    assert resp.headers["Location"] == f"/v2/{repo_name}/manifests/{sha(body)}"
    # Edge 2: HEAD and GET agree; invariant 2: gateway B sees the push at once.
    head, head_body = await b.request(
        "HEAD", f"/v2/{repo_name}/manifests/latest", headers={"Accept": f"{OCI_MANIFEST}, */*"}
    )
    assert head.status == 200 and head_body == b""
    assert head.headers["Content-Type"] == OCI_MANIFEST
    assert head.headers["Content-Length"] == str(len(body))
    assert head.headers["Docker-Content-Digest"] == sha(body)
    for ref in ("latest", sha(body)):
        get, got = await b.request("GET", f"/v2/{repo_name}/manifests/{ref}")
        assert get.status == 200
        assert got == body
        assert get.headers["Content-Type"] == OCI_MANIFEST
        assert get.headers["Docker-Content-Digest"] == sha(body)
        assert get.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_1_exact_bytes_and_media_type_whatever_accept(gateways, repo_name) -> None:
    a, b = gateways
    body, _ = await push_image(a, repo_name, media_type=DOCKER_MANIFEST)
    resp, got = await b.request(
        "GET", f"/v2/{repo_name}/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert got == body
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST


async def test_manifest_bytes_are_readable_as_a_blob(gateways, repo_name) -> None:
    a, b = gateways
    body, digest = await push_image(a, repo_name)
    resp, got = await b.request("GET", f"/v2/{repo_name}/blobs/{digest}")
    assert resp.status == 200 and got == body


async def test_16_manifest_without_media_type(gateways, repo_name) -> None:
    a, b = gateways
    config = await a.push_blob(repo_name, EMPTY_JSON)
    doc = {"schemaVersion": 2, "config": {"mediaType": EMPTY_TYPE, **config}, "layers": []}
    body = json.dumps(doc).encode()
    assert (await a.put_manifest(repo_name, "bare", body, OCI_MANIFEST)).status == 201
    resp, got = await b.request("GET", f"/v2/{repo_name}/manifests/bare")
    assert resp.headers["Content-Type"] == OCI_MANIFEST and got == body


# -- refusals -----------------------------------------------------------------------------------
async def test_unknown_blob_is_manifest_blob_unknown(gateways, repo_name) -> None:
    a, _ = gateways
    config = await a.push_blob(repo_name, b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(b"never pushed"),
                "size": 12,
            }
        ],
    }
    resp, body = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/v1",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400
    assert codes(body) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_blob_of_another_repository_is_not_enough(gateways, repo_name) -> None:
    a, _ = gateways
    config = await a.push_blob(repo_name + "-other", b'{"other": true}')
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [],
    }
    resp, body = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/v1",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400
    assert codes(body) == ["MANIFEST_BLOB_UNKNOWN"]


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"schemaVersion": 1}'])
async def test_malformed_manifest_is_manifest_invalid(gateways, repo_name, body) -> None:
    a, _ = gateways
    resp, out = await a.request(
        "PUT", f"/v2/{repo_name}/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert codes(out) == ["MANIFEST_INVALID"]


async def test_content_type_mismatch_is_manifest_invalid(gateways, repo_name) -> None:
    a, _ = gateways
    config = await a.push_blob(repo_name, EMPTY_JSON)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_TYPE, **config},
        "layers": [],
    }
    resp, out = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/v1",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": DOCKER_MANIFEST},
    )
    assert resp.status == 400
    assert codes(out) == ["MANIFEST_INVALID"]


async def test_8_put_by_digest_must_match(gateways, repo_name) -> None:
    a, b = gateways
    config = await a.push_blob(repo_name, EMPTY_JSON)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_TYPE, **config},
            "layers": [],
        }
    ).encode()
    resp, out = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/{sha(b'other')}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400 and codes(out) == ["DIGEST_INVALID"]
    sha512 = "sha512:" + hashlib.sha512(body).hexdigest()
    resp = await a.put_manifest(repo_name, sha512, body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == sha512
    get, got = await b.request("GET", f"/v2/{repo_name}/manifests/{sha512}")
    assert get.status == 200 and got == body
    assert get.headers["Docker-Content-Digest"] == sha512


async def test_8_bad_digest_on_get_is_400(gateways, repo_name) -> None:
    a, _ = gateways
    resp, out = await a.request("GET", f"/v2/{repo_name}/manifests/sha256:abc")
    assert resp.status == 400 and codes(out) == ["DIGEST_INVALID"]


async def test_9_invalid_names_and_tags(gateways) -> None:
    a, _ = gateways
    resp, out = await a.request("PUT", "/v2/Upper/manifests/v1", data=b"{}")
    assert resp.status == 400 and codes(out) == ["NAME_INVALID"]
    resp, out = await a.request("PUT", "/v2/ok/name/manifests/-bad", data=b"{}")
    assert resp.status == 400 and codes(out) == ["TAG_INVALID"]


async def test_13_manifest_limit_is_4mib(gateways, repo_name) -> None:
    a, b = gateways
    config = await a.push_blob(repo_name, EMPTY_JSON)
    doc = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_TYPE, **config},
            "layers": [],
        }
    ).encode()
    limit = 4 * 1024 * 1024
    exact = doc + b" " * (limit - len(doc))
    resp = await a.put_manifest(repo_name, "big", exact)
    assert resp.status == 201
    get, got = await b.request("GET", f"/v2/{repo_name}/manifests/big")
    assert get.status == 200 and got == exact
    resp, out = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/toobig",
        data=exact + b" ",
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 413
    assert codes(out) == ["MANIFEST_INVALID"]


async def test_13_layers_with_urls_are_not_required(gateways, repo_name) -> None:
    a, _ = gateways
    config = await a.push_blob(repo_name, b'{"os":"windows"}')
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": sha(b"foreign"),
                "size": 7,
                "urls": ["https://example.invalid/layer"],
            }
        ],
    }
    resp = await a.put_manifest(repo_name, "win", json.dumps(doc).encode(), DOCKER_MANIFEST)
    assert resp.status == 201


# -- indexes --------------------------------------------------------------------------------------
async def test_index_needs_its_children(gateways, repo_name) -> None:
    a, b = gateways
    child_body, child = await push_image(a, repo_name, tag=None)
    missing = sha(b"missing child")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": child,
                "size": len(child_body),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    bad = dict(
        index,
        manifests=[*index["manifests"], {"mediaType": OCI_MANIFEST, "digest": missing, "size": 3}],
    )
    resp, out = await a.request(
        "PUT",
        f"/v2/{repo_name}/manifests/multi",
        data=json.dumps(bad).encode(),
        headers={"Content-Type": OCI_INDEX},
    )
    assert resp.status == 400 and codes(out) == ["MANIFEST_BLOB_UNKNOWN"]
    body = json.dumps(index).encode()
    assert (await a.put_manifest(repo_name, "multi", body, OCI_INDEX)).status == 201
    resp, got = await b.request("GET", f"/v2/{repo_name}/manifests/multi")
    assert resp.headers["Content-Type"] == OCI_INDEX and got == body


# -- tags and catalog ---------------------------------------------------------------------------
async def test_10_tag_list_paging(gateways, repo_name) -> None:
    a, b = gateways
    body, _ = await push_image(a, repo_name, tag="base")
    tags = ["base", "B", "a.1", "a_2", "z", "0"]
    for tag in tags[1:]:
        assert (await a.put_manifest(repo_name, tag, body)).status == 201
    resp, out = await b.request("GET", f"/v2/{repo_name}/tags/list")
    assert resp.status == 200
    assert json.loads(out) == {"name": repo_name, "tags": sorted(tags)}
    assert "Link" not in resp.headers
    seen: list[str] = []
    path = f"/v2/{repo_name}/tags/list?n=4"
    while path:
        resp, out = await b.request("GET", path)
        page = json.loads(out)["tags"]
        seen += page
        link = resp.headers.get("Link")
        assert len(page) == 4 or link is None
        path = link[1 : link.index(">")] if link else ""
    assert seen == sorted(tags)
    resp, out = await b.request("GET", f"/v2/{repo_name}/tags/list?n=0")
    assert json.loads(out)["tags"] == [] and "Link" not in resp.headers
    resp, out = await b.request("GET", f"/v2/{repo_name}/tags/list?n=-1")
    assert resp.status == 400 and codes(out) == ["PAGINATION_NUMBER_INVALID"]


async def test_tags_of_unknown_repository_is_name_unknown(gateways, repo_name) -> None:
    a, _ = gateways
    resp, out = await a.request("GET", f"/v2/{repo_name}/tags/list")
    assert resp.status == 404 and codes(out) == ["NAME_UNKNOWN"]


async def test_10_catalog_lists_the_repository(gateways, repo_name) -> None:
    a, b = gateways
    await push_image(a, repo_name)
    await push_image(a, repo_name + "/sub")
    # A third repository of our own after "/sub", so the page below is cut (and carries a
    # Link) whatever other tests' random repository names sort after ours.
    await push_image(a, repo_name + "/sub2")
    before = repo_name[:-1] + chr(ord(repo_name[-1]) - 1) + "~"
    resp, out = await b.request("GET", "/v2/_catalog", params={"n": "2", "last": before})
    assert resp.status == 200
    assert json.loads(out)["repositories"] == [repo_name, repo_name + "/sub"]
    resp, out = await b.request("GET", "/v2/_catalog", params={"n": "1", "last": repo_name})
    assert json.loads(out)["repositories"] == [repo_name + "/sub"]
    assert resp.headers["Link"].startswith("</v2/_catalog?n=1&last=")


# -- deletes -----------------------------------------------------------------------------------
async def test_11_delete_by_tag_keeps_the_manifest(gateways, repo_name) -> None:
    a, b = gateways
    body, digest = await push_image(a, repo_name)
    resp, _ = await a.request("DELETE", f"/v2/{repo_name}/manifests/v1")
    assert resp.status == 202
    resp, out = await b.request("GET", f"/v2/{repo_name}/manifests/v1")
    assert resp.status == 404 and codes(out) == ["MANIFEST_UNKNOWN"]
    resp, got = await b.request("GET", f"/v2/{repo_name}/manifests/{digest}")
    assert resp.status == 200 and got == body


async def test_11_delete_by_digest_removes_every_tag(gateways, repo_name) -> None:
    a, b = gateways
    body, digest = await push_image(a, repo_name, tag="one")
    assert (await a.put_manifest(repo_name, "two", body)).status == 201
    # Warm both gateways' caches first.
    for reg in (a, b):
        assert (await reg.request("GET", f"/v2/{repo_name}/manifests/{digest}"))[0].status == 200
    resp, _ = await a.request("DELETE", f"/v2/{repo_name}/manifests/{digest}")
    assert resp.status == 202
    # Tags everywhere and the digest through the deleting gateway: gone at once.
    for reg, ref in ((b, "one"), (b, "two"), (a, digest)):
        for method in ("GET", "HEAD"):
            resp, _ = await reg.request(method, f"/v2/{repo_name}/manifests/{ref}")
            assert resp.status == 404
    # By digest through the other gateway: gone once its record TTL has passed
    # (gateway.manifest_digest_ttl_seconds, gateway/manifests.py states the bound).
    await asyncio.sleep(GatewayConfig().manifest_digest_ttl_seconds)
    for method in ("GET", "HEAD"):
        resp, _ = await b.request(method, f"/v2/{repo_name}/manifests/{digest}")
        assert resp.status == 404
    resp, _ = await a.request("DELETE", f"/v2/{repo_name}/manifests/{digest}")
    assert resp.status == 404


# -- referrers ----------------------------------------------------------------------------------
async def test_12_referrers(gateways, repo_name) -> None:
    a, b = gateways
    # The subject does not exist (yet): accepted anyway.
    subject = {"mediaType": OCI_MANIFEST, "digest": sha(b"future subject"), "size": 14}
    config = await a.push_blob(repo_name, EMPTY_JSON)
    pushed = {}
    for kind in ("sbom", "sig"):
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": f"application/vnd.example.{kind}",
            "config": {"mediaType": EMPTY_TYPE, **config},
            "layers": [],
            "subject": subject,
            "annotations": {"kind": kind},
        }
        body = json.dumps(doc).encode()
        resp = await a.put_manifest(repo_name, sha(body), body)
        assert resp.status == 201
        assert resp.headers["OCI-Subject"] == subject["digest"]
        pushed[kind] = sha(body)
    resp, out = await b.request("GET", f"/v2/{repo_name}/referrers/{subject['digest']}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = json.loads(out)
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == set(pushed.values())
    sbom = by_digest[pushed["sbom"]]
    assert sbom["artifactType"] == "application/vnd.example.sbom"
    assert sbom["annotations"] == {"kind": "sbom"}
    assert sbom["mediaType"] == OCI_MANIFEST
    resp, out = await b.request(
        "GET",
        f"/v2/{repo_name}/referrers/{subject['digest']}",
        params={"artifactType": "application/vnd.example.sig"},
    )
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in json.loads(out)["manifests"]] == [pushed["sig"]]
    # oras' probe: the zero digest answers an empty index, never 404.
    resp, out = await b.request("GET", f"/v2/{repo_name}/referrers/sha256:{'0' * 64}")
    assert resp.status == 200 and resp.headers["Content-Type"] == OCI_INDEX
    assert json.loads(out)["manifests"] == []
    resp, out = await b.request("GET", f"/v2/{repo_name}/referrers/sha256:zz")
    assert resp.status == 400 and codes(out) == ["DIGEST_INVALID"]


async def test_11_deleted_blob_404s_at_once_here_and_within_the_ttl_elsewhere(
    gateways, repo_name
) -> None:
    a, b = gateways
    blob = await a.push_blob(repo_name, b"short-lived blob")
    url = f"/v2/{repo_name}/blobs/{blob['digest']}"
    for reg in (a, b):  # both gateways remember the link
        resp, _ = await reg.request("HEAD", url)
        assert resp.status == 200
    resp, _ = await a.request("DELETE", url)
    assert resp.status == 202
    # Through the deleting gateway: gone at once.
    resp, out = await a.request("GET", url)
    assert resp.status == 404 and codes(out) == ["BLOB_UNKNOWN"]
    # Through the other: gone once its record TTL has passed
    # (gateway.blob_digest_ttl_seconds, gateway/blobs.py states the bound).
    await asyncio.sleep(GatewayConfig().blob_digest_ttl_seconds)
    resp, out = await b.request("GET", url)
    assert resp.status == 404 and codes(out) == ["BLOB_UNKNOWN"]


async def test_16_any_config_and_layer_media_types(gateways, repo_name) -> None:
    a, b = gateways
    config = await a.push_blob(repo_name, b'{"name":"chart","version":"0.1.0"}')
    chart = await a.push_blob(repo_name, b"\x1f\x8b fake chart tarball")
    doc = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", **chart}],
        "annotations": {"org.opencontainers.image.title": "chart"},
    }
    body = json.dumps(doc).encode()
    resp = await a.put_manifest(repo_name, "0.1.0", body, OCI_MANIFEST)
    assert resp.status == 201
    head, _ = await b.request("HEAD", f"/v2/{repo_name}/manifests/0.1.0")
    assert head.status == 200
    assert head.headers["Docker-Content-Digest"] == sha(body)
    assert head.headers["Content-Type"] == OCI_MANIFEST
