"""`cargohold dev` (what `make run` starts): serves, stops cleanly, and keeps data across restarts.

Runs the real CLI as a user would, pushes images over HTTP, stops it with Ctrl-C (SIGINT),
starts it again on the same data directory and reads every image back byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import free_port
from cluster.devprocess import DevProcess, bindable, free_node_base
from cluster.images import ImageSpec
from cluster.registry_client import RegistryClient, check_image

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def _push(base: str, specs: list[ImageSpec]) -> None:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session)
        for spec in specs:
            for _, digest, data in spec.blobs():
                await client.push_blob(base, spec.repo, digest, data, monolithic=False)
            assert (
                await client.put_manifest(base, spec.repo, spec.tag, spec.manifest()) == spec.digest
            )


async def _check(base: str, specs: list[ImageSpec]) -> int:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(session)
        return sum([await check_image(client, base, spec) for spec in specs])


def test_dev_cluster_keeps_everything_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, node_base = free_port(), free_node_base()
    base = f"http://127.0.0.1:{port}"
    # One image whose layer spans two 4 MiB chunks (the dev default), one small.
    specs = [
        ImageSpec(repo="dev/big", tag="v1", seed=1, layer_sizes=(5 * 1024 * 1024 + 7,)),
        ImageSpec(repo="dev/small/nested", tag="latest", seed=2, layer_sizes=(1000, 3)),
    ]

    first = DevProcess(data, port, node_base)
    try:
        first.wait_for("registry ready")
        asyncio.run(_push(base, specs))
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "cargohold_cli",
                "admin",
                "--config",
                str(data / "config" / "admin.toml"),
                "status",
                "--json",
                "--nodes",
                f"127.0.0.1:{node_base}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["leader"] in {"n1", "n2", "n3"}
        assert sorted(m["id"] for m in report["members"]) == ["n1", "n2", "n3"]
        assert sum(n["chunks"] for n in report["nodes"]) > 0
        assert first.interrupt() == 0
    finally:
        first.kill()
    # Every child went with it: the ports are free again.
    assert bindable(port) and bindable(node_base)

    second = DevProcess(data, port, node_base)
    try:
        second.wait_for("registry ready")
        read = asyncio.run(_check(base, specs))
        assert read >= sum(spec.total_bytes for spec in specs)
        assert second.interrupt() == 0
    finally:
        second.kill()
