"""The referrers API over the in-memory FakeCluster (pushes go through the real handlers)."""

from __future__ import annotations

import hashlib
import json

from aiohttp.test_utils import TestClient

REPO = "sig/app"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}
SUBJECT = {"mediaType": MANIFEST, "digest": "sha256:" + "5" * 64, "size": 123}
ZERO = "sha256:" + "0" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_referrer(
    gw: TestClient,
    fake,
    artifact_type: str | None,
    annotations: dict | None = None,
    config_type: str | None = None,
) -> str:
    fake.link_blob(REPO, EMPTY["digest"])
    doc: dict = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": dict(EMPTY, mediaType=config_type or EMPTY["mediaType"]),
        "layers": [],
        "subject": SUBJECT,
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    body = json.dumps(doc).encode()
    resp = await gw.put(
        f"/v2/{REPO}/manifests/{sha(body)}", data=body, headers={"Content-Type": MANIFEST}
    )
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == SUBJECT["digest"]
    return sha(body)


async def test_unknown_subject_is_an_empty_index(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/referrers/{ZERO}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == INDEX
    assert await resp.json() == {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
    assert "OCI-Filters-Applied" not in resp.headers


async def test_referrers_list_descriptors(gw: TestClient, fake_cluster) -> None:
    sbom = await push_referrer(
        gw,
        fake_cluster,
        "application/vnd.example.sbom",
        annotations={"org.opencontainers.image.created": "now"},
    )
    sig = await push_referrer(
        gw, fake_cluster, None, config_type="application/vnd.example.sig.config"
    )
    resp = await gw.get(f"/v2/{REPO}/referrers/{SUBJECT['digest']}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == INDEX
    by_digest = {d["digest"]: d for d in (await resp.json())["manifests"]}
    assert set(by_digest) == {sbom, sig}
    assert by_digest[sbom]["artifactType"] == "application/vnd.example.sbom"
    assert by_digest[sbom]["annotations"] == {"org.opencontainers.image.created": "now"}
    assert by_digest[sbom]["mediaType"] == MANIFEST
    # No artifactType: the config media type stands in for it.
    assert by_digest[sig]["artifactType"] == "application/vnd.example.sig.config"


async def test_artifact_type_filter(gw: TestClient, fake_cluster) -> None:
    sbom = await push_referrer(gw, fake_cluster, "application/vnd.example.sbom")
    await push_referrer(gw, fake_cluster, "application/vnd.example.sig")
    resp = await gw.get(
        f"/v2/{REPO}/referrers/{SUBJECT['digest']}",
        params={"artifactType": "application/vnd.example.sbom"},
    )
    assert resp.status == 200
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in (await resp.json())["manifests"]] == [sbom]


async def test_deleted_referrer_disappears(gw: TestClient, fake_cluster) -> None:
    sbom = await push_referrer(gw, fake_cluster, "application/vnd.example.sbom")
    assert (await gw.delete(f"/v2/{REPO}/manifests/{sbom}")).status == 202
    resp = await gw.get(f"/v2/{REPO}/referrers/{SUBJECT['digest']}")
    assert (await resp.json())["manifests"] == []


async def test_bad_digest_is_400(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/referrers/sha256:nothex")
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"


async def test_unknown_repository_is_still_200(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/never/pushed/referrers/{ZERO}")
    assert resp.status == 200
    assert (await resp.json())["manifests"] == []
