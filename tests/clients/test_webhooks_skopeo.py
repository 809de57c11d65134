"""Webhooks seen from a real client's changes: skopeo pushes, pulls and deletes an image and
a local receiver gets Distribution's envelope for each, with the manifest's media type,
digest and size, the tag, and skopeo's own user agent and method (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cargohold.webhooks import MEDIA_TYPE
from cargohold_cli.devcluster import LocalCluster, free_port
from clients.oci_layout import MT_MANIFEST, write_image_layout
from clients.tools import skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


async def test_skopeo_push_pull_delete_reach_a_distribution_receiver(
    skopeo_tool: None, make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        extra={"webhooks": {"poll_seconds": 0.2, "lease_seconds": 3}},
    )
    received: list[tuple[str, dict[str, Any]]] = []

    async def handle(request: web.Request) -> web.Response:
        for ev in (await request.json())["events"]:
            received.append((request.headers.get("Content-Type", ""), ev))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        argv = [sys.executable, "-m", "cargohold_cli", "admin", "webhooks", "add", "ci"]
        argv += [f"http://127.0.0.1:{port}/hook", "--namespace", "wh"]
        argv += ["--config", str(cluster.admin_config_path())]
        argv += ["--nodes", ",".join(cluster.node_grpc_addresses)]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr

        host = cluster.gateway_urls[0].removeprefix("http://")
        src = write_image_layout(tmp_path / "src", uuid.uuid4().hex, big_size=256 * 1024)
        dest = f"docker://{host}/wh/app:v1"
        await asyncio.to_thread(skopeo, "copy", "--quiet", *NO_TLS, f"oci:{src.path}:v1", dest)
        await asyncio.to_thread(skopeo, "copy", "--quiet", *NO_TLS, dest, f"oci:{tmp_path}/o:v1")
        await asyncio.to_thread(
            skopeo, "delete", "--tls-verify=false", f"docker://{host}/wh/app@{src.top_digest}"
        )
        deadline = time.monotonic() + 60
        while {ev["action"] for _, ev in received} != {"push", "pull", "delete"}:
            assert time.monotonic() < deadline, received
            await asyncio.sleep(0.3)
    finally:
        await runner.cleanup()

    assert {ctype for ctype, _ in received} == {MEDIA_TYPE}
    events = {ev["action"]: ev for _, ev in received}
    size = len(src.blobs[src.top_digest])
    push, pull, delete = events["push"], events["pull"], events["delete"]
    assert push["target"] == {
        "mediaType": MT_MANIFEST,
        "digest": src.top_digest,
        "size": size,
        "length": size,
        "repository": "wh/app",
        "url": f"http://{host}/v2/wh/app/manifests/{src.top_digest}",
        "tag": "v1",
    }
    assert push["request"]["method"] == "PUT" and pull["request"]["method"] == "GET"
    assert "skopeo" in push["request"]["useragent"].lower()
    assert "skopeo" in pull["request"]["useragent"].lower()
    # skopeo resolves the tag with a HEAD, then GETs the manifest by digest: no tag.
    assert pull["target"]["digest"] == src.top_digest and pull["target"].get("tag") in (None, "v1")
    # Deleted by digest: the event names the manifest (its media type from the trash).
    assert delete["request"]["method"] == "DELETE"
    assert delete["target"]["digest"] == src.top_digest and "tag" not in delete["target"]
    assert delete["target"]["mediaType"] == MT_MANIFEST and delete["target"]["size"] == size
    assert len({ev["id"] for _, ev in received}) == len(received)
    assert json.loads(json.dumps(push))["source"]["addr"] == host
