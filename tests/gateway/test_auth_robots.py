"""Robot accounts on an in-process gateway (the real metadata state behind a FakeCluster):
a robot logs in with HTTP Basic to the token service (token mode) or on every request
(htpasswd mode), may take only its listed actions in its listed namespaces (403 DENIED
otherwise), and an expired or revoked robot gets 401 on its next request even with a
token that has not expired."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from authkit import (
    basic,
    call,
    fetch_token,
    hash_password,
    signing_config,
    start_gateway,
    write_htpasswd,
)
from fakecluster import FakeCluster

from cargohold.config import AuthConfig, Config
from cargohold.metadata_api import BlobCommit, Metadata, RobotPut, UserPut
from gateway.context import GatewayContext

SECRET = "robot-secret-0123456789"
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
CI = basic("robot$ci", SECRET)


async def put_robot(meta: Metadata, name: str, expires_at: float | None, **perms: str) -> None:
    permissions = tuple(sorted((ns, tuple(a.split(","))) for ns, a in perms.items()))
    await meta.robot_put(RobotPut(name, hash_password(SECRET), expires_at, permissions, "", 1.0))


async def _setup(cluster: FakeCluster) -> Metadata:
    meta = GatewayContext(cfg=Config(), cluster=cluster).meta  # type: ignore[arg-type]
    await meta.user_put(UserPut("dev", hash_password("dev-pw")))
    for ns in ("team", "other"):
        await meta.namespace_put(ns, "private")
    for repo in ("team/app", "other/x"):
        await meta.blob_commit(BlobCommit(repo, EMPTY, {"size": 0, "chunks": []}, None, 1.0))
    await put_robot(meta, "ci", time.time() + 3600, team="pull,push")
    return meta


@pytest.fixture
async def token_gw(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Metadata]]:
    cluster = FakeCluster()
    meta = await _setup(cluster)
    cfg = Config()
    cfg.auth = signing_config(tmp_path, directory_refresh_seconds=0)
    client = await start_gateway(cfg, cluster)
    try:
        yield client, meta
    finally:
        await client.close()


async def test_a_robot_may_do_what_it_lists_and_nothing_else(
    token_gw: tuple[TestClient, Metadata],
) -> None:
    gw, _ = token_gw
    status, tok = await fetch_token(gw, CI, "repository:team/app:pull,push")
    assert status == 200
    bearer = f"Bearer {tok}"
    assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", bearer) == 202
    assert await call(gw, "GET", f"/v2/team/app/blobs/{EMPTY}", bearer) == 200
    # Outside its namespace and for an action it lacks: the built-in service knows -> 403.
    _, other = await fetch_token(gw, CI, "repository:other/x:pull,push")
    assert await call(gw, "GET", f"/v2/other/x/blobs/{EMPTY}", f"Bearer {other}") == 403
    assert await call(gw, "POST", "/v2/other/x/blobs/uploads/", f"Bearer {other}") == 403
    _, delete = await fetch_token(gw, CI, "repository:team/app:delete")
    assert await call(gw, "DELETE", f"/v2/team/app/blobs/{EMPTY}", f"Bearer {delete}") == 403
    # The catalog lists only what the robot may pull.
    _, cat = await fetch_token(gw, CI, "registry:catalog:*")
    resp = await gw.get("/v2/_catalog", headers={"Authorization": f"Bearer {cat}"})
    assert (await resp.json())["repositories"] == ["team/app"]
    # Wrong secret, unknown robot.
    assert (await fetch_token(gw, basic("robot$ci", "nope")))[0] == 401
    assert (await fetch_token(gw, basic("robot$nobody", SECRET)))[0] == 401


async def test_expired_and_revoked_robots_get_401_with_a_live_token(
    token_gw: tuple[TestClient, Metadata],
) -> None:
    gw, meta = token_gw
    _, tok = await fetch_token(gw, CI, "repository:team/app:pull")
    bearer = f"Bearer {tok}"
    path = f"/v2/team/app/blobs/{EMPTY}"
    assert await call(gw, "GET", path, bearer) == 200
    # Expiry: the robot's expiry passes while its token still lives.
    await put_robot(meta, "ci", time.time() - 1, team="pull,push")
    resp = await gw.get(path, headers={"Authorization": bearer})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await fetch_token(gw, CI, "repository:team/app:pull"))[0] == 401
    # Revocation: a fresh robot, a token, then robot_delete.
    await put_robot(meta, "ci", time.time() + 3600, team="pull,push")
    _, tok = await fetch_token(gw, CI, "repository:team/app:pull")
    assert await call(gw, "GET", path, f"Bearer {tok}") == 200
    assert await meta.robot_delete("ci") is True
    assert await call(gw, "GET", path, f"Bearer {tok}") == 401
    assert (await fetch_token(gw, CI))[0] == 401


async def test_a_robots_refresh_token_ends_with_the_robot(
    token_gw: tuple[TestClient, Metadata],
) -> None:
    gw, meta = token_gw
    form = {
        "grant_type": "password",
        "username": "robot$ci",
        "password": SECRET,
        "access_type": "offline",
        "service": "cargohold",
        "scope": "repository:team/app:pull",
    }
    resp = await gw.post("/auth/token", data=form)
    assert resp.status == 200
    refresh = (await resp.json())["refresh_token"]
    again = {"grant_type": "refresh_token", "refresh_token": refresh, "service": "cargohold"}
    assert (await gw.post("/auth/token", data=again)).status == 200
    await meta.robot_delete("ci")
    assert (await gw.post("/auth/token", data=again)).status == 401


async def test_robots_in_htpasswd_mode(tmp_path: Path) -> None:
    cluster = FakeCluster()
    meta = await _setup(cluster)
    cfg = Config()
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ops": "ops-pw"})
    cfg.auth = AuthConfig(mode="htpasswd", htpasswd=str(htpasswd), directory_refresh_seconds=0)
    gw = await start_gateway(cfg, cluster)
    try:
        path = f"/v2/team/app/blobs/{EMPTY}"
        assert await call(gw, "GET", path, CI) == 200
        assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", CI) == 202
        assert await call(gw, "GET", f"/v2/other/x/blobs/{EMPTY}", CI) == 403
        assert await call(gw, "DELETE", path, CI) == 403
        assert await call(gw, "GET", path, basic("robot$ci", "wrong")) == 401
        # File users are untouched: everything, and no cluster lookup needed.
        assert await call(gw, "GET", f"/v2/other/x/blobs/{EMPTY}", basic("ops", "ops-pw")) == 200
        await put_robot(meta, "ci", time.time() - 1, team="pull,push")
        # The successful check was cached, but the robot is expired: refused.
        assert await call(gw, "GET", path, CI) == 401
    finally:
        await gw.close()


async def test_a_robot_made_elsewhere_logs_in_at_once_despite_a_long_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The early re-read is rate-limited (MISS_REFRESH_SECONDS); no waiting in this test.
    monkeypatch.setattr("gateway.auth.directory.MISS_REFRESH_SECONDS", 0.0)
    cluster = FakeCluster()
    meta = await _setup(cluster)
    cfg = Config()
    cfg.auth = signing_config(tmp_path, directory_refresh_seconds=3600)
    gw = await start_gateway(cfg, cluster)
    try:
        assert (await fetch_token(gw, CI, "repository:team/app:pull"))[0] == 200  # cache warm
        # Made behind this gateway's back (the CLI, another gateway): an unknown name
        # re-reads the directory early instead of waiting an hour.
        await put_robot(meta, "late", time.time() + 3600, team="pull")
        status, tok = await fetch_token(gw, basic("robot$late", SECRET), "repository:team/app:pull")
        assert status == 200
        assert await call(gw, "GET", f"/v2/team/app/blobs/{EMPTY}", f"Bearer {tok}") == 200
    finally:
        await gw.close()
