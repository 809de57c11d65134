"""Users, namespaces and roles in the replicated metadata, on a real token-mode cluster:
set up with the `cargohold admin users|namespaces` verbs, then a developer pushes, a
reader's push is 403 DENIED, anonymous callers pull a public namespace and nothing else,
the catalog is filtered, and disabling a user ends its logins on every gateway."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin
from cluster.images import ImageSpec
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, push_image
from gateway.auth.keys import generate_signing_key

pytestmark = pytest.mark.cluster


async def test_roles_on_a_cluster(
    make_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    auth = {"mode": "token", "signing_key": str(key), "directory_refresh_seconds": 0.5}
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    await admin(cluster, "users", "add", "dev", "--password-stdin", stdin="dev-pw\n")
    await admin(cluster, "users", "add", "rita", "--password-stdin", stdin="rita-pw\n")
    generated = await admin(cluster, "users", "add", "boss", "--admin")
    assert "password for boss (shown once): " in generated
    await admin(cluster, "namespaces", "add", "team")
    await admin(cluster, "namespaces", "add", "pub", "public")
    await admin(cluster, "namespaces", "grant", "team", "dev", "developer")
    await admin(cluster, "namespaces", "grant", "team", "rita", "reader")
    await admin(cluster, "namespaces", "grant", "pub", "dev", "maintainer")
    listing = await admin(cluster, "users", "list")
    assert "team:developer" in listing and "$2b$" not in listing

    first, second = cluster.gateway_urls
    app = ImageSpec("team/app", "v1", seed=1, layer_sizes=(100, CHUNK + 1))
    shared = ImageSpec("pub/base", "v1", seed=2, layer_sizes=(100,))
    secret = ImageSpec("other/x", "v1", seed=3, layer_sizes=(100,))
    dev = TokenClient(http, first, "dev", "dev-pw")
    assert await push_image(dev, app) == 201
    assert await push_image(dev, shared) == 201
    assert await push_image(dev, secret) == 403  # outside its namespaces

    rita = TokenClient(http, second, "rita", "rita-pw")
    status, _h, body = await rita.request("GET", f"/v2/{app.repo}/manifests/v1")
    assert status == 200 and body == app.manifest()
    assert await push_image(rita, ImageSpec("team/app", "v2", seed=4, layer_sizes=(10,))) == 403

    anonymous = TokenClient(http, second)
    status, _h, body = await anonymous.request("GET", f"/v2/{shared.repo}/manifests/v1")
    assert status == 200 and body == shared.manifest()
    status, headers, _b = await anonymous.request("GET", f"/v2/{app.repo}/manifests/v1")
    assert status == 401
    status, headers, _b = await anonymous.request("POST", f"/v2/{shared.repo}/blobs/uploads/")
    assert status == 401
    assert 'scope="repository:pub/base:pull,push"' in headers["WWW-Authenticate"]

    status, _h, body = await rita.request("GET", "/v2/_catalog")
    assert status == 200 and body == b'{"repositories": ["pub/base", "team/app"]}'
    status, _h, body = await anonymous.request("GET", "/v2/_catalog")
    assert body == b'{"repositories": ["pub/base"]}'

    # Disabled: its logins end at once on every gateway (the revision check).
    await admin(cluster, "users", "disable", "rita")
    for url in (first, second):
        async with http.get(
            f"{url}/auth/token",
            params={"service": "cargohold"},
            auth=aiohttp.BasicAuth("rita", "rita-pw"),
        ) as resp:
            assert resp.status == 401
