"""`GET /v2/_catalog` over the in-memory FakeCluster: same paging rules as tag lists."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

REPOS = ["a", "a/b", "a-b", "b/c/d", "z"]


@pytest.fixture
def repos(fake_cluster) -> None:
    for repo in REPOS:
        fake_cluster.link_blob(repo, "sha256:" + "0" * 64)


@pytest.mark.usefixtures("repos")
async def test_catalog_lists_every_repository_sorted(gw: TestClient) -> None:
    resp = await gw.get("/v2/_catalog")
    assert resp.status == 200
    assert await resp.json() == {"repositories": sorted(REPOS)}
    assert "Link" not in resp.headers


@pytest.mark.usefixtures("repos")
async def test_catalog_pages_with_link(gw: TestClient) -> None:
    resp = await gw.get("/v2/_catalog?n=2")
    assert (await resp.json())["repositories"] == ["a", "a-b"]
    assert resp.headers["Link"] == '</v2/_catalog?n=2&last=a-b>; rel="next"'
    resp = await gw.get("/v2/_catalog?n=2&last=a-b")
    assert (await resp.json())["repositories"] == ["a/b", "b/c/d"]
    assert resp.headers["Link"] == '</v2/_catalog?n=2&last=b/c/d>; rel="next"'
    resp = await gw.get("/v2/_catalog?n=2&last=b/c/d")
    assert (await resp.json())["repositories"] == ["z"]
    assert "Link" not in resp.headers


@pytest.mark.usefixtures("repos")
async def test_catalog_n_zero_is_empty_without_link(gw: TestClient) -> None:
    resp = await gw.get("/v2/_catalog?n=0")
    assert await resp.json() == {"repositories": []}
    assert "Link" not in resp.headers


async def test_empty_catalog(gw: TestClient) -> None:
    resp = await gw.get("/v2/_catalog")
    assert await resp.json() == {"repositories": []}


@pytest.mark.parametrize("n", ["-5", "x", "100000"])
async def test_catalog_bad_n_is_400(gw: TestClient, n: str) -> None:
    resp = await gw.get("/v2/_catalog", params={"n": n})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
