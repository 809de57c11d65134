"""Decisions in the activity log on a real cluster (3 nodes, 1 gateway): trust changes
made with `cargohold admin trust`, a pull the signature policy refuses (with its reason),
a retention pass (each manifest it deleted and its count per repository) and a GC pass
(the trash it purged per repository, what it pruned and swept) all appear in
`cargohold admin audit export`, and `cargohold admin audit verify` still passes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin
from cluster.images import ImageSpec
from cluster.registry_client import RegistryClient
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.test_audit_log import admin_audit, records, wait_for
from tests import signing_kit as kit

pytestmark = pytest.mark.cluster

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def push(client: RegistryClient, base: str, image: ImageSpec) -> str:
    return await client.push_image(base, image, CHUNK)


def rows(found: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in keys) for r in found]


async def test_trust_policy_retention_and_gc_decisions_are_recorded(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=1,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "audit": {"flush_seconds": 0.2},
            "lifecycle": {
                "pull_flush_seconds": 0.2,
                "retention": ["team/old: keep_tags=v* untagged_after=1h"],
                "retention_interval_seconds": 0,
                "gc_interval_seconds": 0.0,
                "gc_grace_seconds": 0.0,
                "trash_retention_seconds": 1.0,
            },
        },
    )
    base = cluster.gateway_url
    client = RegistryClient(http)
    # Trust changes through the CLI.
    key = tmp_path / "release.pem"
    key.write_text(kit.public_pem(kit.new_key()))
    await admin(cluster, "namespaces", "add", "prod")
    await admin(cluster, "trust", "add-key", "prod", "release", "--file", str(key))
    await admin(cluster, "trust", "require-signature", "prod", "on")
    # An unsigned image in the protected namespace: its pull is refused with the reason.
    unsigned = ImageSpec("prod/app", "v1", seed=3, layer_sizes=(300,))
    digest = await push(client, base, unsigned)
    async with http.get(
        f"{base}/v2/prod/app/manifests/v1",
        headers={"Accept": MANIFEST, "User-Agent": "decisions-test/1"},
    ) as resp:
        assert resp.status == 403
        assert "unsigned" in (await resp.json())["errors"][0]["message"]
    # Retention deletes team/old:old (a tag it does not keep) into the trash ...
    old = ImageSpec("team/old", "old", seed=4, layer_sizes=(400,))
    old_digest = await push(client, base, old)
    await push(client, base, ImageSpec("team/old", "v1", seed=5, layer_sizes=(400,)))
    await admin(cluster, "retention")
    # ... and GC, once the trash retention passed, purges it and reclaims its space.
    await asyncio.sleep(1.2)
    await admin(cluster, "gc", "--wait")

    wanted_actions = {"admin", "policy", "delete", "retention", "purge", "gc"}

    def everything() -> list[dict[str, Any]] | None:
        found = records(cluster)
        return found if wanted_actions <= {r["action"] for r in found} else None

    found = await wait_for(everything)
    assert found, {r["action"] for r in records(cluster)}
    trust = [r for r in found if r["reference"] == "trust:prod"]
    assert rows(trust, "actor_kind", "repository", "result") == [("admin", "prod", "ok")] * 2
    assert trust[0]["detail"].startswith("key release added (pem sha256:")
    assert trust[1]["detail"] == "require_signature on"
    (policy,) = [r for r in found if r["action"] == "policy"]
    assert rows([policy], "repository", "reference", "digest", "result", "user_agent") == [
        ("prod/app", "v1", digest, "denied", "decisions-test/1")
    ]
    assert policy["detail"] == "signature: unsigned: no signature found" and policy["client"]
    # Retention: the manifest it deleted, then its count for the repository.
    deleted = [r for r in found if r["action"] == "delete" and r["actor"] == "retention"]
    assert rows(deleted, "repository", "digest", "actor_kind") == [
        ("team/old", old_digest, "system")
    ]
    (summary,) = [r for r in found if r["action"] == "retention"]
    assert summary["repository"] == "team/old"
    assert summary["detail"].startswith("deleted 1 manifests, 1 tags (policy team/old:")
    # GC: the trash it purged (per repository), then one event per node that deleted.
    (purge,) = [r for r in found if r["action"] == "purge"]
    assert rows([purge], "actor", "actor_kind", "repository") == [("gc", "system", "team/old")]
    assert purge["detail"].startswith("2 trash entries deleted")  # the manifest, its tag
    passes = [r for r in found if r["action"] == "gc"]
    assert passes and all(r["actor"] == "gc" and r["client"] for r in passes)
    assert any("swept" in r["detail"] and "pruned" in r["detail"] for r in passes)
    # The chain still holds, with the decisions in it.
    done = admin_audit(cluster, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
