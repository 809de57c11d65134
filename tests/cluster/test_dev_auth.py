"""`cargohold dev --auth`: token auth with an initial cluster admin whose generated
password sits 0600 in `<data>/admin-password`; it pushes, anonymous pushes are 401, and a
restart keeps the same password and key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import free_port
from cluster.devprocess import DevProcess, free_node_base
from cluster.images import ImageSpec
from cluster.token_client import TokenClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def _push_and_pull(base: str, password: str, image: ImageSpec) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v2/{image.repo}/blobs/uploads/") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith(f'Bearer realm="{base}/auth/token"')
        client = TokenClient(http, base, "admin", password)
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
        status, _h, body = await client.request("GET", f"/v2/{image.repo}/manifests/{image.tag}")
        assert status == 200 and body == image.manifest()


def test_dev_auth_creates_an_admin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, node_base = free_port(), free_node_base()
    base = f"http://127.0.0.1:{port}"
    dev = DevProcess(data, port, node_base, "--auth")
    try:
        dev.wait_for("registry ready")
        secret = data / "admin-password"
        assert secret.stat().st_mode & 0o777 == 0o600
        password = secret.read_text().strip()
        assert len(password) >= 20
        assert any(password in line for line in dev.seen)  # printed once
        asyncio.run(_push_and_pull(base, password, ImageSpec("any/app", "v1", 5, (1000,))))
        assert dev.interrupt() == 0
    finally:
        dev.kill()
    again = DevProcess(data, port, node_base, "--auth")
    try:
        again.wait_for("registry ready")
        assert not any(password in line for line in again.seen)
        assert secret.read_text().strip() == password
        asyncio.run(_push_and_pull(base, password, ImageSpec("any/app", "v2", 6, (10,))))
        assert again.interrupt() == 0
    finally:
        again.kill()
