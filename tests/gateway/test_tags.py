"""Tag listing and the shared `?n=&last=` pagination, over the in-memory FakeCluster."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

REPO = "org/app"
# Byte order: upper case sorts before lower case, digits before letters.
TAGS = ["1.0", "1.1", "Latest", "a", "b-2", "b_1", "latest", "v1"]


@pytest.fixture
def tagged(fake_cluster) -> None:
    fake_cluster.link_blob(REPO, "sha256:" + "0" * 64)
    for tag in TAGS:
        fake_cluster.tag(REPO, tag, "sha256:" + "0" * 64)


async def _codes(resp) -> list[str]:
    return [e["code"] for e in (await resp.json())["errors"]]


@pytest.mark.usefixtures("tagged")
async def test_all_tags_in_byte_order_without_link(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": REPO, "tags": sorted(TAGS)}
    assert "Link" not in resp.headers


@pytest.mark.usefixtures("tagged")
async def test_pages_follow_the_link_header(gw: TestClient) -> None:
    seen: list[str] = []
    url = f"/v2/{REPO}/tags/list?n=3"
    links = 0
    while url:
        resp = await gw.get(url)
        assert resp.status == 200
        tags = (await resp.json())["tags"]
        assert len(tags) == 3 or "Link" not in resp.headers
        seen += tags
        link = resp.headers.get("Link")
        if link:
            links += 1
            assert link.endswith('>; rel="next"')
            url = link[1 : link.index(">")]
            assert url.startswith(f"/v2/{REPO}/tags/list?n=3&last=")
        else:
            url = ""
    assert seen == sorted(TAGS)
    assert links == 2


@pytest.mark.usefixtures("tagged")
async def test_last_is_exclusive_and_exact_n(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/tags/list", params={"n": "2", "last": "Latest"})
    assert (await resp.json())["tags"] == ["a", "b-2"]
    assert resp.headers["Link"] == f'</v2/{REPO}/tags/list?n=2&last=b-2>; rel="next"'


@pytest.mark.usefixtures("tagged")
async def test_last_page_exactly_full_has_no_link(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/tags/list", params={"n": "2", "last": "b_1"})
    assert (await resp.json())["tags"] == ["latest", "v1"]
    assert "Link" not in resp.headers


@pytest.mark.usefixtures("tagged")
async def test_n_zero_is_empty_without_link(gw: TestClient) -> None:
    resp = await gw.get(f"/v2/{REPO}/tags/list?n=0")
    assert resp.status == 200
    assert await resp.json() == {"name": REPO, "tags": []}
    assert "Link" not in resp.headers


@pytest.mark.usefixtures("tagged")
async def test_default_page_size_is_applied_with_link(gw: TestClient, gateway_cfg) -> None:
    gateway_cfg.gateway.default_page_size = 5
    resp = await gw.get(f"/v2/{REPO}/tags/list")
    assert (await resp.json())["tags"] == sorted(TAGS)[:5]
    assert resp.headers["Link"] == f'</v2/{REPO}/tags/list?n=5&last=b-2>; rel="next"'


@pytest.mark.usefixtures("tagged")
@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "1001", "²"])
async def test_bad_n_is_pagination_number_invalid(gw: TestClient, n: str) -> None:
    resp = await gw.get(f"/v2/{REPO}/tags/list", params={"n": n})
    assert resp.status == 400
    assert await _codes(resp) == ["PAGINATION_NUMBER_INVALID"]


async def test_unknown_repository_is_name_unknown(gw: TestClient) -> None:
    resp = await gw.get("/v2/nobody/here/tags/list")
    assert resp.status == 404
    assert await _codes(resp) == ["NAME_UNKNOWN"]


async def test_invalid_name_is_name_invalid(gw: TestClient) -> None:
    resp = await gw.get("/v2/Nope/tags/list")
    assert resp.status == 400
    assert await _codes(resp) == ["NAME_INVALID"]
