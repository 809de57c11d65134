"""Fixtures of the API-surface gateway tests: an in-process gateway over a FakeCluster (the
real `MetadataState` behind a fake transport, chunks in a dict).

Tests against real processes use the suite-wide `cluster`/`registry` fixtures of
tests/conftest.py instead; the data-path tests bring their own (`fakenodes.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakecluster import FakeCluster

from cargohold.config import Config
from gateway.app import build_app
from gateway.context import GatewayContext


@pytest.fixture
def fake_cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def gateway_cfg() -> Config:
    """The config of the in-process gateway; tests may change fields before using `gw`."""
    cfg = Config()
    cfg.gateway.max_manifest_size = 64 * 1024
    cfg.gateway.default_page_size = 100
    cfg.gateway.max_page_size = 1000
    return cfg


@pytest.fixture
async def gw(gateway_cfg: Config, fake_cluster: FakeCluster) -> AsyncIterator[TestClient]:
    """An HTTP client of an in-process gateway over the FakeCluster."""
    app = build_app(GatewayContext(cfg=gateway_cfg, cluster=fake_cluster))  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
