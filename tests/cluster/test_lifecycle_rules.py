"""Immutable tags and delete protection on real processes (docs/operations.md, "Immutable
tags and delete protection"), with a hand-written HTTP client: the refusals name the rule
or the namespace, through either of two gateways, and the image stays readable."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.images import random_image
from cluster.registry_client import RegistryClient, Violation, check_image
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster


async def test_immutable_tags_and_protected_namespaces(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "lifecycle": {"immutable_tags": ["prod/*:v*"], "delete_protected": ["vault"]},
        },
    )
    client = RegistryClient(http)
    first, second = cluster.gateway_urls
    rng = random.Random(7)
    v1 = random_image(rng, "prod/app", CHUNK)
    v1 = type(v1)(v1.repo, "v1", v1.seed, v1.layer_sizes)
    other = type(v1)("prod/app", "v1", v1.seed + 1, v1.layer_sizes)
    for _, digest, data in v1.blobs():
        await client.push_blob(first, v1.repo, digest, data, monolithic=True)
    await client.put_manifest(first, v1.repo, "v1", v1.manifest())
    for _, digest, data in other.blobs():
        await client.push_blob(second, other.repo, digest, data, monolithic=True)

    # Two gateways race to move the tag: the state refuses both, naming the rule.
    async def move(base: str) -> tuple[int, dict]:
        async with http.put(
            f"{base}/v2/prod/app/manifests/v1",
            data=other.manifest(),
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ) as resp:
            return resp.status, json.loads(await resp.read())

    for status, body in await asyncio.gather(move(first), move(second)):
        assert status == 403, body
        [err] = body["errors"]
        assert err["code"] == "DENIED" and "rule prod/*:v*" in err["message"], err
    for base in (first, second):
        async with http.delete(f"{base}/v2/prod/app/manifests/v1") as resp:
            assert resp.status == 403 and b"immutable" in await resp.read()
        async with http.delete(f"{base}/v2/prod/app/manifests/{v1.digest}") as resp:
            assert resp.status == 403
    await check_image(client, second, v1)  # still v1's manifest, every byte

    vaulted = type(v1)("vault/keys", "latest", v1.seed + 2, v1.layer_sizes)
    for _, digest, data in vaulted.blobs():
        await client.push_blob(first, vaulted.repo, digest, data, monolithic=True)
    await client.put_manifest(first, vaulted.repo, "latest", vaulted.manifest())
    for url in (
        f"{second}/v2/vault/keys/manifests/latest",
        f"{second}/v2/vault/keys/manifests/{vaulted.digest}",
        f"{second}/v2/vault/keys/blobs/{vaulted.blobs()[1][1]}",
    ):
        async with http.delete(url) as resp:
            body = json.loads(await resp.read())
            assert resp.status == 403, url
            assert "namespace vault" in body["errors"][0]["message"]
    await check_image(client, first, vaulted)
    with pytest.raises(Violation):  # the refusals changed nothing: the other image is absent
        await check_image(client, first, other)
