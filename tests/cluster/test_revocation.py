"""Revocation at once on every gateway (docs/security.md "Revocation at once"), on a real
token-mode cluster of 3 nodes and 2 gateways whose directory cache would otherwise live an
hour: a robot revoked, a user disabled or a grant removed through gateway A's admin API
(and a robot revoked with the CLI) is refused on gateway B by the very next request, with
no sleep in between: 401 for a live token of a robot or user that is gone, 403 for a
right that is gone, and the token service refuses their logins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin
from cluster.shapes import CHUNK, QUIET_ROLES
from gateway.auth.keys import generate_signing_key

pytestmark = pytest.mark.cluster

API = "/_cargohold/api/v1"
MANIFEST = "/v2/team/app/manifests/v1"


async def token(
    http: aiohttp.ClientSession, base: str, user: str, secret: str, scope: str = ""
) -> tuple[int, str]:
    params = {"service": "cargohold", **({"scope": scope} if scope else {})}
    auth = aiohttp.BasicAuth(user, secret)
    async with http.get(f"{base}/auth/token", params=params, auth=auth) as resp:
        if resp.status != 200:
            return resp.status, ""
        return 200, str((await resp.json())["token"])


async def call(
    http: aiohttp.ClientSession, method: str, url: str, tok: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {tok}"}
    async with http.request(method, url, headers=headers, json=body) as resp:
        data = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, data


async def revision_checks(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """A gateway's `cargohold_gateway_auth_revisions_total` by source (lease, read)."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    counts = {"lease": 0.0, "read": 0.0}
    for line in text.splitlines():
        if line.startswith("cargohold_gateway_auth_revisions_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            counts[source] = float(line.rsplit(" ", 1)[1])
    return counts


async def revoke_during_election(http: aiohttp.ClientSession, url: str, tok: str) -> int:
    """DELETE through a gateway while a new leader is being elected: 503 (no leader to
    commit to) is retried for up to a minute; a retry after an acknowledged try that the
    client never saw answers 404, which counts as done."""
    deadline = time.monotonic() + 60
    status, _ = await call(http, "DELETE", url, tok)
    while status == 503 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        status, _ = await call(http, "DELETE", url, tok)
        if status == 404:
            return 200
    return status


async def test_revocations_through_one_gateway_refuse_the_next_request_on_the_other(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    # An hour-long directory cache: only the revision check can make this "at once".
    auth = {
        "mode": "token",
        "signing_key": str(key),
        "directory_refresh_seconds": 3600,
        # The refused logins below all come from this one address: no back-off here.
        "login_failures_free": 100,
    }
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    a, b = cluster.gateway_urls
    await admin(cluster, "users", "add", "root", "--admin", "--password-stdin", stdin="root-pw")
    _, root = await token(http, a, "root", "root-pw")
    assert (await call(http, "POST", f"{a}{API}/namespaces", root, {"name": "team"}))[0] == 201
    # Something to pull: an empty-layer image pushed by root.
    config = b"{}"
    digest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    _, push = await token(http, a, "root", "root-pw", "repository:team/app:pull,push")
    async with http.post(
        f"{a}/v2/team/app/blobs/uploads/?digest={digest}",
        data=config,
        headers={"Authorization": f"Bearer {push}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest, "size": 2},
        "layers": [],
    }  # fmt: skip
    async with http.put(
        f"{a}{MANIFEST}",
        json=manifest,
        headers={
            "Authorization": f"Bearer {push}",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        },
    ) as resp:
        assert resp.status == 201, await resp.text()

    # Robots, revoked through A's API: B refuses the live token at once. Several rounds:
    # not one lucky interleaving. B judges them on its lease (no round trip to the leader).
    before = await revision_checks(http, b)
    for round_ in range(5):
        made = await call(
            http, "POST", f"{a}{API}/robots", root,
            {"name": f"ci{round_}", "permissions": {"team": ["pull"]}},
        )  # fmt: skip
        assert made[0] == 201, made
        login, secret = made[1]["login"], made[1]["secret"]
        _, live = await token(http, b, login, secret, "repository:team/app:pull")
        assert live, "a robot made through A logs in on B"
        assert (await call(http, "GET", b + MANIFEST, live))[0] == 200
        assert (await call(http, "DELETE", f"{a}{API}/robots/ci{round_}", root))[0] == 200
        assert (await call(http, "GET", b + MANIFEST, live))[0] == 401
        assert (await token(http, b, login, secret))[0] == 401
    assert (await revision_checks(http, b))["lease"] > before["lease"]

    # A user disabled through A: 401 on B at once, and no more logins there.
    assert (
        await call(http, "POST", f"{a}{API}/users", root, {"name": "bob", "password": "bob-pw"})
    )[0] == 201
    grant = f"{a}{API}/namespaces/team/grants/users/bob"
    assert (await call(http, "PUT", grant, root, {"role": "reader"}))[0] in (200, 204)
    _, bob = await token(http, b, "bob", "bob-pw", "repository:team/app:pull")
    assert (await call(http, "GET", b + MANIFEST, bob))[0] == 200
    # A grant removed through A: the next pull on B is 403 (the token still names it).
    assert (await call(http, "DELETE", grant, root))[0] in (200, 204)
    assert (await call(http, "GET", b + MANIFEST, bob))[0] == 403
    assert (await call(http, "PUT", grant, root, {"role": "reader"}))[0] in (200, 204)
    assert (await call(http, "GET", b + MANIFEST, bob))[0] == 200  # granted again: at once
    assert (await call(http, "PATCH", f"{a}{API}/users/bob", root, {"disabled": True}))[0] == 200
    assert (await call(http, "GET", b + MANIFEST, bob))[0] == 401
    assert (await token(http, b, "bob", "bob-pw"))[0] == 401

    # The operator's CLI (straight to the nodes, no gateway told): the same.
    made = await call(
        http, "POST", f"{a}{API}/robots", root,
        {"name": "cli", "permissions": {"team": ["pull"]}},
    )  # fmt: skip
    _, live = await token(http, b, made[1]["login"], made[1]["secret"], "repository:team/app:pull")
    assert (await call(http, "GET", b + MANIFEST, live))[0] == 200
    await admin(cluster, "robots", "revoke", "cli")
    for base in (a, b):
        assert (await call(http, "GET", base + MANIFEST, live))[0] == 401

    # The leader SIGKILLed: B's lease ends with its stream; B checks by leader reads until
    # the new leader grants one. A robot revoked through A right after the kill (while the
    # cluster elects; acknowledged by the new leader only once every lease the dead one
    # granted has run out) is refused on B by the next request, whichever way B checks it
    # then: by a fallback read, or by the new leader's lease if B already holds one. (How
    # long B spends on reads is a race with the election, so it is printed, not asserted.)
    made = await call(
        http, "POST", f"{a}{API}/robots", root,
        {"name": "kill", "permissions": {"team": ["pull"]}},
    )  # fmt: skip
    _, live = await token(http, b, made[1]["login"], made[1]["secret"], "repository:team/app:pull")
    assert (await call(http, "GET", b + MANIFEST, live))[0] == 200
    leader = cluster.leader_index()
    assert leader is not None
    before = await revision_checks(http, b)
    cluster.kill_node(leader)
    assert await revoke_during_election(http, f"{a}{API}/robots/kill", root) == 200
    assert (await call(http, "GET", b + MANIFEST, live))[0] == 401
    after = await revision_checks(http, b)
    print(
        f"\nB after the leader's kill: {after['read'] - before['read']:.0f} fallback reads, "
        f"{after['lease'] - before['lease']:.0f} leased checks"
    )
