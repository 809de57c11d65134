"""Error rendering, the API version header and route resolution of gateway/app.py."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from cargohold.config import Config
from cargohold.errors import MetadataStorageFull, StorageFull, TooManyRequests, Unavailable
from gateway import base, blobs, catalog, manifests, referrers, tags, uploads
from gateway.app import build_app
from gateway.context import GatewayContext

API = "Docker-Distribution-API-Version"
DIGEST = "sha256:" + "a" * 64


def _error_codes(body: dict) -> list[str]:
    return [e["code"] for e in body["errors"]]


async def test_base_is_200_empty_json_with_api_version(gw: TestClient) -> None:
    resp = await gw.get("/v2/")
    assert resp.status == 200
    assert await resp.json() == {}
    assert resp.headers[API] == "registry/2.0"


async def test_unknown_path_is_404_json_with_api_version(gw: TestClient) -> None:
    resp = await gw.get("/v2/foo/nothing-here")
    assert resp.status == 404
    assert resp.headers[API] == "registry/2.0"
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert _error_codes(body) == ["NOT_FOUND"]
    assert set(body["errors"][0]) == {"code", "message", "detail"}


async def test_wrong_method_is_405_json_with_allow(gw: TestClient) -> None:
    resp = await gw.post("/v2/foo/tags/list")
    assert resp.status == 405
    assert _error_codes(await resp.json()) == ["UNSUPPORTED"]
    assert "GET" in resp.headers["Allow"]
    assert resp.headers[API] == "registry/2.0"


async def test_registry_error_has_code_message_detail(gw: TestClient) -> None:
    resp = await gw.get("/v2/Bad_Name/tags/list")
    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["code"] == "NAME_INVALID"
    assert body["errors"][0]["detail"] == {"name": "Bad_Name"}
    assert resp.headers[API] == "registry/2.0"


async def test_unexpected_exception_is_500_json(
    gw: TestClient, fake_cluster, caplog: pytest.LogCaptureFixture
) -> None:
    fake_cluster.fail_next = RuntimeError("boom")
    with caplog.at_level("ERROR", logger="cargohold.gateway"):
        resp = await gw.get("/v2/_catalog")
    assert resp.status == 500
    assert _error_codes(await resp.json()) == ["UNKNOWN"]
    assert resp.headers[API] == "registry/2.0"
    failures = [r for r in caplog.records if r.getMessage() == "request.failed"]
    assert len(failures) == 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Unavailable(), 503, "UNAVAILABLE"),
        (TooManyRequests(), 429, "TOOMANYREQUESTS"),
    ],
)
async def test_retry_after_on_503_and_429(
    gw: TestClient, fake_cluster, error, status, code
) -> None:
    fake_cluster.fail_next = error
    resp = await gw.get("/v2/_catalog")
    assert resp.status == status
    assert resp.headers["Retry-After"] == "1"
    assert _error_codes(await resp.json()) == [code]


async def test_error_headers_are_kept(gw: TestClient, fake_cluster) -> None:
    fake_cluster.fail_next = Unavailable(headers={"Retry-After": "7"})
    resp = await gw.get("/v2/_catalog")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"


async def test_head_error_has_status_and_no_body(gw: TestClient) -> None:
    resp = await gw.head(f"/v2/foo/manifests/{DIGEST}")
    assert resp.status == 404
    assert resp.headers[API] == "registry/2.0"
    assert await resp.read() == b""


async def test_never_gzip(gw: TestClient) -> None:
    resp = await gw.get("/v2/_catalog", headers={"Accept-Encoding": "gzip, deflate"})
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers


def _resolve_app() -> web.Application:
    return build_app(GatewayContext(cfg=Config(), cluster=None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "handler", "match"),
    [
        ("GET", "/v2/", base.api_version_check, {}),
        ("GET", "/v2/_catalog", catalog.catalog, {}),
        (
            "GET",
            "/v2/a/blobs/b/manifests/latest",
            manifests.get_manifest,
            {"name": "a/blobs/b", "reference": "latest"},
        ),
        (
            "PUT",
            "/v2/a/tags/list/manifests/v1",
            manifests.put_manifest,
            {"name": "a/tags/list", "reference": "v1"},
        ),
        (
            "DELETE",
            f"/v2/x/y/manifests/{DIGEST}",
            manifests.delete_manifest,
            {"name": "x/y", "reference": DIGEST},
        ),
        ("GET", "/v2/a/manifests/b/tags/list", tags.list_tags, {"name": "a/manifests/b"}),
        (
            "GET",
            f"/v2/a/b/c/referrers/{DIGEST}",
            referrers.list_referrers,
            {"name": "a/b/c", "digest": DIGEST},
        ),
        (
            "GET",
            f"/v2/a/referrers/x/referrers/{DIGEST}",
            referrers.list_referrers,
            {"name": "a/referrers/x", "digest": DIGEST},
        ),
    ],
)
async def test_routes_pick_the_rightmost_suffix(method, path, handler, match) -> None:
    app = _resolve_app()
    info = await app.router.resolve(make_mocked_request(method, path, app=app))
    assert info.handler is handler
    assert dict(info) == match


@pytest.mark.parametrize(
    ("method", "path", "expected", "match"),
    [
        (
            "POST",
            "/v2/a/manifests/b/blobs/uploads/",
            uploads.start_upload,
            {"name": "a/manifests/b"},
        ),
        (
            "PATCH",
            "/v2/a/blobs/uploads/blobs/uploads/abc",
            uploads.patch_upload,
            {"name": "a/blobs/uploads", "upload": "abc"},
        ),
        (
            "GET",
            "/v2/a/b/blobs/uploads/abc",
            uploads.get_upload_status,
            {"name": "a/b", "upload": "abc"},
        ),
        ("PUT", "/v2/a/blobs/uploads/abc", uploads.put_upload, {"name": "a", "upload": "abc"}),
        (
            "DELETE",
            "/v2/a/blobs/uploads/abc",
            uploads.cancel_upload,
            {"name": "a", "upload": "abc"},
        ),
        (
            "GET",
            f"/v2/a/manifests/b/blobs/{DIGEST}",
            blobs.get_blob,
            {"name": "a/manifests/b", "digest": DIGEST},
        ),
        ("HEAD", f"/v2/a/blobs/{DIGEST}", blobs.get_blob, {"name": "a", "digest": DIGEST}),
        ("DELETE", f"/v2/a/blobs/{DIGEST}", blobs.delete_blob, {"name": "a", "digest": DIGEST}),
    ],
)
async def test_data_path_routes(method, path, expected, match) -> None:
    app = _resolve_app()
    info = await app.router.resolve(make_mocked_request(method, path, app=app))
    assert info.handler is expected
    assert dict(info) == match


async def test_failure_after_response_started_drops_the_connection(fake_cluster) -> None:
    async def half_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        raise Unavailable()

    app = build_app(GatewayContext(cfg=Config(), cluster=fake_cluster))
    app.router.add_get("/v2/test/half", half_stream)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v2/test/half")
        assert resp.status == 200
        assert resp.headers[API] == "registry/2.0"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.parametrize("error", [StorageFull, MetadataStorageFull])
async def test_storage_full_is_507_denied_with_the_nodes_in_the_detail(
    gw: TestClient, fake_cluster, error
) -> None:
    nodes = [{"node": "n1", "free_bytes": 1024, "reserve_bytes": 4096}]
    fake_cluster.fail_next = error(detail={"nodes": nodes})
    resp = await gw.get("/v2/_catalog")
    assert resp.status == 507
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "Retry-After" not in resp.headers
    (entry,) = (await resp.json())["errors"]
    assert entry["code"] == "DENIED"
    assert "storage is full" in entry["message"]
    assert entry["detail"] == {"nodes": nodes}
