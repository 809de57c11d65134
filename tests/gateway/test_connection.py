"""gateway/connection.py and gateway/access_log.py through the real runner and sockets.

Parser-level errors and HTTP/0.9 answered as OCI JSON (never plain text or an `HTTP/0.9`
status line), quietly logged; header and keep-alive timeouts; the per-client connection
limit; the access log line and request ids, down to the gRPC metadata a node sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from aiohttp import ClientSession, web
from fakecluster import FakeCluster

from cargohold.config import Config
from cargohold.grpc_channels import open_channel
from cargohold.request_ids import REQUEST_ID, adopt, call_metadata
from cargohold_cli.devcluster import free_port
from gateway.app import build_app
from gateway.context import GatewayContext
from gateway.server import make_runner

# Every read below is bounded by this: a hang guard, not a timing assertion.
_GUARD = 10.0


@pytest.fixture
def cfg() -> Config:
    cfg = Config()
    cfg.gateway.header_timeout_seconds = 0.5
    cfg.gateway.keepalive_timeout_seconds = 0.5
    cfg.gateway.max_connections_per_client = 3
    return cfg


@pytest.fixture
async def port(cfg: Config) -> AsyncIterator[int]:
    app = build_app(GatewayContext(cfg=cfg, cluster=FakeCluster()))  # type: ignore[arg-type]
    runner = make_runner(app, cfg)
    await runner.setup()
    number = free_port()
    await web.TCPSite(runner, "127.0.0.1", number).start()
    try:
        yield number
    finally:
        await runner.cleanup()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), _GUARD)
    finally:
        writer.close()


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v2/\r\n\r\n",  # HTTP/0.9: aiohttp answered "HTTP/0.9 200"
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the HTTP port
        b"GET /v2/" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n",
    ],
    ids=["http09", "bad-header", "negative-length", "tls", "long-line", "long-header"],
)
async def test_parser_errors_are_oci_json_and_one_quiet_log_line(
    port: int, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body = split(await exchange(port, raw))
    assert status.startswith(("HTTP/1.1 4", "HTTP/1.0 4")), status
    assert headers["content-type"].startswith("application/json")
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert json.loads(body)["errors"][0]["code"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["http.bad_request"]
    assert not any(r.exc_info for r in caplog.records)


async def test_bad_request_lines_are_rate_limited(
    port: int, caplog: pytest.LogCaptureFixture, cfg: Config
) -> None:
    for _ in range(int(cfg.gateway.bad_request_log_per_second) + 20):
        await exchange(port, b"GET /v2/ HTTP/1.1\r\nBad Header\r\n\r\n")
    lines = [r for r in caplog.records if r.getMessage() == "http.bad_request"]
    assert 1 <= len(lines) < int(cfg.gateway.bad_request_log_per_second) + 20


async def test_slow_headers_get_408_and_the_connection_closes(port: int) -> None:
    # Never finishes its headers (slowloris): answered and closed after the header timeout.
    status, _, body = split(await exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"))
    assert status.startswith("HTTP/1.1 408")
    assert json.loads(body)["errors"][0]["code"] == "TIMEOUT"


async def test_idle_keepalive_connection_closes(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), _GUARD)  # returns at EOF only
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_per_client_connection_limit(port: int, cfg: Config) -> None:
    limit = cfg.gateway.max_connections_per_client
    cfg.gateway.keepalive_timeout_seconds = 30
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(limit)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), _GUARD) == b""  # closed, unanswered
        writer.close()
        # The first ones are still served.
        r0, w0 = opened[0]
        w0.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(r0.read(), _GUARD)).startswith(b"HTTP/1.1 200")
    finally:
        for _, w in opened:
            w.close()


# -- access log and request ids ---------------------------------------------------------
async def test_one_access_line_per_request_with_its_fields(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cargohold.access")
    async with ClientSession() as http:
        url = f"http://127.0.0.1:{port}/v2/some/repo/manifests/latest"
        async with http.get(url, headers={"User-Agent": "probe/1", "X-Request-Id": "abc-1"}) as r:
            assert r.status == 404
            assert r.headers["X-Request-Id"] == "abc-1"
        async with http.get(f"http://127.0.0.1:{port}/v2/", headers={"X-Request-Id": "b\tad"}) as r:
            generated = r.headers["X-Request-Id"]
            assert generated != "b\tad" and len(generated) == 16
    lines = [r for r in caplog.records if r.name == "cargohold.access"]
    assert len(lines) == 2
    first: dict[str, Any] = lines[0].fields  # type: ignore[attr-defined]
    assert first["request_id"] == "abc-1"
    assert first["method"] == "GET"
    assert first["route"] == "/v2/{name}/manifests/{reference}"
    assert first["repo"] == "some/repo"
    assert first["status"] == 404
    assert first["user_agent"] == "probe/1"
    assert first["client"] == "127.0.0.1"
    assert first["user"] == ""
    assert first["bytes_out"] > 0 and first["bytes_in"] == 0 and first["duration_ms"] >= 0
    assert lines[1].fields["request_id"] == generated  # type: ignore[attr-defined]


async def test_pull_sampling_drops_successful_pulls_only(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.access_log import access_logger_class

    logger = logging.getLogger("cargohold.access")
    caplog.set_level(logging.INFO, logger="cargohold.access")
    access = access_logger_class(0.0)(logger, "")

    class _Req(dict):
        method = "GET"
        remote = "1.2.3.4"
        headers: dict[str, str] = {}

        def __init__(self, canonical: str) -> None:
            super().__init__()
            resource = type("R", (), {"canonical": canonical})()
            route = type("Rt", (), {"resource": resource})()
            self._match_info = type("M", (dict,), {"route": route})()

    ok, missing = web.Response(status=200), web.Response(status=404)
    access.log(_Req("/v2/{name}/blobs/{digest}"), ok, 0.1)
    access.log(_Req("/v2/{name}/blobs/{digest}"), missing, 0.1)
    access.log(_Req("/v2/{name}/tags/list"), ok, 0.1)
    statuses = [(r.fields["route"], r.fields["status"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert statuses == [("/v2/{name}/blobs/{digest}", 404), ("/v2/{name}/tags/list", 200)]


async def test_request_id_travels_as_grpc_metadata_to_the_node(cfg: Config) -> None:
    seen: list[str | None] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        adopt(context)  # as the node's metadata and chunk services do
        seen.append(REQUEST_ID.get())
        return request

    handler: Callable[..., Any] = grpc.unary_unary_rpc_method_handler(echo)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Echo", {"Call": handler})]
    )
    number = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{number}", cfg)
    try:
        call = channel.unary_unary("/test.Echo/Call")
        assert await call(b"x", timeout=_GUARD, metadata=call_metadata()) == b"x"
        token = REQUEST_ID.set("req-42")
        try:
            assert await call(b"y", timeout=_GUARD, metadata=call_metadata()) == b"y"
        finally:
            REQUEST_ID.reset(token)
        assert seen == [None, "req-42"]
    finally:
        await channel.close()
        await server.stop(None)
