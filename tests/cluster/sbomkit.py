"""Test images for the SBOM scanner: layers with package databases built in memory (tar,
gzip, zstd; whiteouts), pushed with the plain OCI API, and the SBOM read back through the
referrers API and the scan records through `cargohold admin sbom`'s functions."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import zstandard

from cargohold_cli import admin_sbom
from cargohold_cli.devcluster import LocalCluster
from cluster.images import sha256
from cluster.registry_client import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def tar_of(
    files: dict[str, bytes] | None = None,
    symlinks: dict[str, str] | None = None,
    dirs: tuple[str, ...] = (),
) -> bytes:
    """An uncompressed layer: `dirs` first, then the files, then the symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def gzip_layer(tar: bytes) -> tuple[str, bytes]:
    return LAYER + "+gzip", gzip.compress(tar, compresslevel=1)


def zstd_layer(tar: bytes) -> tuple[str, bytes]:
    return LAYER + "+zstd", zstandard.ZstdCompressor().compress(tar)


@dataclass
class Image:
    layers: list[tuple[str, bytes]]
    config: bytes = field(
        default_factory=lambda: json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
    )

    def manifest(self) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": CONFIG_TYPE,
                    "digest": sha256(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": mt, "digest": sha256(data), "size": len(data)}
                    for mt, data in self.layers
                ],
            }
        ).encode()

    async def push(self, client: RegistryClient, base: str, repo: str, tag: str) -> str:
        for data in [self.config, *(d for _, d in self.layers)]:
            await client.push_blob(base, repo, sha256(data), data, monolithic=False)
        return await client.put_manifest(base, repo, tag, self.manifest())


async def wait_scan(
    cluster: LocalCluster,
    repo: str,
    digest: str,
    states: tuple[str, ...] = ("done", "failed"),
    wait: float = 120.0,
) -> Any:
    """The scan record of repo@digest once its state is one of `states`."""
    cfg = cluster.client_config("admin")
    deadline = time.monotonic() + wait
    while True:
        records = await asyncio.to_thread(
            admin_sbom.list_scans, cluster.node_grpc_addresses, cfg, repo, None, digest
        )
        if records and records[0].state in states:
            return records[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"scan of {repo}@{digest} not {states}: {records}")
        await asyncio.sleep(0.1)


async def sboms_of(
    session: aiohttp.ClientSession, base: str, repo: str, digest: str
) -> list[dict[str, Any]]:
    """The SBOM referrers of repo@digest, each as {"descriptor", "manifest", "document"}."""
    # `+` must be percent-encoded in a query string (a bare one means a space).
    url = f"{base}/v2/{repo}/referrers/{digest}?artifactType={quote(SBOM_TYPE, safe='')}"
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        index = json.loads(await resp.read())
    out = []
    for descriptor in index["manifests"]:
        assert descriptor["artifactType"] == SBOM_TYPE
        async with session.get(
            f"{base}/v2/{repo}/manifests/{descriptor['digest']}",
            headers={"Accept": OCI_MANIFEST},
        ) as resp:
            assert resp.status == 200
            manifest = json.loads(await resp.read())
        [layer] = manifest["layers"]
        async with session.get(f"{base}/v2/{repo}/blobs/{layer['digest']}") as resp:
            assert resp.status == 200
            document = json.loads(await resp.read())
        out.append({"descriptor": descriptor, "manifest": manifest, "document": document})
    return out
