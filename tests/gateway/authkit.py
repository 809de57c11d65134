"""Helpers of the auth tests: a signing key, a bcrypt htpasswd file and an `[auth]` config;
an in-process gateway over a FakeCluster; a token from its token service; a request with
credentials (a 403 must be the OCI `DENIED` error)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp.test_utils import TestClient, TestServer

from cargohold.config import AuthConfig, Config
from gateway.app import build_app
from gateway.auth.keys import generate_signing_key
from gateway.context import GatewayContext


def hash_password(password: str) -> str:
    """A bcrypt hash, cheap (cost 4): tests only."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{u}:{hash_password(p)}" for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def signing_config(tmp_path: Path, **settings: Any) -> AuthConfig:
    """Token mode with the built-in token service (a fresh signing key), users from the
    cluster metadata; `settings` are other `[auth]` fields."""
    key = tmp_path / "token-key.pem"
    generate_signing_key(str(key))
    return AuthConfig(mode="token", signing_key=str(key), **settings)


def token_config(tmp_path: Path, users: dict[str, str]) -> AuthConfig:
    """Token mode with the users of an htpasswd file."""
    cfg = signing_config(tmp_path)
    cfg.htpasswd = str(write_htpasswd(tmp_path / "htpasswd", users))
    return cfg


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def start_gateway(cfg: Config, cluster: Any) -> TestClient:
    """An in-process gateway over `cluster` (a FakeCluster), started; close it after."""
    ctx = GatewayContext(cfg=cfg, cluster=cluster)
    client = TestClient(TestServer(build_app(ctx)))
    await client.start_server()
    return client


async def fetch_token(gw: TestClient, authorization: str | None, *scopes: str) -> tuple[int, str]:
    """(status, token) from the gateway's token service; ("", status) when refused."""
    headers = {"Authorization": authorization} if authorization else {}
    params = [("service", "cargohold"), *[("scope", s) for s in scopes]]
    resp = await gw.get("/auth/token", params=params, headers=headers)
    if resp.status != 200:
        return resp.status, ""
    return 200, str((await resp.json())["token"])


async def call(gw: TestClient, method: str, path: str, authorization: str) -> int:
    """The status of one request with that `Authorization` (a 403 must say DENIED)."""
    resp = await gw.request(method, path, headers={"Authorization": authorization})
    if resp.status == 403:
        assert (await resp.json())["errors"][0]["code"] == "DENIED"
    return resp.status
