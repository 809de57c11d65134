"""The auth modes on an in-process gateway: challenges, the token service's GET and POST
grants, tokens scoped to one repository, htpasswd with reload, and failed-login limits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from authkit import basic, start_gateway, token_config, write_htpasswd
from fakecluster import FakeCluster

from cargohold.config import AuthConfig, Config
from cargohold.errors import ConfigError
from gateway.app import build_app
from gateway.context import GatewayContext

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
DIGEST = "sha256:" + "a" * 64


async def _client(cfg: Config) -> TestClient:
    return await start_gateway(cfg, FakeCluster())


@pytest.fixture
async def token_gw(tmp_path: Path) -> AsyncIterator[TestClient]:
    cfg = Config()
    cfg.auth = token_config(tmp_path, USERS)
    cfg.auth.login_failures_free = 3
    client = await _client(cfg)
    try:
        yield client
    finally:
        await client.close()


async def get_token(gw: TestClient, scopes: list[str], user: str | None = "alice") -> str:
    headers = {"Authorization": basic(user, USERS[user])} if user else {}
    params: list[tuple[str, str]] = [("service", "cargohold")] + [("scope", s) for s in scopes]
    resp = await gw.get("/auth/token", params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    return str(body["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _challenge(resp: Any) -> str:
    assert resp.status == 401
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    return str(resp.headers["WWW-Authenticate"])


async def test_challenges_name_realm_service_and_scope(token_gw: TestClient) -> None:
    realm = f'realm="http://{token_gw.host}:{token_gw.port}/auth/token",service="cargohold"'
    assert await _challenge(await token_gw.get("/v2/")) == f"Bearer {realm}"
    resp = await token_gw.get("/v2/team/app/tags/list")
    assert await _challenge(resp) == f'Bearer {realm},scope="repository:team/app:pull"'
    resp = await token_gw.post("/v2/team/app/blobs/uploads/")
    assert await _challenge(resp) == f'Bearer {realm},scope="repository:team/app:pull,push"'
    resp = await token_gw.delete(f"/v2/team/app/manifests/{DIGEST}")
    assert await _challenge(resp) == f'Bearer {realm},scope="repository:team/app:delete"'
    resp = await token_gw.get("/v2/_catalog")
    assert await _challenge(resp) == f'Bearer {realm},scope="registry:catalog:*"'
    resp = await token_gw.get("/v2/", headers=bearer("garbage"))
    assert 'error="invalid_token"' in await _challenge(resp)
    # Health and metrics stay open.
    assert (await token_gw.get("/healthz")).status == 200


async def test_token_dance_and_scope_per_repository(token_gw: TestClient) -> None:
    token = await get_token(token_gw, ["repository:team/a:pull,push"])
    assert (await token_gw.get("/v2/", headers=bearer(token))).status == 200
    resp = await token_gw.post("/v2/team/a/blobs/uploads/", headers=bearer(token))
    assert resp.status == 202
    resp = await token_gw.get("/v2/team/a/tags/list", headers=bearer(token))
    assert resp.status == 404  # past auth: the repository does not exist
    # The same token on repository B: not authorized for it.
    resp = await token_gw.get("/v2/team/b/tags/list", headers=bearer(token))
    challenge = await _challenge(resp)
    assert 'scope="repository:team/b:pull"' in challenge
    assert 'error="insufficient_scope"' in challenge
    resp = await token_gw.delete(f"/v2/team/a/manifests/{DIGEST}", headers=bearer(token))
    assert resp.status == 401
    catalog = await get_token(token_gw, ["registry:catalog:*"])
    assert (await token_gw.get("/v2/_catalog", headers=bearer(catalog))).status == 200


async def test_anonymous_token_grants_nothing(token_gw: TestClient) -> None:
    token = await get_token(token_gw, ["repository:team/a:pull,push"], user=None)
    resp = await token_gw.post("/v2/team/a/blobs/uploads/", headers=bearer(token))
    assert 'error="insufficient_scope"' in await _challenge(resp)


async def test_mount_without_pull_on_source_is_a_plain_upload(token_gw: TestClient) -> None:
    token = await get_token(token_gw, ["repository:team/a:pull,push"])
    resp = await token_gw.post(
        f"/v2/team/a/blobs/uploads/?mount={DIGEST}&from=other/secret", headers=bearer(token)
    )
    assert resp.status == 202
    assert "/blobs/uploads/" in resp.headers["Location"]


async def test_wrong_password_then_backoff(token_gw: TestClient) -> None:
    wrong = {"Authorization": basic("alice", "nope")}
    for _ in range(3):
        resp = await token_gw.get("/auth/token", params={"service": "cargohold"}, headers=wrong)
        assert resp.status == 401
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    resp = await token_gw.get("/auth/token", params={"service": "cargohold"}, headers=wrong)
    assert resp.status == 401  # the 4th failure starts the back-off
    right = {"Authorization": basic("alice", USERS["alice"])}
    resp = await token_gw.get("/auth/token", params={"service": "cargohold"}, headers=right)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"


async def test_unknown_service_refused(token_gw: TestClient) -> None:
    resp = await token_gw.get("/auth/token", params={"service": "elsewhere"})
    assert resp.status == 400


async def test_oauth2_password_and_refresh_grants(token_gw: TestClient) -> None:
    form = {
        "grant_type": "password",
        "username": "bob",
        "password": USERS["bob"],
        "service": "cargohold",
        "client_id": "docker",
        "access_type": "offline",
        "scope": "repository:team/a:pull",
    }
    resp = await token_gw.post("/auth/token", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    refresh = body["refresh_token"]
    assert body["scope"] == "repository:team/a:pull"
    resp = await token_gw.get("/v2/team/a/tags/list", headers=bearer(body["access_token"]))
    assert resp.status == 404
    # The refresh token is no access token.
    assert (await token_gw.get("/v2/", headers=bearer(refresh))).status == 401
    resp = await token_gw.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "cargohold",
            "scope": "repository:team/b:pull,push",
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    resp = await token_gw.post("/v2/team/b/blobs/uploads/", headers=bearer(body["access_token"]))
    assert resp.status == 202
    resp = await token_gw.post("/auth/token", data={**form, "password": "wrong"})
    assert resp.status == 401
    resp = await token_gw.post("/auth/token", data={"grant_type": "client_credentials"})
    assert resp.status == 400
    resp = await token_gw.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": "forged"}
    )
    assert resp.status == 401


async def test_htpasswd_mode_basic_challenge_and_reload(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"alice": "pw-a"})
    cfg = Config()
    cfg.auth = AuthConfig(mode="htpasswd", htpasswd=str(path), htpasswd_check_seconds=0)
    gw = await _client(cfg)
    try:
        resp = await gw.get("/v2/")
        assert await _challenge(resp) == 'Basic realm="cargohold"'
        assert (
            await gw.get("/v2/", headers={"Authorization": basic("alice", "pw-a")})
        ).status == 200
        assert (await gw.get("/v2/", headers={"Authorization": basic("alice", "x")})).status == 401
        carol = {"Authorization": basic("carol", "pw-c")}
        assert (await gw.get("/v2/", headers=carol)).status == 401
        write_htpasswd(path, {"alice": "pw-a", "carol": "pw-c"})
        os.utime(path, ns=(1, 1))  # a different mtime even within the same clock tick
        assert (await gw.get("/v2/", headers=carol)).status == 200
        resp = await gw.post("/v2/team/a/blobs/uploads/", headers=carol)
        assert resp.status == 202
        # A broken edit keeps the previous users.
        path.write_text("carol:$apr1$xyz$abc\n")
        assert (await gw.get("/v2/", headers=carol)).status == 200
    finally:
        await gw.close()


def test_non_bcrypt_htpasswd_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    cfg = Config()
    cfg.auth = AuthConfig(mode="htpasswd", htpasswd=str(path))
    with pytest.raises(ConfigError, match=r"htpasswd:1: user 'alice': apr1 MD5 hashes are refused"):
        build_app(GatewayContext(cfg=cfg, cluster=FakeCluster()))  # type: ignore[arg-type]
    path.write_text("bob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    with pytest.raises(ConfigError, match="SHA1 hashes are refused; only bcrypt"):
        build_app(GatewayContext(cfg=cfg, cluster=FakeCluster()))  # type: ignore[arg-type]


async def test_mode_none_is_open(gw: TestClient) -> None:
    assert (await gw.get("/v2/")).status == 200
    assert (await gw.get("/auth/token")).status == 404


async def test_external_issuer(tmp_path: Path) -> None:
    """No built-in service: tokens of another issuer, verified with its JWKS."""
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.auth.scopes import Scope
    from gateway.auth.tokens import TokenIssuer

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "corp-1"}]}))
    cfg = Config()
    cfg.auth = AuthConfig(
        mode="token",
        realm="https://sso.example/token",
        service="registry.example",
        issuer="corp-sso",
        verify_keys=[str(jwks)],
    )
    gw = await _client(cfg)
    try:
        resp = await gw.get("/v2/team/a/tags/list")
        assert await _challenge(resp) == (
            'Bearer realm="https://sso.example/token",service="registry.example",'
            'scope="repository:team/a:pull"'
        )
        assert (await gw.get("/auth/token")).status == 404
        issuer = TokenIssuer("corp-1", private, "corp-sso", "registry.example", 60, 60)
        good = issuer.access_token("u", [Scope("repository", "team/a", frozenset({"pull"}))])
        assert (await gw.get("/v2/team/a/tags/list", headers=bearer(good))).status == 404
        wrong_iss = TokenIssuer("corp-1", private, "other", "registry.example", 60, 60)
        bad = wrong_iss.access_token("u", [Scope("repository", "team/a", frozenset({"pull"}))])
        assert (await gw.get("/v2/team/a/tags/list", headers=bearer(bad))).status == 401
        # Lacking scope with an external issuer: always 401 insufficient_scope.
        resp = await gw.post("/v2/team/a/blobs/uploads/", headers=bearer(good))
        assert 'error="insufficient_scope"' in await _challenge(resp)
    finally:
        await gw.close()
