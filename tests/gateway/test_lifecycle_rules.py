"""Immutable tag rules and delete-protected namespaces through the HTTP API
(cargohold/lifecycle_rules.py): a push moving a protected tag and a delete of one are
refused with 403 DENIED naming the rule; every delete in a protected namespace is refused;
everything else behaves as before. The state side is in tests/node/test_metadata_state.py.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from test_manifests import encode, image, link_all, put, sha

from cargohold.config import Config

PROD = "prod/app"
RULE = "prod/*:v*"


@pytest.fixture
def gateway_cfg() -> Config:
    cfg = Config()
    cfg.gateway.max_manifest_size = 64 * 1024
    cfg.lifecycle.immutable_tags = [RULE]
    cfg.lifecycle.delete_protected = ["locked"]
    return cfg


async def errors(resp) -> list[dict]:
    return list((await resp.json())["errors"])


async def pushed(gw: TestClient, fake, repo: str, tag: str, layers: int = 2) -> bytes:
    doc = image(layers=layers)
    link_all(fake, doc, repo)
    body = encode(doc)
    resp = await put(gw, tag, body, repo=repo)
    assert resp.status == 201, await resp.text()
    return body


async def test_an_immutable_tag_cannot_move_nor_be_deleted(gw: TestClient, fake_cluster) -> None:
    first = await pushed(gw, fake_cluster, PROD, "v1")
    # The same manifest again is no change: accepted.
    assert (await put(gw, "v1", first, repo=PROD)).status == 201
    other = image(layers=3)
    link_all(fake_cluster, other, PROD)
    resp = await put(gw, "v1", encode(other), repo=PROD)
    assert resp.status == 403
    [err] = await errors(resp)
    assert err["code"] == "DENIED" and RULE in err["message"] and "v1" in err["message"]
    got = await gw.get(f"/v2/{PROD}/manifests/v1")
    assert got.headers["Docker-Content-Digest"] == sha(first)

    resp = await gw.delete(f"/v2/{PROD}/manifests/v1")
    assert resp.status == 403 and RULE in (await errors(resp))[0]["message"]
    resp = await gw.delete(f"/v2/{PROD}/manifests/{sha(first)}")
    assert resp.status == 403 and (await errors(resp))[0]["code"] == "DENIED"
    assert (await gw.get(f"/v2/{PROD}/manifests/v1")).status == 200


async def test_tags_and_repositories_outside_the_rule_move_freely(
    gw: TestClient, fake_cluster
) -> None:
    await pushed(gw, fake_cluster, PROD, "latest")
    await pushed(gw, fake_cluster, PROD, "latest", layers=3)  # not v*: moves
    await pushed(gw, fake_cluster, "dev/app", "v1")
    await pushed(gw, fake_cluster, "dev/app", "v1", layers=3)  # not prod/*: moves
    assert (await gw.delete(f"/v2/{PROD}/manifests/latest")).status == 202
    assert (await gw.delete("/v2/dev/app/manifests/v1")).status == 202


async def test_deletes_in_a_protected_namespace_are_refused(gw: TestClient, fake_cluster) -> None:
    body = await pushed(gw, fake_cluster, "locked/app", "latest")
    for url in (
        "/v2/locked/app/manifests/latest",
        f"/v2/locked/app/manifests/{sha(body)}",
        f"/v2/locked/app/blobs/{image()['config']['digest']}",
    ):
        resp = await gw.delete(url)
        assert resp.status == 403, url
        [err] = await errors(resp)
        assert err["code"] == "DENIED" and "locked" in err["message"]
    assert (await gw.get("/v2/locked/app/manifests/latest")).status == 200
    # A neighbour whose name merely starts with the same letters is not in the namespace.
    await pushed(gw, fake_cluster, "lockedout/app", "latest")
    assert (await gw.delete("/v2/lockedout/app/manifests/latest")).status == 202
