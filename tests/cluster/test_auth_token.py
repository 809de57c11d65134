"""Token auth on a real cluster (two gateways sharing one signing key): a hand-written
client pushes and pulls through the challenge -> token -> retry dance; a token from one
gateway works on the other; anonymous push is 401 with the exact challenge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import ImageSpec
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, parse_challenge, token_auth

pytestmark = pytest.mark.cluster

USERS = {"alice": "alice-pw"}


def token_cluster(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> LocalCluster:
    section = token_auth(tmp_path, USERS)
    return make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "auth": section},
    )


async def _push(client: TokenClient, image: ImageSpec) -> None:
    for _media, digest, data in image.blobs():
        status, _h, body = await client.request(
            "POST", f"/v2/{image.repo}/blobs/uploads/?digest={digest}", data=data
        )
        assert status == 201, body
    status, _h, body = await client.request(
        "PUT",
        f"/v2/{image.repo}/manifests/{image.tag}",
        data=image.manifest(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, body


async def test_token_dance_push_pull_across_gateways(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = token_cluster(make_cluster, tmp_path)
    first, second = cluster.gateway_urls
    image = ImageSpec("team/app", "v1", seed=11, layer_sizes=(1000, 3 * CHUNK + 5))

    # Anonymous push: 401 UNAUTHORIZED with the exact Bearer challenge.
    async with http.post(f"{first}/v2/team/app/blobs/uploads/") as resp:
        assert resp.status == 401
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="{first}/auth/token",service="cargohold",'
            'scope="repository:team/app:pull,push"'
        )
    # An anonymous token does not let it push either.
    anonymous = TokenClient(http, first)
    status, headers, _ = await anonymous.request("POST", "/v2/team/app/blobs/uploads/")
    assert status == 401
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]

    alice = TokenClient(http, first, "alice", USERS["alice"])
    await _push(alice, image)
    assert parse_challenge(alice.challenges[0])[1]["scope"] == "repository:team/app:pull,push"

    # Pull through the other gateway with the first gateway's token: one shared key.
    shared = {"Authorization": f"Bearer {alice.tokens['repository:team/app:pull,push']}"}
    async with http.get(f"{second}/v2/{image.repo}/manifests/{image.tag}", headers=shared) as r:
        assert r.status == 200 and await r.read() == image.manifest()
    for _media, digest, data in image.blobs():
        async with http.get(f"{second}/v2/{image.repo}/blobs/{digest}", headers=shared) as r:
            assert r.status == 200 and await r.read() == data
    # The push-scoped token is not valid for another repository.
    token = next(iter(alice.tokens.values()))
    async with http.get(
        f"{second}/v2/team/other/tags/list", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 401
    # Wrong password: 401 from the token service, no token.
    async with http.get(
        f"{first}/auth/token",
        params={"service": "cargohold"},
        auth=aiohttp.BasicAuth("alice", "wrong"),
    ) as resp:
        assert resp.status == 401
    # Catalog through the dance.
    status, _h, body = await alice.request("GET", "/v2/_catalog")
    assert status == 200 and b"team/app" in body
    # The access log names the user of each request (and nobody for anonymous ones).
    log = (cluster.base_dir / "logs" / "gateway-1.log").read_text()
    pushes = [ln for ln in log.splitlines() if "route=/v2/{name}/manifests/{reference}" in ln]
    assert any("user=alice" in ln and "method=PUT" in ln and "status=201" in ln for ln in pushes)
    assert any('user=""' in ln and "status=401" in ln for ln in log.splitlines())
