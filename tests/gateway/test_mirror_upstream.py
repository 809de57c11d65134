"""gateway/mirror/upstream.py against small aiohttp servers: the Docker token protocol
(one token per scope, reused), Basic after a Basic challenge, redirects followed without
the credentials when they leave the upstream's host, and the typed errors. (Referrers:
test_mirror_referrers.py.)"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cargohold.config import MirrorConfig, ProxyConfig
from gateway.mirror.upstream import Upstream, UpstreamFailed, UpstreamNotFound

BASIC = "Basic " + base64.b64encode(b"alice:pw").decode()


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, object]]:
    seen: dict[str, object] = {"token_requests": [], "cdn_auth": [], "auth": []}
    cdn = web.Application()

    async def cdn_blob(request: web.Request) -> web.Response:
        seen["cdn_auth"].append(request.headers.get("Authorization"))  # type: ignore[attr-defined]
        return web.Response(body=b"blob-bytes")

    cdn.router.add_get("/blob", cdn_blob)
    cdn_server = TestServer(cdn)
    await cdn_server.start_server()

    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        seen["token_requests"].append(  # type: ignore[attr-defined]
            (request.query.get("scope"), request.headers.get("Authorization"))
        )
        if request.headers.get("Authorization") != BASIC:
            return web.Response(status=401)
        return web.json_response({"token": "tok-" + request.query["scope"], "expires_in": 300})

    def challenge(request: web.Request, repo: str) -> web.Response | None:
        seen["auth"].append(request.headers.get("Authorization"))  # type: ignore[attr-defined]
        if request.headers.get("Authorization") == f"Bearer tok-repository:{repo}:pull":
            return None
        realm = f"http://{request.host}/token"
        header = f'Bearer realm="{realm}",service="up",scope="repository:{repo}:pull"'
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    async def manifest(request: web.Request) -> web.Response:
        refused = challenge(request, request.match_info["name"])
        if refused is not None:
            return refused
        if request.match_info["ref"] == "missing":
            return web.Response(status=404)
        return web.Response(body=b"{}", headers={"Docker-Content-Digest": "sha256:" + "a" * 64})

    async def blob(request: web.Request) -> web.Response:
        refused = challenge(request, request.match_info["name"])
        if refused is not None:
            return refused
        raise web.HTTPTemporaryRedirect(str(cdn_server.make_url("/blob")))

    async def basic_only(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != BASIC:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
        return web.Response(headers={"Docker-Content-Digest": "sha256:" + "b" * 64})

    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/basic/{name:.+}/manifests/{ref}", basic_only)
    app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", manifest)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    server = TestServer(app)
    await server.start_server()
    seen["url"] = str(server.make_url("")).rstrip("/")
    try:
        yield seen
    finally:
        await server.close()
        await cdn_server.close()


def _upstream(url: str, user: str = "alice", password: str = "pw") -> Upstream:
    proxy = ProxyConfig("up", url, username=user, password=password)
    return Upstream(proxy, MirrorConfig(proxies=[proxy]))


async def test_token_per_scope_reused_and_redirect_drops_credentials(
    servers: dict[str, object],
) -> None:
    up = _upstream(str(servers["url"]))
    try:
        assert await up.head_manifest("team/a", "v1") == "sha256:" + "a" * 64
        assert await up.head_manifest("team/a", "v2") == "sha256:" + "a" * 64
        assert servers["token_requests"] == [("repository:team/a:pull", BASIC)]
        async with up.open_blob("team/a", "sha256:" + "c" * 64) as resp:
            assert await resp.read() == b"blob-bytes"
        # The CDN on another host never saw the upstream's token.
        assert servers["cdn_auth"] == [None]
        # One token for the scope, reused by the manifest and the blob requests.
        assert len(servers["token_requests"]) == 1  # type: ignore[arg-type]
        with pytest.raises(UpstreamNotFound):
            await up.head_manifest("team/a", "missing")
    finally:
        await up.close()


async def test_basic_after_a_basic_challenge(servers: dict[str, object]) -> None:
    up = _upstream(str(servers["url"]))
    try:
        assert await up.head_manifest("basic/x", "v1") == "sha256:" + "b" * 64
        assert await up.head_manifest("basic/x", "v2") == "sha256:" + "b" * 64
    finally:
        await up.close()


async def test_refused_and_unreachable_are_upstream_failed(servers: dict[str, object]) -> None:
    wrong = _upstream(str(servers["url"]), password="nope")
    anonymous = _upstream(str(servers["url"]), user="", password="")
    gone = _upstream("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        for up in (wrong, anonymous):
            with pytest.raises(UpstreamFailed):
                await up.head_manifest("team/a", "v1")
        with pytest.raises(UpstreamFailed):
            await anonymous.head_manifest("basic/x", "v1")
        with pytest.raises(UpstreamFailed):
            await gone.head_manifest("team/a", "v1")
    finally:
        for up in (wrong, anonymous, gone):
            await up.close()


def test_docker_hub_bare_names_mean_library() -> None:
    hub = _upstream("https://registry-1.docker.io")
    assert hub.upstream_repo("busybox") == "library/busybox"
    assert hub.upstream_repo("bitnami/redis") == "bitnami/redis"
    assert _upstream("https://ghcr.io").upstream_repo("busybox") == "busybox"
