"""Users, namespaces and roles in the replicated metadata, on a real token-mode cluster:
set up with the `cargohold admin users|namespaces` verbs, then a developer pushes, a
reader's push is 403 DENIED, anonymous callers pull a public namespace and nothing else,
the catalog is filtered, and disabling a user ends its logins on every gateway."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.cli import main
from cargohold_cli.devcluster import LocalCluster
from cluster.images import ImageSpec
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient
from gateway.auth.keys import generate_signing_key

pytestmark = pytest.mark.cluster


async def admin(cluster: LocalCluster, *argv: str, stdin: str = "") -> None:
    """One `cargohold admin` command, in a thread (the CLI runs its own event loop)."""
    nodes = ",".join(cluster.node_grpc_addresses)
    config = str(cluster.admin_config_path())
    verb = [*argv[:2], "--nodes", nodes, *argv[2:]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(stdin))
        assert await asyncio.to_thread(main, ["admin", "--config", config, *verb]) == 0


async def push(client: TokenClient, image: ImageSpec) -> int:
    for _media, digest, data in image.blobs():
        status, _h, _b = await client.request(
            "POST", f"/v2/{image.repo}/blobs/uploads/?digest={digest}", data=data
        )
        if status != 201:
            return status
    status, _h, _b = await client.request(
        "PUT",
        f"/v2/{image.repo}/manifests/{image.tag}",
        data=image.manifest(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    return status


async def test_roles_on_a_cluster(
    make_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    auth = {"mode": "token", "signing_key": str(key), "directory_refresh_seconds": 0.5}
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    await admin(cluster, "users", "add", "dev", "--password-stdin", stdin="dev-pw\n")
    await admin(cluster, "users", "add", "rita", "--password-stdin", stdin="rita-pw\n")
    await admin(cluster, "users", "add", "boss", "--admin")
    generated = capsys.readouterr().out
    assert "password for boss (shown once): " in generated
    await admin(cluster, "namespaces", "add", "team")
    await admin(cluster, "namespaces", "add", "pub", "public")
    await admin(cluster, "namespaces", "grant", "team", "dev", "developer")
    await admin(cluster, "namespaces", "grant", "team", "rita", "reader")
    await admin(cluster, "namespaces", "grant", "pub", "dev", "maintainer")
    await admin(cluster, "users", "list")
    listing = capsys.readouterr().out
    assert "team:developer" in listing and "$2b$" not in listing

    first, second = cluster.gateway_urls
    app = ImageSpec("team/app", "v1", seed=1, layer_sizes=(100, CHUNK + 1))
    shared = ImageSpec("pub/base", "v1", seed=2, layer_sizes=(100,))
    secret = ImageSpec("other/x", "v1", seed=3, layer_sizes=(100,))
    dev = TokenClient(http, first, "dev", "dev-pw")
    assert await push(dev, app) == 201
    assert await push(dev, shared) == 201
    assert await push(dev, secret) == 403  # outside its namespaces

    rita = TokenClient(http, second, "rita", "rita-pw")
    status, _h, body = await rita.request("GET", f"/v2/{app.repo}/manifests/v1")
    assert status == 200 and body == app.manifest()
    assert await push(rita, ImageSpec("team/app", "v2", seed=4, layer_sizes=(10,))) == 403

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

    # Disabled: its logins end (after the directory refresh) on every gateway.
    await admin(cluster, "users", "disable", "rita")
    for url in (first, second):
        for _ in range(50):
            async with http.get(
                f"{url}/auth/token",
                params={"service": "cargohold"},
                auth=aiohttp.BasicAuth("rita", "rita-pw"),
            ) as resp:
                if resp.status == 401:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 401
