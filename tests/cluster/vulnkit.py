"""Driving vulnerability matching from tests (docs/supply-chain.md "Vulnerability
matching"), shared by tests/cluster/test_vulnerabilities.py and the real-image client test
(tests/clients/test_sbom_base_image.py): the admin CLI as a real process, OSV advisories
and `Debian.zip` files made by the test, manifest GETs that answer (status, error body),
the stored vulnerability-report referrers, and a poll-until helper."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from cargohold_cli.devcluster import LocalCluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPORT_TYPE = "application/vnd.cargohold.vulnerability-report+json"
# A CVSS v3.1 base score of 7.5: severity high.
HIGH_CVSS = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"
# The gateway's policy knobs made fast, so that a test sees a change within a second.
FAST_POLICY = {
    "refresh_seconds": 0.2,
    "vulndb_refresh_seconds": 0.2,
    "rematch_interval_seconds": 0.5,
    "refused_cache_seconds": 0.0,
}


def admin_cli(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """`cargohold admin GROUP VERB ... --nodes ...` as an operator runs it (a real process)."""
    nodes = ",".join(cluster.node_grpc_addresses)
    cmd = [sys.executable, "-m", "cargohold_cli", "admin", "--config"]
    cmd += [str(cluster.admin_config_path()), *argv[:2], "--nodes", nodes, *argv[2:]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def advisory(
    ident: str, package: str, fixed: str, ecosystem: str = "Debian:12", **extra: Any
) -> dict[str, Any]:
    """One OSV advisory: `package` of `ecosystem` is affected from the start up to `fixed`."""
    return {
        "schema_version": "1.6.0",
        "id": ident,
        "modified": "2099-01-01T00:00:00Z",
        "affected": [
            {
                "package": {"ecosystem": ecosystem, "name": package},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
            }
        ],
        **extra,
    }


def osv_zip(path: Path, advisories: Iterable[dict[str, Any]]) -> Path:
    """OSV's per-ecosystem zip layout (`Debian.zip`): one advisory JSON per member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for doc in advisories:
            z.writestr(f"{doc['id']}.json", json.dumps(doc))
    return path


async def get_status(http: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, Any]:
    async with http.request(method, url, headers={"Accept": OCI_MANIFEST}) as resp:
        body = await resp.read()
        return resp.status, (json.loads(body) if body and method == "GET" else None)


async def status_is(http: aiohttp.ClientSession, url: str, want: int) -> bool:
    return (await get_status(http, url))[0] == want


async def refused_body(http: aiohttp.ClientSession, url: str) -> Any:
    got = await get_status(http, url)
    return got if got[0] == 403 else None


async def until(check: Callable[[], Any], limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        got = await check()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def reports(http: aiohttp.ClientSession, base: str, repo: str, digest: str) -> list[Any]:
    url = f"{base}/v2/{repo}/referrers/{digest}"
    async with http.get(url, params={"artifactType": REPORT_TYPE}) as resp:
        assert resp.status == 200
        return list((await resp.json())["manifests"])
