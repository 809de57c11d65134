"""The trash on a real cluster (docs/operations.md "The trash"): an image pushed with
skopeo, then deleted (tag, manifest and every blob, as a stolen credential could), stays
on every node through a GC pass with grace 0; `cargohold admin trash restore` brings it
back and skopeo pulls it byte for byte; deleted again and purged, the next GC pass
reclaims its bytes and a restore is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from clients.oci_layout import read_blobs, write_image_layout, write_index_layout
from clients.tools import have, skopeo

from cargohold_cli.devcluster import LocalCluster
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
REPO = "trash/app"


def admin_cli(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """One `cargohold admin` command as an operator runs it (a real process)."""
    nodes = ",".join(cluster.node_grpc_addresses)
    cmd = [sys.executable, "-m", "cargohold_cli", "admin", "--config"]
    cmd += [str(cluster.admin_config_path()), argv[0]]
    if argv[0] == "trash":
        cmd += [argv[1], "--nodes", nodes, *argv[2:]]
    else:
        cmd += ["--nodes", nodes, *argv[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def chunk_bytes(cluster: LocalCluster) -> list[int]:
    return [cluster.node_status(i, timeout=10).chunk_bytes for i in range(cluster.node_count)]


async def settled_bytes(cluster: LocalCluster, want: list[int]) -> list[int]:
    """The nodes' chunk bytes once they equal `want`, or as they are after a hang guard: a
    push is acknowledged at a write quorum and its last copy follows in the background."""
    for _ in range(300):
        got = chunk_bytes(cluster)
        if got == want:
            break
        await asyncio.sleep(0.2)
    return got


async def gc_wait(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    done = await asyncio.to_thread(admin_cli, cluster, "gc", "--wait", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    results: dict[str, dict[str, int]] = json.loads(done.stdout)
    return results


async def delete_all(
    http: aiohttp.ClientSession, base: str, manifest: str, blobs: list[str]
) -> None:
    """The tag, then the manifest, then every blob: everything the API lets a user delete."""
    for path in ("manifests/v1", f"manifests/{manifest}", *(f"blobs/{b}" for b in blobs)):
        async with http.delete(f"{base}/v2/{REPO}/{path}") as resp:
            assert resp.status == 202, (path, await resp.text())


async def test_a_deleted_image_survives_gc_is_restored_then_purged_and_reclaimed(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "lifecycle": {
                "gc_interval_seconds": 0.0,
                "gc_grace_seconds": 0.0,
                "trash_retention_seconds": 3600.0,
            },
        },
    )
    base = cluster.gateway_url
    host = base.removeprefix("http://")
    src = write_image_layout(tmp_path / "src", uuid.uuid4().hex, big_size=3 * 1024 * 1024)
    empty = chunk_bytes(cluster)
    skopeo("copy", "--quiet", *NO_TLS, f"oci:{src.path}:v1", f"docker://{host}/{REPO}:v1")
    image_bytes = sum(len(b) for b in src.blobs.values())
    pushed = await settled_bytes(cluster, [e + image_bytes for e in empty])
    assert [p - e for p, e in zip(pushed, empty, strict=True)] == [image_bytes] * 3

    blobs = [d for d in src.blobs if d != src.top_digest]
    await delete_all(http, base, src.top_digest, blobs)
    async with http.get(f"{base}/v2/{REPO}/manifests/{src.top_digest}") as resp:
        assert resp.status == 404
    async with http.get(f"{base}/v2/_catalog") as resp:
        assert REPO not in (await resp.json())["repositories"]
    listed = admin_cli(cluster, "trash", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["kind"], e["digest"], e["tag"]) for e in entries] == [
        ("manifest", src.top_digest, None),
        ("tag", src.top_digest, "v1"),
    ]

    # GC with grace 0, twice (a first pass could only note what is unlinked): nothing goes.
    for _ in range(2):
        results = await gc_wait(cluster)
        assert all("error" not in r for r in results.values()), results
        assert sum(r["pruned_blobs"] for r in results.values()) == 0
    assert chunk_bytes(cluster) == pushed

    restored = admin_cli(cluster, "trash", "restore", f"{REPO}@{src.top_digest}")
    assert restored.returncode == 0, restored.stderr
    assert f"restored tag {REPO}:v1" in restored.stdout
    out = tmp_path / "out"
    skopeo("copy", "--quiet", *NO_TLS, f"docker://{host}/{REPO}:v1", f"oci:{out}:v1")
    pulled = read_blobs(out)
    assert set(pulled) == set(src.blobs)
    for digest, data in src.blobs.items():
        assert pulled[digest] == data, f"{digest} changed through the trash"

    # Deleted again, then purged by the operator: the next GC pass reclaims every byte.
    await delete_all(http, base, src.top_digest, blobs)
    purged = admin_cli(cluster, "trash", "purge")
    assert purged.returncode == 0 and "purged 2 trash entries" in purged.stdout, purged
    results = await gc_wait(cluster)
    assert sum(r["pruned_blobs"] for r in results.values()) == len(src.blobs)
    assert chunk_bytes(cluster) == empty
    refused = admin_cli(cluster, "trash", "restore", f"{REPO}:v1")
    assert refused.returncode == 1
    assert f"tag v1 of {REPO} is not in the trash" in refused.stderr


async def test_an_index_comes_back_with_its_children_and_a_moved_tag_needs_force(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")
    cluster = make_cluster(nodes=3, gateways=1, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES)})
    base = cluster.gateway_url
    host = base.removeprefix("http://")
    src = write_index_layout(tmp_path / "src", uuid.uuid4().hex, big_size=256 * 1024)
    skopeo("copy", "--quiet", "--all", *NO_TLS, f"oci:{src.path}:v1", f"docker://{host}/{REPO}:v1")
    # The index, then its two platform manifests, by digest (the default retention: 24 h).
    for digest in (src.top_digest, *src.manifest_digests):
        async with http.delete(f"{base}/v2/{REPO}/manifests/{digest}") as resp:
            assert resp.status == 202
    # Someone pushes a single image as v1 meanwhile.
    other = write_image_layout(tmp_path / "other", uuid.uuid4().hex, big_size=64 * 1024)
    skopeo("copy", "--quiet", *NO_TLS, f"oci:{other.path}:v1", f"docker://{host}/{REPO}:v1")

    refused = admin_cli(cluster, "trash", "restore", f"{REPO}@{src.top_digest}")
    assert refused.returncode == 1
    assert f"tag v1 of {REPO} now points to {other.top_digest}" in refused.stderr
    forced = admin_cli(cluster, "trash", "restore", f"{REPO}@{src.top_digest}", "--force")
    assert forced.returncode == 0, forced.stderr
    for digest in (src.top_digest, *src.manifest_digests):
        assert f"restored manifest {REPO}@{digest}" in forced.stdout
    out = tmp_path / "out"
    skopeo("copy", "--quiet", "--all", *NO_TLS, f"docker://{host}/{REPO}:v1", f"oci:{out}:v1")
    pulled = read_blobs(out)
    assert set(pulled) == set(src.blobs)
    assert all(pulled[d] == data for d, data in src.blobs.items())
    listed = admin_cli(cluster, "trash", "list", "--json")
    assert json.loads(listed.stdout) == []
