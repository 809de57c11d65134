"""The HTTP admin API (gateway/admin_api/) over the real metadata state behind a
FakeCluster, in token mode with cluster users: 401 without or with wrong credentials (the
mode's challenge), 403 for callers without the right, 200/201 for cluster admins and
namespace admins, and the changes visible to `/v2/` at once on this gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from authkit import basic, fetch_token, hash_password, signing_config, start_gateway, write_htpasswd
from fakecluster import FakeCluster

from cargohold.config import AuthConfig, Config
from cargohold.metadata_api import UserPut
from gateway.context import GatewayContext

API = "/_cargohold/api/v1"
PASSWORDS = {"root": "root-pw", "lead": "lead-pw", "dev": "dev-pw", "ann": "ann-pw"}


@pytest.fixture
async def cluster() -> FakeCluster:
    cluster = FakeCluster()
    meta = GatewayContext(cfg=Config(), cluster=cluster).meta  # type: ignore[arg-type]
    for name, password in PASSWORDS.items():
        await meta.user_put(UserPut(name, hash_password(password), admin=name == "root"))
    await meta.namespace_put("team", "private")
    await meta.namespace_put("other", "private")
    await meta.grant_set("team", "lead", "admin")
    await meta.grant_set("team", "dev", "developer")
    return cluster


@pytest.fixture
async def gw(tmp_path: Path, cluster: FakeCluster) -> AsyncIterator[TestClient]:
    cfg = Config()
    cfg.auth = signing_config(tmp_path, directory_refresh_seconds=60)
    client = await start_gateway(cfg, cluster)
    try:
        yield client
    finally:
        await client.close()


async def token(gw: TestClient, user: str, *scopes: str) -> str:
    status, tok = await fetch_token(gw, basic(user, PASSWORDS[user]), *scopes)
    assert status == 200
    return tok


async def api(
    gw: TestClient, method: str, path: str, auth: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": auth} if auth else {}
    resp = await gw.request(method, API + path, headers=headers, json=body)
    data = await resp.json()
    if resp.status >= 400:
        assert set(data) == {"errors"} and data["errors"][0]["code"]
    return resp.status, data


def code(data: Any) -> str:
    return str(data["errors"][0]["code"])


async def test_no_or_wrong_credentials_get_401_with_the_challenge(gw: TestClient) -> None:
    resp = await gw.get(API + "/whoami")
    assert resp.status == 401
    assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="') and 'service="cargohold"' in challenge
    status, _ = await api(gw, "GET", "/whoami", "Bearer not-a-token")
    assert status == 401
    status, _ = await api(gw, "GET", "/whoami", basic("root", "wrong"))
    assert status == 401
    # An anonymous token names nobody.
    resp = await gw.get("/auth/token", params={"service": "cargohold"})
    anon = (await resp.json())["token"]
    assert (await api(gw, "GET", "/whoami", f"Bearer {anon}"))[0] == 401


async def test_whoami_with_a_token_or_basic(gw: TestClient) -> None:
    status, me = await api(gw, "GET", "/whoami", f"Bearer {await token(gw, 'dev')}")
    assert status == 200
    assert me["name"] == "dev" and me["kind"] == "user" and me["cluster_admin"] is False
    assert me["namespaces"] == {"team": "developer"}
    status, me = await api(gw, "GET", "/whoami", basic("root", "root-pw"))
    assert status == 200 and me["cluster_admin"] is True and me["auth_mode"] == "token"


async def test_users_are_cluster_admin_business(gw: TestClient) -> None:
    dev = f"Bearer {await token(gw, 'dev')}"
    root = f"Bearer {await token(gw, 'root')}"
    status, data = await api(gw, "GET", "/users", dev)
    assert status == 403 and code(data) == "DENIED"
    assert (await api(gw, "POST", "/users", dev, {"name": "eve"}))[0] == 403
    status, rows = await api(gw, "GET", "/users", root)
    assert status == 200
    assert {r["name"] for r in rows} == set(PASSWORDS)
    assert all("password_hash" not in r for r in rows)
    assert next(r for r in rows if r["name"] == "dev")["namespaces"] == {"team": "developer"}
    status, made = await api(gw, "POST", "/users", root, {"name": "eve"})
    assert status == 201 and made["name"] == "eve" and len(made["password"]) >= 16
    status, data = await api(gw, "POST", "/users", root, {"name": "eve"})
    assert status == 409 and code(data) == "CONFLICT"
    # The generated password works at once on this gateway.
    resp = await gw.get(
        "/auth/token",
        params={"service": "cargohold"},
        headers={"Authorization": basic("eve", made["password"])},
    )
    assert resp.status == 200
    status, _ = await api(gw, "PATCH", "/users/eve", root, {"disabled": True})
    assert status == 200
    resp = await gw.get(
        "/auth/token",
        params={"service": "cargohold"},
        headers={"Authorization": basic("eve", made["password"])},
    )
    assert resp.status == 401
    assert (await api(gw, "PATCH", "/users/nobody", root, {"disabled": True}))[0] == 404
    status, data = await api(gw, "POST", "/users", root, {"name": "Bad Name!"})
    assert status == 400
    status, data = await api(gw, "PATCH", "/users/eve", root, {"admin": "yes"})
    assert status == 400


async def test_namespace_admins_manage_their_namespace_only(gw: TestClient) -> None:
    lead = f"Bearer {await token(gw, 'lead')}"
    dev = f"Bearer {await token(gw, 'dev')}"
    root = f"Bearer {await token(gw, 'root')}"
    status, rows = await api(gw, "GET", "/namespaces", lead)
    assert status == 200 and [r["name"] for r in rows] == ["team"]
    assert (await api(gw, "GET", "/namespaces", dev))[1] == []
    assert (await api(gw, "GET", "/namespaces/team", dev))[0] == 403
    assert (await api(gw, "GET", "/namespaces/other", lead))[0] == 403
    status, ns = await api(gw, "PUT", "/namespaces/team/grants/users/ann", lead, {"role": "reader"})
    assert status == 200 and ns["grants"]["ann"] == "reader"
    status, ns = await api(gw, "PATCH", "/namespaces/team", lead, {"visibility": "public"})
    assert status == 200 and ns["visibility"] == "public"
    assert (await api(gw, "PATCH", "/namespaces/other", lead, {"visibility": "public"}))[0] == 403
    assert (await api(gw, "POST", "/namespaces", lead, {"name": "mine"}))[0] == 403
    assert (await api(gw, "DELETE", "/namespaces/team/grants/users/ann", dev))[0] == 403
    status, ns = await api(gw, "DELETE", "/namespaces/team/grants/users/ann", lead)
    assert status == 200 and "ann" not in ns["grants"]
    status, ns = await api(gw, "PUT", "/namespaces/team/grants/users/ann", lead, {"role": "boss"})
    assert status == 400
    status, ns = await api(gw, "POST", "/namespaces", root, {"name": "team/sub"})
    assert status == 201 and ns == {"name": "team/sub", "visibility": "private"}
    assert (await api(gw, "POST", "/namespaces", root, {"name": "team/sub"}))[0] == 409
    status, ns = await api(gw, "GET", "/namespaces/team/sub", root)
    assert status == 200 and ns["name"] == "team/sub"
    status, data = await api(
        gw, "PUT", "/namespaces/team/sub/grants/users/nobody", root, {"role": "reader"}
    )
    assert status == 404 and code(data) == "NOT_FOUND"
    assert (await api(gw, "GET", "/namespaces/nope", root))[0] == 404


async def test_htpasswd_users_are_cluster_admins_and_mode_none_is_read_only(
    tmp_path: Path, cluster: FakeCluster
) -> None:
    cfg = Config()
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ops": "ops-pw"})
    cfg.auth = AuthConfig(mode="htpasswd", htpasswd=str(htpasswd))
    client = await start_gateway(cfg, cluster)
    try:
        resp = await client.get(API + "/whoami")
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
        status, me = await api(client, "GET", "/whoami", basic("ops", "ops-pw"))
        assert status == 200 and me["cluster_admin"] is True
        status, _ = await api(client, "POST", "/namespaces", basic("ops", "ops-pw"), {"name": "x"})
        assert status == 201
    finally:
        await client.close()
    client = await start_gateway(Config(), cluster)
    try:
        status, me = await api(client, "GET", "/whoami", None)
        assert status == 200 and me["kind"] == "anonymous"
        assert (await api(client, "GET", "/namespaces", None))[0] == 200
        status, data = await api(client, "POST", "/namespaces", None, {"name": "y"})
        assert status == 403 and code(data) == "DENIED"
    finally:
        await client.close()


async def test_groups_give_their_members_roles(gw: TestClient) -> None:
    root = f"Bearer {await token(gw, 'root')}"
    dev = f"Bearer {await token(gw, 'dev')}"
    assert (await api(gw, "POST", "/groups", dev, {"name": "ops"}))[0] == 403
    assert (await api(gw, "GET", "/groups", dev))[0] == 403
    status, group = await api(gw, "POST", "/groups", root, {"name": "ops"})
    assert status == 201 and group == {"name": "ops", "members": [], "namespaces": {}}
    assert (await api(gw, "POST", "/groups", root, {"name": "ops"}))[0] == 409
    status, group = await api(gw, "PUT", "/groups/ops/members/ann", root)
    assert status == 200 and group["members"] == ["ann"]
    assert (await api(gw, "PUT", "/groups/ops/members/nobody", root))[0] == 404
    assert (await api(gw, "PUT", "/groups/nope/members/ann", root))[0] == 404
    # ann may not push to team/app before the group grant, and may after it.
    scope = "repository:team/app:pull,push"
    ann_before = await token(gw, "ann", scope)
    upload = "/v2/team/app/blobs/uploads/"
    assert (await gw.post(upload, headers={"Authorization": f"Bearer {ann_before}"})).status == 403
    # A namespace admin (lead) grants the group a role in their namespace.
    lead = f"Bearer {await token(gw, 'lead')}"
    status, ns = await api(
        gw, "PUT", "/namespaces/team/grants/groups/ops", lead, {"role": "developer"}
    )
    assert status == 200 and ns["group_grants"] == {"ops": "developer"}
    ann = await token(gw, "ann", scope)
    assert (await gw.post(upload, headers={"Authorization": f"Bearer {ann}"})).status == 202
    status, rows = await api(gw, "GET", "/groups", root)
    assert rows == [{"name": "ops", "members": ["ann"], "namespaces": {"team": "developer"}}]
    status, me = await api(gw, "GET", "/whoami", f"Bearer {ann}")
    assert me["groups"] == ["ops"] and me["namespaces"] == {"team": "developer"}
    status, group = await api(gw, "DELETE", "/groups/ops/members/ann", root)
    assert status == 200 and group["members"] == []
    assert (await gw.post(upload, headers={"Authorization": f"Bearer {ann}"})).status == 403
    status, _ = await api(gw, "DELETE", "/groups/ops", root)
    assert status == 200
    assert (await api(gw, "DELETE", "/groups/ops", root))[0] == 404
    status, ns = await api(gw, "GET", "/namespaces/team", root)
    assert ns["group_grants"] == {}


async def test_robots_made_listed_and_revoked_through_the_api(gw: TestClient) -> None:
    root = f"Bearer {await token(gw, 'root')}"
    lead = f"Bearer {await token(gw, 'lead')}"
    dev = f"Bearer {await token(gw, 'dev')}"
    body = {"name": "ci", "permissions": {"team": ["pull", "push"]}, "expires_in": 3600}
    assert (await api(gw, "POST", "/robots", dev, body))[0] == 403
    # A namespace admin may make robots for their namespace only.
    other = {"name": "x", "permissions": {"team": ["pull"], "other": ["pull"]}}
    assert (await api(gw, "POST", "/robots", lead, other))[0] == 403
    status, made = await api(gw, "POST", "/robots", lead, body)
    assert status == 201 and made["login"] == "robot$ci" and len(made["secret"]) >= 32
    assert made["expires_at"] > 0
    assert (await api(gw, "POST", "/robots", root, body))[0] == 409
    bad = {"name": "bad", "permissions": {"team": ["*"]}}
    assert (await api(gw, "POST", "/robots", root, bad))[0] == 400
    assert (await api(gw, "POST", "/robots", root, {**bad, "permissions": {}}))[0] == 400
    missing = {"name": "m", "permissions": {"nope": ["pull"]}}
    assert (await api(gw, "POST", "/robots", root, missing))[0] == 404
    forever = {"name": "forever", "permissions": {"other": ["pull"]}, "expires_in": -1}
    status, made2 = await api(gw, "POST", "/robots", root, forever)
    assert status == 201 and made2["expires_at"] is None
    # The secret works at once; the robot sees itself with whoami and nothing else.
    robot = basic("robot$ci", made["secret"])
    status, me = await api(gw, "GET", "/whoami", robot)
    assert (
        status == 200 and me["kind"] == "robot" and me["namespaces"] == {"team": ["pull", "push"]}
    )
    assert 0 < me["expires_in"] <= 3600
    assert (await api(gw, "GET", "/robots", robot))[1] == []
    assert (await api(gw, "POST", "/robots", robot, forever))[0] == 403
    # Listings: the lead sees the team robot only, root both; never a secret or hash.
    status, rows = await api(gw, "GET", "/robots", lead)
    assert [r["login"] for r in rows] == ["robot$ci"]
    status, rows = await api(gw, "GET", "/robots", root)
    assert [r["login"] for r in rows] == ["robot$ci", "robot$forever"]
    assert all("secret" not in r and "secret_hash" not in r for r in rows)
    # Revocation: the lead may not revoke the other namespace's robot; may revoke its own.
    assert (await api(gw, "DELETE", "/robots/forever", lead))[0] == 403
    status, gone = await api(gw, "DELETE", "/robots/robot$ci", lead)
    assert status == 200 and gone["revoked"] is True
    assert (await api(gw, "GET", "/whoami", robot))[0] == 401
    assert (await api(gw, "DELETE", "/robots/ci", root))[0] == 404


async def test_changes_through_the_api_are_in_the_activity_log(
    gw: TestClient, cluster: FakeCluster
) -> None:
    lead = f"Bearer {await token(gw, 'lead')}"
    body = {"name": "ci", "permissions": {"team": ["pull"]}}
    assert (await api(gw, "POST", "/robots", lead, body))[0] == 201
    assert (await api(gw, "DELETE", "/robots/ci", lead))[0] == 200
    root = basic("root", "root-pw")
    assert (await api(gw, "POST", "/groups", root, {"name": "ops"}))[0] == 201
    meta = GatewayContext(cfg=Config(), cluster=cluster).meta  # type: ignore[arg-type]
    lines = (await meta.audit_tail(0)).lines
    robot_lines = [line for line in lines if "robot:ci" in line]
    assert len(robot_lines) == 2 and all('"lead"' in line for line in robot_lines)
    assert any('"root"' in line and "ops" in line for line in lines)
