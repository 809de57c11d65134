"""The client address: the TCP peer, or X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from authkit import basic, token_config
from fakecluster import FakeCluster

from cargohold.config import Config, load_config
from cargohold.errors import ConfigError
from gateway.app import build_app
from gateway.client_address import TrustedProxies
from gateway.context import GatewayContext

LB = ["10.0.0.0/24", "fd00::/64"]


def test_no_trusted_proxies_means_the_peer() -> None:
    assert TrustedProxies([]).client("10.0.0.5", ["6.6.6.6"]) == "10.0.0.5"
    assert TrustedProxies([]).client(None, ["6.6.6.6"]) == "-"


def test_untrusted_peer_ignores_its_forwarded_for() -> None:
    assert TrustedProxies(LB).client("192.0.2.7", ["6.6.6.6, 10.0.0.1"]) == "192.0.2.7"


def test_trusted_peer_takes_the_right_most_untrusted_entry() -> None:
    proxies = TrustedProxies(LB)
    # The client forged "6.6.6.6"; the trusted LB appended the real peer it saw.
    assert proxies.client("10.0.0.2", ["6.6.6.6, 198.51.100.9"]) == "198.51.100.9"
    # Several header lines are one list, in order; trusted hops are skipped.
    assert proxies.client("10.0.0.2", ["6.6.6.6", "198.51.100.9, 10.0.0.3"]) == "198.51.100.9"
    # Every hop trusted: the left-most one.
    assert proxies.client("10.0.0.2", ["10.0.0.4, 10.0.0.3"]) == "10.0.0.4"
    # No header from a trusted peer: the peer itself.
    assert proxies.client("10.0.0.2", []) == "10.0.0.2"


def test_entries_with_ports_v6_and_garbage() -> None:
    proxies = TrustedProxies(LB)
    assert proxies.client("10.0.0.2", ["198.51.100.9:4711"]) == "198.51.100.9"
    assert proxies.client("fd00::1", ["[2001:db8::5]:443"]) == "2001:db8::5"
    assert proxies.client("::ffff:10.0.0.2", ["2001:db8::5"]) == "2001:db8::5"
    # A junk entry ends the walk at the last trusted hop: it is never reported.
    assert proxies.client("10.0.0.2", ["6.6.6.6, not-an-ip"]) == "10.0.0.2"
    assert proxies.client("10.0.0.2", ["junk, 198.51.100.9, 10.0.0.3"]) == "198.51.100.9"


def test_bad_cidr_refused_at_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(overrides={"gateway.trusted_proxies": "10.0.0.0/8,nonsense"})
    cfg = load_config(overrides={"gateway.trusted_proxies": "10.0.0.0/8, ::1/128"})
    assert cfg.gateway.trusted_proxies == ["10.0.0.0/8", "::1/128"]


async def _failing_logins(cfg: Config, forged: list[str]) -> list[int]:
    """One failed login per forged X-Forwarded-For (each for another user), then a login
    with the right password: the statuses."""
    app = build_app(GatewayContext(cfg=cfg, cluster=FakeCluster()))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as gw:
        statuses = []
        for i, xff in enumerate(forged):
            headers = {"Authorization": basic(f"user{i}", "wrong"), "X-Forwarded-For": xff}
            resp = await gw.get("/auth/token", params={"service": "cargohold"}, headers=headers)
            statuses.append(resp.status)
        headers = {"Authorization": basic("alice", "alice-secret"), "X-Forwarded-For": "7.7.7.7"}
        resp = await gw.get("/auth/token", params={"service": "cargohold"}, headers=headers)
        statuses.append(resp.status)
        return statuses


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cargohold.gateway")
    cfg = Config()
    cfg.auth = token_config(tmp_path, {"alice": "alice-secret"})
    cfg.auth.login_failures_free = 3
    forged = [f"203.0.113.{i}" for i in range(4)]
    # Not trusted: every failure counts against the real peer (127.0.0.1), so rotating the
    # forged header does not escape the per-address back-off.
    assert await _failing_logins(cfg, forged) == [401, 401, 401, 401, 429]
    clients = {r.fields["client"] for r in caplog.records if r.msg == "auth.login"}  # type: ignore[attr-defined]
    assert clients == {"127.0.0.1"}


async def test_forwarded_for_from_a_trusted_peer_names_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cargohold.gateway")
    cfg = Config()
    cfg.auth = token_config(tmp_path, {"alice": "alice-secret"})
    cfg.auth.login_failures_free = 3
    cfg.gateway.trusted_proxies = ["127.0.0.0/8"]
    forged = [f"203.0.113.{i}" for i in range(4)]
    assert await _failing_logins(cfg, forged) == [401, 401, 401, 401, 200]
    clients = [r.fields["client"] for r in caplog.records if r.msg == "auth.login"]  # type: ignore[attr-defined]
    assert clients == [*forged, "7.7.7.7"]
