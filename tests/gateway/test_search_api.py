"""`GET /_cargohold/api/v1/search` over the in-process FakeCluster (the real state machine):
query parameters, the platform and labels a push reads from the config blob, errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import MultiDict

from cargohold.errors import RequestInvalid
from gateway.image_info import config_info, index_info
from gateway.search import parse_size, parse_time, spec_from_query
from tests.gateway.fakecluster import FakeCluster

URL = "/_cargohold/api/v1/search"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_image(
    gw: TestClient,
    fake: FakeCluster,
    repo: str,
    tag: str,
    arch: str,
    labels: dict[str, str],
    authorization: str | None = None,
) -> str:
    config = json.dumps(
        {"architecture": arch, "os": "linux", "config": {"Labels": labels}, "rootfs": {}}
    ).encode()
    layer = f"layer of {repo}:{tag}".encode()
    for data in (config, layer):  # stored and linked as a finished upload would
        fake.link_blob(repo, sha(data), await fake.store_bytes(data))  # type: ignore[arg-type]
    manifest = json.dumps(
        {
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
    ).encode()
    resp = await gw.put(
        f"/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            **({"Authorization": authorization} if authorization else {}),
        },
    )
    assert resp.status == 201, await resp.text()
    return sha(manifest)


async def found(gw: TestClient, **params: Any) -> list[str]:
    resp = await gw.get(URL, params=params)
    assert resp.status == 200, await resp.text()
    return [f"{i['repository']}:{i['tag']}" for i in (await resp.json())["items"]]


async def test_search_by_config_labels_and_platform(gw: TestClient, fake_cluster) -> None:
    vendor = {"org.opencontainers.image.vendor": "acme"}
    await push_image(gw, fake_cluster, "acme/web", "1", "amd64", vendor)
    await push_image(gw, fake_cluster, "acme/web", "2", "arm64", {"tier": "web"})
    await push_image(gw, fake_cluster, "other/db", "9", "amd64", {})
    assert await found(gw, label="org.opencontainers.image.vendor=acme") == ["acme/web:1"]
    assert await found(gw, platform="linux/arm64") == ["acme/web:2"]
    assert await found(gw, platform="linux/amd64") == ["acme/web:1", "other/db:9"]
    assert await found(gw, q="web", sort="-name") == ["acme/web:2", "acme/web:1"]
    assert await found(gw, namespace="other") == ["other/db:9"]
    resp = await gw.get(URL, params={"kind": "repository"})
    body = await resp.json()
    assert [r["repository"] for r in body["items"]] == ["acme/web", "other/db"]
    assert body["items"][0]["tags"] == 2
    page = await (await gw.get(URL, params={"n": "1"})).json()
    assert len(page["items"]) == 1 and page["next"]
    rest = await found(gw, n="5", cursor=page["next"])
    assert rest == ["acme/web:2", "other/db:9"]


@pytest.mark.parametrize(
    "params",
    [{"sort": "bogus"}, {"n": "x"}, {"platform": "linux"}, {"pushed_after": "yesterday"}],
)
async def test_bad_parameters_are_400(gw: TestClient, params: dict[str, str]) -> None:
    resp = await gw.get(URL, params=params)
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"]


def test_query_parameters_become_a_spec() -> None:
    spec = spec_from_query(
        MultiDict(
            [
                ("q", "app"),
                ("label", "a=b"),
                ("label", "c"),
                ("annotation", "org.opencontainers.image.created"),
                ("sort", "-pushed"),
                ("min_size", "1M"),
                ("pushed_after", "2026-01-01T00:00:00Z"),
                ("n", "7"),
            ]
        )
    )
    assert spec.q == "app" and spec.labels == ("a=b", "c") and spec.n == 7
    assert spec.annotations == ("org.opencontainers.image.created",)
    assert spec.sort == "pushed" and spec.desc is True
    assert spec.min_size == 1024 * 1024
    assert spec.pushed_after == 1767225600.0
    assert spec_from_query(MultiDict(order="desc")).desc is True
    assert parse_time("t", "1700000000.5") == 1700000000.5
    assert parse_time("t", "2026-01-01") == 1767225600.0
    assert parse_size("s", "2GiB") == 2 << 30
    with pytest.raises(RequestInvalid):
        parse_size("s", "lots")


def test_info_from_configs_and_indexes() -> None:
    config = {"os": "Linux", "architecture": "ARM64", "variant": "v8", "config": {"Labels": None}}
    assert config_info(json.dumps(config).encode()) == {"platforms": ["linux/arm64/v8"]}
    labels = {f"k{i:03}": "v" for i in range(100)} | {"long": "x" * 1000}
    info = config_info(json.dumps({"config": {"Labels": labels}}).encode())
    assert info is not None and len(info["labels"]) == 64 and "long" not in info["labels"]
    assert config_info(b"not json") is None
    index = {"manifests": [{"platform": {"os": "linux", "architecture": "amd64"}}, {}]}
    assert index_info(index) == {"platforms": ["linux/amd64"]}
