"""Retention on real processes (docs/operations.md, "Retention"): a prepared repository is
pushed through a gateway, one tag is pulled (the gateway's batched pull times), then
`cargohold admin retention --dry-run --json` reports exactly the documented decisions and
deletes nothing, and the real run leaves exactly the survivors pullable (every byte) while
the rest answer 404; an untagged manifest goes once the delay passed, the children of a
kept index and nothing else of a deleted image stay."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from cargohold_cli.admin import admin_config, format_retention, run_retention
from cargohold_cli.devcluster import LocalCluster
from cluster.images import ImageSpec, random_image, sha256
from cluster.registry_client import RegistryClient, check_image
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster

REPO = "retain/app"
POLICY = f"{REPO}: keep_tags=v* most_recently_pushed=2 pulled_within=1h untagged_after=3s"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _spec(rng: random.Random, tag: str) -> ImageSpec:
    spec = random_image(rng, REPO, CHUNK)
    return ImageSpec(spec.repo, tag, spec.seed, spec.layer_sizes)


def _with_subject(spec: ImageSpec, subject: ImageSpec) -> bytes:
    doc = json.loads(spec.manifest())
    doc["subject"] = {
        "mediaType": MANIFEST_TYPE,
        "digest": subject.digest,
        "size": len(subject.manifest()),
    }
    doc["artifactType"] = "application/vnd.example.signature"
    return json.dumps(doc, separators=(",", ":")).encode()


def _index(children: list[ImageSpec]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": c.digest,
                    "size": len(c.manifest()),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for c, arch in zip(children, ("amd64", "arm64"), strict=True)
            ],
        },
        separators=(",", ":"),
    ).encode()


async def _put(http: aiohttp.ClientSession, base: str, ref: str, body: bytes, kind: str) -> str:
    async with http.put(
        f"{base}/v2/{REPO}/manifests/{ref}", data=body, headers={"Content-Type": kind}
    ) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Docker-Content-Digest"]


async def _status(http: aiohttp.ClientSession, base: str, ref: str) -> int:
    """HEAD: a check that is no pull (only GETs count as pulls for retention)."""
    async with http.head(f"{base}/v2/{REPO}/manifests/{ref}") as resp:
        return resp.status


def _cli_dry_run(cluster: LocalCluster) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cargohold_cli",
            "admin",
            "retention",
            "--dry-run",
            "--json",
            "--nodes",
            ",".join(cluster.node_grpc_addresses),
            "--config",
            str(cluster.admin_config_path()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _decisions(result: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    [repo] = result["report"]["repositories"]
    tags = {t["tag"]: t["action"] for t in repo["tags"]}
    manifests = {m["digest"]: m["action"] for m in repo["manifests"]}
    return tags, manifests


async def test_retention_dry_run_then_real_run_leaves_the_documented_survivors(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            # A gateway may serve a manifest deleted elsewhere (here: by retention on the
            # leader) by digest for this long (docs/architecture.md): 0 = ask every time.
            "gateway": {"manifest_digest_ttl_seconds": 0},
            "lifecycle": {
                "retention": [POLICY],
                "retention_interval_seconds": 0,
                "immutable_tags": [f"{REPO}:release-*"],
                "pull_flush_seconds": 0.2,
            },
        },
    )
    [base] = cluster.gateway_urls
    client = RegistryClient(http)
    rng = random.Random(12)
    names = ["v1", "release-1", "old-a", "old-b", "moving-1", "old-c", "sig", "c1", "c2", "moving"]
    specs = {name: _spec(rng, name) for name in names}
    for spec in specs.values():
        for _, digest, data in spec.blobs():
            await client.push_blob(base, REPO, digest, data, monolithic=True)
    # Push order is push-time order: most_recently_pushed=2 keeps the last two tags pushed.
    for tag in ("v1", "release-1", "old-a", "old-b"):
        await client.put_manifest(base, REPO, tag, specs[tag].manifest())
    await client.put_manifest(base, REPO, "moving", specs["moving-1"].manifest())
    await client.put_manifest(base, REPO, "old-c", specs["old-c"].manifest())
    sig = await _put(
        http, base, "sig-ref", _with_subject(specs["sig"], specs["old-c"]), MANIFEST_TYPE
    )
    # The signature went in by a tag to have a referrer; make it untagged like cosign's.
    async with http.delete(f"{base}/v2/{REPO}/manifests/sig-ref") as resp:
        assert resp.status == 202
    for child in ("c1", "c2"):
        await client.put_manifest(base, REPO, specs[child].digest, specs[child].manifest())
    index = await _put(http, base, "multi", _index([specs["c1"], specs["c2"]]), INDEX_TYPE)
    await client.put_manifest(base, REPO, "moving", specs["moving"].manifest())
    async with http.get(f"{base}/v2/{REPO}/manifests/old-b") as resp:  # the one pull
        assert resp.status == 200 and await resp.read() == specs["old-b"].manifest()

    admin = admin_config(str(cluster.admin_config_path()))
    # Hang guard only: wait until the pull's batch is applied and the untagged delay passed.
    deadline = time.monotonic() + 60
    untagged_since = time.time()
    while True:
        result = await asyncio.to_thread(_cli_dry_run, cluster)
        [repo] = result["report"]["repositories"]
        pulled = {t["tag"]: t["pulled"] for t in repo["tags"]}
        if pulled["old-b"] is not None and time.time() - untagged_since > 3.5:
            break
        assert time.monotonic() < deadline, result
        await asyncio.sleep(0.5)

    expected_tags = {
        "v1": "keep",  # keep_tags v*
        "release-1": "keep",  # immutable rule
        "old-a": "delete",
        "old-b": "keep",  # pulled_within 1h
        "old-c": "delete",
        "multi": "keep",  # most_recently_pushed 2
        "moving": "keep",  # most_recently_pushed 2
    }
    deleted = {specs["old-a"].digest, specs["old-c"].digest, sig, specs["moving-1"].digest}
    kept_untagged = {specs["c1"].digest, specs["c2"].digest}  # children of the kept index
    tags, manifests = _decisions(result)
    assert tags == expected_tags
    assert manifests == {
        **{d: "delete" for d in deleted},
        **{d: "keep" for d in kept_untagged},
    }
    reasons = {t["tag"]: t["reasons"] for t in repo["tags"]}
    assert reasons["release-1"] == [f"immutable rule {REPO}:release-*"]
    assert reasons["old-b"] == ["pulled_within 1h"]
    assert result["tags_deleted"] == 2 and result["manifests_deleted"] == 4
    # The dry run deleted nothing.
    for ref in (*expected_tags, *deleted):
        assert await _status(http, base, ref) == 200, ref

    real = await asyncio.to_thread(run_retention, cluster.node_grpc_addresses, False, admin)
    assert (real["tags_deleted"], real["manifests_deleted"], real["skipped_changed"]) == (2, 4, 0)
    assert _decisions(real) == (tags, manifests)
    text = format_retention(real).splitlines()
    assert text[-1] == "deleted: 2 tags, 4 manifests in 1 repositories", text
    [old_a] = [line for line in text if f"{REPO}:old-a " in line]
    assert "deleted" in old_a and "no keep rule keeps it" in old_a
    for tag in ("v1", "release-1", "old-b"):
        await check_image(client, base, specs[tag])
    await check_image(client, base, specs["moving"])
    for ref in ("multi", index, *kept_untagged):
        assert await _status(http, base, ref) == 200, ref
    for ref in ("old-a", "old-c", *deleted):
        assert await _status(http, base, ref) == 404, ref
    # The old manifests' layers are no longer readable through the repository's manifests;
    # a second run finds nothing more to do.
    again = await asyncio.to_thread(run_retention, cluster.node_grpc_addresses, False, admin)
    assert (again["tags_deleted"], again["manifests_deleted"]) == (0, 0)
    assert sha256(specs["moving"].manifest()) == specs["moving"].digest
