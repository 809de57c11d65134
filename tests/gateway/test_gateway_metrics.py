"""The gateway's /metrics, /healthz and /readyz: names, labels (no repository names or
digests as label values), counting once per request, and readiness against fake nodes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakecluster import FakeCluster
from fakenodes import DataPath, data_path
from prometheus_client.parser import text_string_to_metric_families

from cargohold.config import Config
from cargohold.digests import digest_of
from gateway.app import build_app, build_metrics_app
from gateway.context import GatewayContext
from gateway.health import READINESS

REPO = "secretteam/secretrepo"
DATA = os.urandom(200 * 1024)
DIGEST = digest_of(DATA)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(
        v for lbl, v in found.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())
    )


@pytest.fixture
async def dp() -> AsyncIterator[DataPath]:
    async for value_ in data_path(3):
        yield value_


async def test_requests_counted_by_route_template_never_by_repository(dp: DataPath) -> None:
    before = samples(await (await dp.http.get("/metrics")).text())
    resp = await dp.http.post(f"/v2/{REPO}/blobs/uploads/?digest={DIGEST}", data=DATA)
    assert resp.status == 201
    get = await dp.http.get(f"/v2/{REPO}/blobs/{DIGEST}")
    assert await get.read() == DATA
    missing = await dp.http.get(f"/v2/{REPO}/manifests/nosuchtag")
    assert missing.status == 404
    odd = await dp.http.request("PROPFIND", f"/v2/{REPO}/tags/list")
    assert odd.status == 405
    text = await (await dp.http.get("/metrics")).text()
    after = samples(text)

    upload_route = "/v2/{name}/blobs/uploads/"
    blob_route = "/v2/{name}/blobs/{digest}"
    for name, route, method, status in [
        ("cargohold_gateway_requests_total", upload_route, "POST", "201"),
        ("cargohold_gateway_requests_total", blob_route, "GET", "200"),
        ("cargohold_gateway_requests_total", "/v2/{name}/manifests/{reference}", "GET", "404"),
        # The router's own 404/405 have no route template.
        ("cargohold_gateway_requests_total", "unmatched", "other", "405"),
    ]:
        labels = {"route": route, "method": method, "status": status}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, labels
    grew = value(after, "cargohold_gateway_request_bytes_total", route=upload_route) - value(
        before, "cargohold_gateway_request_bytes_total", route=upload_route
    )
    assert grew == len(DATA)
    sent = value(after, "cargohold_gateway_response_bytes_total", route=blob_route) - value(
        before, "cargohold_gateway_response_bytes_total", route=blob_route
    )
    # A streamed response counts what went to the socket: its headers too.
    assert len(DATA) <= sent < len(DATA) + 4096
    assert value(after, "cargohold_gateway_request_seconds_count", route=blob_route) >= 1
    # gRPC calls to each fake node, by address and method.
    for node in dp.nodes.nodes:
        assert value(after, "cargohold_grpc_client_seconds_count", target=node.address) > 0
    assert value(after, "cargohold_grpc_client_seconds_count", method="Chunks/Put", code="OK") > 0
    # No label value anywhere names the repository, the digest or a chunk.
    assert "secretrepo" not in text and "secretteam" not in text
    assert DIGEST.removeprefix("sha256:") not in text
    assert "PROPFIND" not in text
    # Gauges exist and are back to zero once nothing runs.
    assert value(after, "cargohold_gateway_uploads_in_flight") == 0
    assert value(after, "cargohold_gateway_requests_in_flight") == 1  # the scrape itself
    assert value(after, "cargohold_gateway_buffered_request_bytes") == 0
    limit = value(after, "cargohold_gateway_buffered_request_bytes_limit")
    assert limit == dp.cfg.gateway.max_buffered_bytes


async def test_health_and_readiness_against_answering_nodes(dp: DataPath) -> None:
    health = await dp.http.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "alive"
    ready = await dp.http.get("/readyz")
    body = await ready.json()
    assert ready.status == 200, body
    assert body["writable_nodes"] == 3 and body["write_quorum"] == 2


async def test_not_ready_without_enough_nodes_for_w(fake_cluster: FakeCluster) -> None:
    """A cluster whose metadata answers but has no active member cannot take W copies."""
    cfg = Config()
    app = build_app(GatewayContext(cfg=cfg, cluster=fake_cluster))  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503
        assert body["status"] == "not ready" and "write quorum" in body["reason"]
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_separate_metrics_address_moves_metrics_off_the_registry_port(
    fake_cluster: FakeCluster,
) -> None:
    cfg = Config()
    cfg.gateway.metrics_address = "127.0.0.1:1"  # only its presence matters here
    app = build_app(GatewayContext(cfg=cfg, cluster=fake_cluster))  # type: ignore[arg-type]
    main = TestClient(TestServer(app))
    side = TestClient(TestServer(build_metrics_app(app[READINESS])))
    await main.start_server()
    await side.start_server()
    try:
        assert (await main.get("/metrics")).status == 404
        assert (await main.get("/healthz")).status == 200
        scraped = await side.get("/metrics")
        assert scraped.status == 200
        assert scraped.headers["Content-Type"].startswith("text/plain")
        assert "cargohold_gateway_requests_total" in await scraped.text()
        assert (await side.get("/readyz")).status == 503
    finally:
        await side.close()
        await main.close()
