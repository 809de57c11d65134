"""gateway/mirror/referrers.py against a small aiohttp registry: the referrers API, the
tag schema where there is none, the API's pages followed (`Link: rel="next"`) up to
`mirror.referrers_max_pages` and never to another host, and unusable answers refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cargohold.config import MirrorConfig, ProxyConfig
from cargohold.digests import digest_of
from gateway.mirror.referrers import fallback_tag, fetch_referrers, next_link
from gateway.mirror.upstream import Upstream, UpstreamFailed

SUBJECT = "sha256:" + "d" * 64
SCOPE = "repository:x:pull"


def descriptor(n: int) -> dict[str, object]:
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{n:064x}",
        "size": 10,
        "artifactType": "application/x-sig",
    }


def index(descriptors: list[dict[str, object]]) -> dict[str, object]:
    return {"schemaVersion": 2, "manifests": descriptors}


class FakeUpstream:
    """Repositories by behaviour: `api/*` answers the API (`paged/*` 2 per page, 7 in all;
    `away/*` pages to another host), `tags/*` keeps the tag schema's index, `bad/*` keeps
    a tag that is not an index; anything else has neither."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.server: TestServer | None = None

    async def referrers(self, request: web.Request) -> web.Response:
        self.asked.append(request.path_qs)
        name = request.match_info["name"]
        if name.startswith("api/"):
            return web.json_response(index([descriptor(1)]))
        if name.startswith("paged/"):
            page = int(request.query.get("page", "0"))
            body = index([descriptor(n) for n in range(page * 2, min(page * 2 + 2, 7))])
            headers = {}
            if page * 2 + 2 < 7:  # relative, as Distribution and Zot send it
                url = f"/v2/{name}/referrers/{request.match_info['digest']}?page={page + 1}"
                headers["Link"] = f'<{url}>; rel="next"'
            return web.json_response(body, headers=headers)
        if name.startswith("away/"):
            headers = {"Link": '<http://elsewhere.example/v2/x/referrers/y?p=2>; rel="next"'}
            return web.json_response(index([descriptor(1)]), headers=headers)
        return web.Response(status=404)  # no referrers API (Distribution 2.x)

    async def manifest(self, request: web.Request) -> web.Response:
        self.asked.append(request.path_qs)
        name, ref = request.match_info["name"], request.match_info["ref"]
        if ref != fallback_tag(SUBJECT):
            return web.Response(status=404)
        if name.startswith("tags/"):
            body = json.dumps(index([descriptor(3)])).encode()
            return web.Response(body=body, headers={"Docker-Content-Digest": digest_of(body)})
        if name.startswith("lying/"):
            body = json.dumps(index([descriptor(3)])).encode()
            return web.Response(body=body, headers={"Docker-Content-Digest": "sha256:" + "0" * 64})
        if name.startswith("bad/"):
            return web.Response(body=b"[1, 2]")
        return web.Response(status=404)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v2/{name:.+}/referrers/{digest}", self.referrers)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self.manifest)
        self.server = TestServer(app)
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeUpstream, str]]:
    registry = FakeUpstream()
    url = await registry.start()
    yield registry, url
    assert registry.server is not None
    await registry.server.close()


def upstream(url: str, max_pages: int = 10) -> Upstream:
    proxy = ProxyConfig("up", url)
    return Upstream(proxy, MirrorConfig(proxies=[proxy], referrers_max_pages=max_pages))


async def test_the_api_else_the_tag_schema_else_none(fake: tuple[FakeUpstream, str]) -> None:
    registry, url = fake
    up = upstream(url)
    try:
        found = await fetch_referrers(up, "api/x", SUBJECT, SCOPE, 4096)
        assert (found.descriptors, found.api) == ([descriptor(1)], True)
        assert registry.asked == [f"/v2/api/x/referrers/{SUBJECT}"]
        found = await fetch_referrers(up, "tags/x", SUBJECT, SCOPE, 4096)
        assert (found.descriptors, found.api) == ([descriptor(3)], False)
        assert registry.asked[-1] == "/v2/tags/x/manifests/" + fallback_tag(SUBJECT)
        # A registry known to lack the API is not asked for it again.
        asked = len(registry.asked)
        found = await fetch_referrers(up, "tags/x", SUBJECT, SCOPE, 4096, use_api=False)
        assert found.descriptors == [descriptor(3)] and len(registry.asked) == asked + 1
        found = await fetch_referrers(up, "none/x", SUBJECT, SCOPE, 4096)
        assert (found.descriptors, found.api) == ([], False)
    finally:
        await up.close()


async def test_unusable_answers_are_upstream_failed_not_unreachable(
    fake: tuple[FakeUpstream, str],
) -> None:
    _, url = fake
    up = upstream(url)
    try:
        for repo, limit in (("bad/x", 4096), ("lying/x", 4096), ("api/x", 16)):
            with pytest.raises(UpstreamFailed) as failed:
                await fetch_referrers(up, repo, SUBJECT, SCOPE, limit)
            assert failed.value.status == 200  # an answer: the registry is reachable
    finally:
        await up.close()


async def test_pages_are_followed_up_to_the_limit(fake: tuple[FakeUpstream, str]) -> None:
    registry, url = fake
    up = upstream(url)
    try:
        found = await fetch_referrers(up, "paged/x", SUBJECT, SCOPE, 4096)
        assert found.descriptors == [descriptor(n) for n in range(7)] and found.api
        assert [p.rsplit("?", 1)[-1] for p in registry.asked[1:]] == [
            "page=1",
            "page=2",
            "page=3",
        ]
    finally:
        await up.close()
    registry.asked.clear()
    short = upstream(url, max_pages=2)
    try:
        found = await fetch_referrers(short, "paged/x", SUBJECT, SCOPE, 4096)
        assert found.descriptors == [descriptor(n) for n in range(4)]  # 2 pages, then stop
        assert len(registry.asked) == 2
    finally:
        await short.close()


async def test_a_next_page_on_another_host_is_not_asked(fake: tuple[FakeUpstream, str]) -> None:
    registry, url = fake
    up = upstream(url)
    try:
        found = await fetch_referrers(up, "away/x", SUBJECT, SCOPE, 4096)
        assert found.descriptors == [descriptor(1)]
        assert registry.asked == [f"/v2/away/x/referrers/{SUBJECT}"]
    finally:
        await up.close()


def test_next_link_reads_rel_next_among_other_links() -> None:
    assert next_link('</v2/a?last=b>; rel="next"') == "/v2/a?last=b"
    assert next_link('<http://h/p1>; rel="prev", <http://h/p3>; rel=next') == "http://h/p3"
    assert next_link('<http://h/p1>; rel="prev"') is None
    assert next_link("") is None
