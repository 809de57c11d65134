"""Token mode with users, namespaces and roles from the metadata (the real state behind the
FakeCluster): reader push 403, developer push, anonymous pull of a public namespace only,
the catalog filtered per caller, disabled users, cluster admins, mounts without pull."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from authkit import basic, fetch_token, hash_password, signing_config, start_gateway
from authkit import call as call_with
from fakecluster import FakeCluster

from cargohold.config import Config
from cargohold.metadata_api import BlobCommit, UserPut
from gateway.context import GatewayContext

PASSWORDS = {"root": "root-pw", "dev": "dev-pw", "reader": "reader-pw", "gone": "gone-pw"}
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[TestClient]:
    cfg = Config()
    cfg.auth = signing_config(tmp_path, directory_refresh_seconds=0)
    cluster = FakeCluster()
    meta = GatewayContext(cfg=cfg, cluster=cluster).meta  # type: ignore[arg-type]
    for name, password in PASSWORDS.items():
        await meta.user_put(UserPut(name, hash_password(password), admin=name == "root"))
    await meta.user_put(UserPut("gone", disabled=True))
    await meta.namespace_put("team", "private")
    await meta.namespace_put("pub", "public")
    await meta.grant_set("team", "dev", "developer")
    await meta.grant_set("team", "reader", "reader")
    await meta.grant_set("team", "gone", "admin")
    for repo in ("team/app", "pub/x", "secret/y"):
        await meta.blob_commit(BlobCommit(repo, EMPTY, {"size": 0, "chunks": []}, None, 1.0))
    client = await start_gateway(cfg, cluster)
    try:
        yield client
    finally:
        await client.close()


async def token(gw: TestClient, user: str | None, *scopes: str) -> tuple[int, str]:
    return await fetch_token(gw, basic(user, PASSWORDS[user]) if user else None, *scopes)


async def call(gw: TestClient, method: str, path: str, tok: str) -> int:
    return await call_with(gw, method, path, f"Bearer {tok}")


async def test_roles_decide_push_and_pull(gw: TestClient) -> None:
    push = "repository:team/app:pull,push"
    _, reader = await token(gw, "reader", push)
    assert await call(gw, "GET", "/v2/team/app/tags/list", reader) == 200
    assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", reader) == 403
    _, dev = await token(gw, "dev", push)
    assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", dev) == 202
    _, dev_delete = await token(gw, "dev", "repository:team/app:delete")
    assert await call(gw, "DELETE", f"/v2/team/app/blobs/{EMPTY}", dev_delete) == 403
    _, dev_other = await token(gw, "dev", "repository:secret/y:pull")
    assert await call(gw, "GET", f"/v2/secret/y/blobs/{EMPTY}", dev_other) == 403
    _, root = await token(gw, "root", "repository:secret/y:pull,push,delete")
    assert await call(gw, "GET", f"/v2/secret/y/blobs/{EMPTY}", root) == 200
    assert await call(gw, "DELETE", f"/v2/secret/y/blobs/{EMPTY}", root) == 202


async def test_anonymous_pulls_public_only(gw: TestClient) -> None:
    _, anon = await token(gw, None, "repository:pub/x:pull,push", "repository:team/app:pull")
    assert await call(gw, "GET", f"/v2/pub/x/blobs/{EMPTY}", anon) == 200
    assert await call(gw, "POST", "/v2/pub/x/blobs/uploads/", anon) == 401
    assert await call(gw, "GET", f"/v2/team/app/blobs/{EMPTY}", anon) == 401


async def test_catalog_lists_what_the_caller_may_pull(gw: TestClient) -> None:
    async def names(user: str | None) -> list[str]:
        _, tok = await token(gw, user, "registry:catalog:*")
        resp = await gw.get("/v2/_catalog", headers={"Authorization": f"Bearer {tok}"})
        assert resp.status == 200
        return list((await resp.json())["repositories"])

    assert await names(None) == ["pub/x"]
    assert await names("reader") == ["pub/x", "team/app"]
    assert await names("root") == ["pub/x", "secret/y", "team/app"]
    _, tok = await token(gw, "root", "registry:catalog:*")
    resp = await gw.get("/v2/_catalog?n=1", headers={"Authorization": f"Bearer {tok}"})
    assert (await resp.json())["repositories"] == ["pub/x"]
    assert "last=pub/x" in resp.headers["Link"]


async def test_disabled_user_cannot_log_in(gw: TestClient) -> None:
    status, _ = await token(gw, "gone", "repository:team/app:pull")
    assert status == 401


async def test_mount_from_a_repository_the_caller_cannot_pull(gw: TestClient) -> None:
    scopes = ("repository:team/app:pull,push", "repository:secret/y:pull")
    _, dev = await token(gw, "dev", *scopes)
    path = f"/v2/team/app/blobs/uploads/?mount={EMPTY}&from=secret/y"
    assert await call(gw, "POST", path, dev) == 202
    _, root = await token(gw, "root", *scopes)
    assert await call(gw, "POST", path, root) == 201


async def test_disabling_and_revoking_end_existing_tokens(gw: TestClient) -> None:
    from gateway.context import CONTEXT

    meta = gw.app[CONTEXT].meta
    _, dev = await token(gw, "dev", "repository:team/app:pull,push")
    assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", dev) == 202
    await meta.grant_set("team", "dev", "reader")
    assert await call(gw, "POST", "/v2/team/app/blobs/uploads/", dev) == 403
    assert await call(gw, "GET", "/v2/team/app/tags/list", dev) == 200
    await meta.user_put(UserPut("dev", disabled=True))
    assert await call(gw, "GET", "/v2/team/app/tags/list", dev) == 401
