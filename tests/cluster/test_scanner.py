"""SBOM scanning on push, on a real cluster (docs/supply-chain.md): an image whose layers
hold a Debian dpkg status (gzip), an Alpine apk database and Python metadata (zstd) and
whiteouts (plain tar) gets its CycloneDX referrer; artifacts are not scanned; a gateway
SIGKILLed in the middle of a scan leaves it leased, and after its restart the scan is taken
over and completes with one SBOM."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import sha256
from cluster.registry_client import RegistryClient
from cluster.sbomkit import (
    OCI_MANIFEST,
    SBOM_TYPE,
    Image,
    gzip_layer,
    sboms_of,
    tar_of,
    wait_scan,
    zstd_layer,
)
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DPKG = b"""Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""
APK = b"P:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n"
SITE = "usr/lib/python3.11/site-packages"


def admin_cli(cluster: LocalCluster, verb: str, *argv: str) -> str:
    """`cargohold admin sbom VERB ...` as an operator runs it (a real process)."""
    cmd = [sys.executable, "-m", "cargohold_cli", "admin", "--config"]
    cmd += [str(cluster.admin_config_path()), "sbom", verb]
    cmd += ["--nodes", ",".join(cluster.node_grpc_addresses), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _cluster(make_cluster: Callable[..., LocalCluster], **scanner: Any) -> LocalCluster:
    settings = {"enabled": True, "poll_seconds": 0.2, **scanner}
    return make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "scanner": settings},
    )


async def test_push_is_scanned_into_a_cyclonedx_referrer(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = _cluster(make_cluster)
    base, repo = cluster.gateway_url, "scan/app"
    image = Image(
        [
            gzip_layer(
                tar_of(
                    {
                        "var/lib/dpkg/status": DPKG,
                        "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\n',
                    },
                    symlinks={"etc/os-release": "../usr/lib/os-release"},
                )
            ),
            zstd_layer(
                tar_of(
                    {
                        "lib/apk/db/installed": APK,
                        f"{SITE}/requests-2.31.0.dist-info/METADATA": (
                            b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\n"
                        ),
                        f"{SITE}/gone-1.0.dist-info/METADATA": b"Name: gone\nVersion: 1.0\n",
                    }
                )
            ),
            (  # a plain tar: one whiteout, one legacy egg-info
                "application/vnd.oci.image.layer.v1.tar",
                tar_of(
                    {
                        f"{SITE}/.wh.gone-1.0.dist-info": b"",
                        f"{SITE}/legacy.egg-info/PKG-INFO": b"Name: Legacy_Pkg\nVersion: 0.9\n",
                    }
                ),
            ),
        ]
    )
    client = RegistryClient(http)
    digest = await image.push(client, base, repo, "v1")
    record = await wait_scan(cluster, repo, digest)
    assert record.state == "done", record
    assert record.attempts == 1
    [sbom] = await sboms_of(http, base, repo, digest)
    assert sbom["descriptor"]["digest"] == record.sbom
    assert sbom["manifest"]["subject"]["digest"] == digest
    assert sbom["manifest"]["subject"]["mediaType"] == OCI_MANIFEST
    assert sbom["manifest"]["layers"][0]["mediaType"] == SBOM_TYPE
    doc = sbom["document"]
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.5")
    assert doc["metadata"]["component"]["version"] == digest
    purls = {c["purl"] for c in doc["components"]}
    assert purls == {
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12",
        "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
        "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64",
        "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/legacy-pkg@0.9",
    }
    libc = next(c for c in doc["components"] if c["name"] == "libc6")
    assert {"name": "cargohold:source", "value": "glibc"} in libc["properties"]
    # The SBOM referrer itself, and an artifact with a subject, are not queued.
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.note",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(b"{}"),
                "size": 2,
            },
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        }
    ).encode()
    await client.push_blob(base, repo, sha256(b"{}"), b"{}", monolithic=True)
    note = await client.put_manifest(base, repo, "note", artifact)
    await asyncio.sleep(1.0)
    from cargohold_cli import admin_sbom

    scanned = await asyncio.to_thread(
        admin_sbom.list_scans, cluster.node_grpc_addresses, cluster.client_config("admin"), repo
    )
    assert {r.digest for r in scanned} == {digest}
    assert note not in {r.digest for r in scanned}
    # Pushing the same image again does not scan it again.
    assert await image.push(client, base, repo, "v1-again") == digest
    await asyncio.sleep(1.0)
    assert len(await sboms_of(http, base, repo, digest)) == 1
    # An image sharing those three layers (from the scanner's layer cache) plus one more.
    extra = gzip_layer(
        tar_of({f"{SITE}/extra-3.0.dist-info/METADATA": b"Name: extra\nVersion: 3.0\n"})
    )
    derived = Image([*image.layers, extra])
    second = await derived.push(client, base, "scan/derived", "v1")
    assert (await wait_scan(cluster, "scan/derived", second)).state == "done"
    [derived_sbom] = await sboms_of(http, base, "scan/derived", second)
    assert {c["purl"] for c in derived_sbom["document"]["components"]} == purls | {
        "pkg:pypi/extra@3.0"
    }
    # The operator's CLI: the record, and a rescan that stores the same (deterministic) SBOM.
    listed = json.loads(admin_cli(cluster, "list", "--json", "--repo", repo))
    assert [(r["digest"], r["state"], r["sbom"]) for r in listed] == [(digest, "done", record.sbom)]
    assert "queued" in admin_cli(cluster, "rescan", f"{repo}@{digest}")
    again = await wait_scan(cluster, repo, digest)
    assert (again.state, again.sbom) == ("done", record.sbom)
    assert again.updated_at > record.updated_at
    assert len(await sboms_of(http, base, repo, digest)) == 1


@pytest.mark.chaos
async def test_scan_survives_a_sigkill_of_its_scanner(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    # Paced reads make the scan last a few seconds, so the kill lands in its middle; the
    # lease is short so the test does not wait the default 11 minutes for the takeover.
    cluster = _cluster(
        make_cluster, read_rate_bytes=512 * 1024, scan_timeout_seconds=10, lease_seconds=12
    )
    base, repo = cluster.gateway_url, "scan/kill"
    noise = random.Random(7).randbytes(3 * 1024 * 1024)
    image = Image(
        [
            gzip_layer(tar_of({"opt/noise.bin": noise})),
            gzip_layer(tar_of({"var/lib/dpkg/status": DPKG})),
        ]
    )
    digest = await image.push(RegistryClient(http), base, repo, "v1")
    first = await wait_scan(cluster, repo, digest, states=("scanning", "done", "failed"))
    assert first.state == "scanning", first  # 3 MiB at 512 KiB/s: still reading
    await asyncio.sleep(1.0)
    cluster.kill_gateway(0)  # SIGKILL: no report, the claim stays leased
    still = await wait_scan(cluster, repo, digest, states=("scanning", "done", "failed"))
    assert (still.state, still.worker, still.attempts) == ("scanning", first.worker, 1)
    cluster.start_gateway(0)
    cluster.wait_ready(60)
    done = await wait_scan(cluster, repo, digest, wait=90)
    assert done.state == "done", done
    assert done.attempts == 2
    assert done.worker != first.worker
    assert str(os.getpid()) not in done.worker
    [sbom] = await sboms_of(http, base, repo, digest)
    names = {c["name"] for c in sbom["document"]["components"]}
    assert names == {"libc6", "base-files"}
