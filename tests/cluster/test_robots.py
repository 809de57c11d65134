"""Robot accounts on a real token-mode cluster (3 nodes, 2 gateways), driven by the
`cargohold admin robots|groups|namespaces` verbs and real skopeo: a robot pushes with
`--dest-creds` into its namespace and pulls through the other gateway; it is refused 403
outside its namespace and for an action it lacks; an expired robot gets 401; a revoked
robot's live token gets 401 on the second gateway at once (tests/cluster/test_revocation.py
has the cases of revocation at once)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from clients.oci_layout import read_blobs, write_image_layout
from clients.tools import ToolError, have, skopeo

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin
from cluster.shapes import CHUNK, QUIET_ROLES
from gateway.auth.keys import generate_signing_key

pytestmark = [pytest.mark.cluster, pytest.mark.clients]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


async def token(
    http: aiohttp.ClientSession, base: str, user: str, secret: str, scope: str
) -> tuple[int, str]:
    params = {"service": "cargohold", "scope": scope}
    auth = aiohttp.BasicAuth(user, secret)
    async with http.get(f"{base}/auth/token", params=params, auth=auth) as resp:
        if resp.status != 200:
            return resp.status, ""
        return 200, str((await resp.json())["token"])


async def status_with(http: aiohttp.ClientSession, method: str, url: str, tok: str) -> int:
    async with http.request(method, url, headers={"Authorization": f"Bearer {tok}"}) as resp:
        if resp.status == 403:
            assert (await resp.json())["errors"][0]["code"] == "DENIED"
        return resp.status


async def test_robot_accounts_on_a_cluster(
    make_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    refresh = 2.0  # the default (revocation does not wait for it: revision checks)
    auth = {"mode": "token", "signing_key": str(key), "directory_refresh_seconds": refresh}
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    first, second = cluster.gateway_urls
    for ns in ("team", "other"):
        await admin(cluster, "namespaces", "add", ns)
    made = json.loads(
        await admin(
            cluster, "robots", "add", "ci", "--namespace", "team:pull,push",
            "--expires", "1h", "--description", "CI pushes", "--json",
        )
    )  # fmt: skip
    login, secret = made["login"], made["secret"]
    assert login == "robot$ci"
    listing = await admin(cluster, "robots", "list")
    assert "robot$ci" in listing and "team:pull,push" in listing and secret not in listing
    assert "$2b$" not in await admin(cluster, "robots", "list", "--json")

    # Push with skopeo into its namespace through the first gateway, pull via the second.
    layout = tmp_path / "layout"
    write_image_layout(layout, seed=uuid.uuid4().hex, big_size=CHUNK + 1)
    host1, host2 = first.removeprefix("http://"), second.removeprefix("http://")
    creds = f"{login}:{secret}"
    skopeo(
        "copy", "--quiet", "--preserve-digests", *NO_TLS, "--dest-creds", creds,
        f"oci:{layout}:v1", f"docker://{host1}/team/app:v1",
    )  # fmt: skip
    out = tmp_path / "out"
    skopeo(
        "copy", "--quiet", "--preserve-digests", *NO_TLS, "--src-creds", creds,
        f"docker://{host2}/team/app:v1", f"oci:{out}:v1",
    )  # fmt: skip
    assert read_blobs(out) == read_blobs(layout)

    # Outside its namespace: skopeo fails, and the gateway's answer is 403 DENIED.
    with pytest.raises(ToolError) as refused:
        skopeo(
            "copy", "--quiet", *NO_TLS, "--dest-creds", creds,
            f"oci:{layout}:v1", f"docker://{host1}/other/app:v1",
        )  # fmt: skip
    assert "403" in refused.value.output
    _, tok = await token(http, first, login, secret, "repository:other/app:pull,push")
    assert await status_with(http, "POST", f"{first}/v2/other/app/blobs/uploads/", tok) == 403
    # An action it lacks (delete) in its own namespace: 403 too.
    with pytest.raises(ToolError):
        skopeo("delete", "--tls-verify=false", "--creds", creds, f"docker://{host1}/team/app:v1")
    _, tok = await token(http, first, login, secret, "repository:team/app:delete")
    assert await status_with(http, "DELETE", f"{first}/v2/team/app/manifests/v1", tok) == 403

    # Expired: a robot living 5 s; its token outlives it and is refused on both gateways.
    short = json.loads(
        await admin(
            cluster, "robots", "add", "brief", "--namespace", "team:pull",
            "--expires", "5s", "--json",
        )
    )  # fmt: skip
    # Made through the CLI, usable on a gateway that never saw it without waiting for its
    # refresh: a login by an unknown name re-reads the directory early (rate-limited to
    # once per 0.25 s, so a login in the same instant may still miss it once).
    status, brief_tok = 0, ""
    for _ in range(50):  # hang guard
        status, brief_tok = await token(
            http, second, short["login"], short["secret"], "repository:team/app:pull"
        )
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    manifest = "/v2/team/app/manifests/v1"
    assert await status_with(http, "GET", second + manifest, brief_tok) == 200
    await asyncio.sleep(max(0.0, short["expires_at"] - time.time()) + 0.5)
    for base in (first, second):
        assert await status_with(http, "GET", base + manifest, brief_tok) == 401
    status, _ = await token(http, first, short["login"], short["secret"], "")
    assert status == 401
    with pytest.raises(ToolError):
        skopeo(
            "inspect", "--tls-verify=false", "--creds",
            f"{short['login']}:{short['secret']}", f"docker://{host2}/team/app:v1",
        )  # fmt: skip

    # Revoked: a live token on the second gateway ends with its next request.
    _, live = await token(http, second, login, secret, "repository:team/app:pull")
    assert await status_with(http, "GET", second + manifest, live) == 200
    await admin(cluster, "robots", "revoke", "ci")
    assert await status_with(http, "GET", second + manifest, live) == 401
    assert (await token(http, second, login, secret, ""))[0] == 401
    assert (await token(http, first, login, secret, ""))[0] == 401
    with pytest.raises(ToolError):
        skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{host2}/team/app:v1")
