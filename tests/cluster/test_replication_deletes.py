"""Replicated deletes (`replicate_deletes`) and dead letters between real registries: a
Cargohold cluster (the source), a second Cargohold in token mode (a target that deletes
tags by name; the rule's DELETEs ask its token service for the `delete` action) and
Debian's `docker-registry` (CNCF Distribution 2.8) started with deletes disabled.

One source cluster (1 node, 1 gateway) has two on_push rules with `replicate_deletes`:
`to-cargohold` (`del/*`) and `to-dist` (`dl/*`), `event_max_attempts` 3.

- A tag deleted at the source is deleted by name at the target (the other tag on the
  same manifest still pulls); the manifest deleted by digest is gone there too; restored
  from the trash at the source, it is copied back.
- Dead letters end to end: Distribution refuses the replicated manifest delete (405,
  deletes disabled); after 3 attempts it is a dead letter in `admin replication status`
  and the push after it is copied all the same; Distribution restarted with deletes
  enabled, `admin replication retry` deletes it. Distribution 2.8 deletes by digest
  only: a replicated tag delete is a dead letter too, and the manifest stays.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.admin_kit import admin, admin_run
from cluster.images import MANIFEST_TYPE, ImageSpec
from cluster.polling import eventually
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.token_client import TokenClient, token_auth
from cluster.upstreams import Distribution, push_image

pytestmark = pytest.mark.cluster

MAX_ATTEMPTS = 3
USERS = {"alice": "alice-pw"}


@pytest.fixture(scope="module")
def registries(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, LocalCluster, Distribution]]:
    dist = Distribution(tmp_path_factory.mktemp("distribution"), deletes=False).start()
    small = {"nodes": 1, "gateways": 1, "replicas": 1, "write_quorum": 1, "chunk_size": CHUNK}
    token_dir = tmp_path_factory.mktemp("target-cluster")
    target = LocalCluster(
        token_dir / "cluster",
        extra={"node": dict(QUIET_ROLES), "auth": token_auth(token_dir, USERS)},
        **small,
    )
    rules: list[dict[str, Any]] = [
        {
            "name": "to-cargohold",
            "url": target.gateway_url,
            "username": "alice",
            "password": USERS["alice"],
            "repositories": ["del/*"],
            "replicate_deletes": True,
        },
        {"name": "to-dist", "url": dist.url, "repositories": ["dl/*"], "replicate_deletes": True},
    ]
    source = LocalCluster(
        tmp_path_factory.mktemp("source-cluster"),
        extra={
            "node": dict(QUIET_ROLES),
            "replication": {
                "rules": rules,
                "lease_seconds": 4.0,
                "poll_seconds": 0.2,
                "backoff_seconds": 0.2,
                "backoff_max_seconds": 1.0,
                "event_max_attempts": MAX_ATTEMPTS,
            },
        },
        **small,
    )
    try:
        with ThreadPoolExecutor(2) as pool:  # the two clusters start side by side
            for started in [pool.submit(c.start, timeout=90) for c in (target, source)]:
                started.result()
        rules_started(source, [r["name"] for r in rules])
        yield source, target, dist
    finally:
        source.kill_all()
        target.kill_all()
        dist.stop()


def rules_started(cluster: LocalCluster, names: list[str]) -> None:
    """Wait until a gateway runs each rule: a new on_push rule starts at the activity
    log's head, so what is pushed before is not its event."""
    deadline = time.monotonic() + 60
    while True:
        rows = json.loads(admin_run(cluster, "replication", "list", "--json"))
        if all(any(r["name"] == n and r.get("cursor") is not None for r in rows) for n in names):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no gateway started the rules {names}: {rows}")
        time.sleep(0.3)


async def manifest_at(http: aiohttp.ClientSession, base: str, repo: str, ref: str) -> str | None:
    """The digest `ref` names at the registry `base`; None when it answers 404."""
    url = f"{base}/v2/{repo}/manifests/{ref}"
    async with http.get(url, headers={"Accept": MANIFEST_TYPE}) as r:
        if r.status == 404:
            return None
        assert r.status == 200, await r.text()
        return r.headers["Docker-Content-Digest"]


async def token_manifest_at(alice: TokenClient, repo: str, ref: str) -> str | None:
    """`manifest_at` at the token-mode target."""
    path = f"/v2/{repo}/manifests/{ref}"
    status, headers, body = await alice.request("GET", path, headers={"Accept": MANIFEST_TYPE})
    if status == 404:
        return None
    assert status == 200, body
    return headers["Docker-Content-Digest"]


async def delete_at(http: aiohttp.ClientSession, base: str, repo: str, ref: str) -> None:
    async with http.delete(f"{base}/v2/{repo}/manifests/{ref}") as r:
        assert r.status == 202, await r.text()


async def tag_too(http: aiohttp.ClientSession, base: str, image: ImageSpec, tag: str) -> None:
    """`image`'s manifest (pushed) under a second tag."""
    async with http.put(
        f"{base}/v2/{image.repo}/manifests/{tag}",
        data=image.manifest(),
        headers={"Content-Type": MANIFEST_TYPE},
    ) as r:
        assert r.status == 201, await r.text()


async def status(cluster: LocalCluster, rule: str) -> dict[str, Any]:
    (row,) = json.loads(await admin(cluster, "replication", "status", rule, "--json"))
    return row


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], cluster: LocalCluster) -> Any:
    """Poll `check` until it answers something true (60 s at most); its answer."""
    return await eventually(
        check, what, explain=lambda: admin(cluster, "replication", "status", "--json")
    )


async def test_deleted_tag_and_manifest_follow_to_the_target(
    registries: tuple[LocalCluster, LocalCluster, Distribution], http: aiohttp.ClientSession
) -> None:
    source, target, _ = registries
    src = source.gateway_url
    alice = TokenClient(http, target.gateway_url, "alice", USERS["alice"])
    image = ImageSpec("del/app", "v1", 11, (3000, CHUNK + 5))
    await push_image(http, src, image)
    await tag_too(http, src, image, "v2")
    for tag in ("v1", "v2"):
        at = functools.partial(token_manifest_at, alice, "del/app", tag)
        await wait_for(f"del/app:{tag} at the target", at, source)

    # A tag deleted by name: gone there, the manifest and its other tag stay.
    await delete_at(http, src, "del/app", "v1")
    await wait_for(
        "v1 deleted at the target",
        lambda: _gone(token_manifest_at(alice, "del/app", "v1")),
        source,
    )
    assert await token_manifest_at(alice, "del/app", "v2") == image.digest
    assert await token_manifest_at(alice, "del/app", image.digest) == image.digest
    for _media, digest, data in image.blobs():  # still pulls: its blobs are there
        code, _, body = await alice.request("GET", f"/v2/del/app/blobs/{digest}")
        assert code == 200 and body == data

    # The manifest by digest: gone there, with the tag on it.
    await delete_at(http, src, "del/app", image.digest)
    await wait_for(
        "the manifest deleted at the target",
        lambda: _gone(token_manifest_at(alice, "del/app", image.digest)),
        source,
    )
    assert await token_manifest_at(alice, "del/app", "v2") is None
    row = await status(source, "to-cargohold")
    assert row["status"]["deletes_sent"] == 2 and row["dead_letters"] == 0, row

    # Restored from the trash here: copied back there, with the tag it brought back.
    await admin(source, "trash", "restore", f"del/app@{image.digest}")
    at = functools.partial(token_manifest_at, alice, "del/app", "v2")
    assert await wait_for("v2 restored at the target", at, source) == image.digest


async def _gone(answer: Awaitable[str | None]) -> bool:
    return await answer is None


async def test_a_refused_delete_is_a_dead_letter_until_the_target_is_fixed(
    registries: tuple[LocalCluster, LocalCluster, Distribution], http: aiohttp.ClientSession
) -> None:
    source, _, dist = registries
    src = source.gateway_url
    image = ImageSpec("dl/app", "v1", 21, (2000,))
    await push_image(http, src, image)
    await tag_too(http, src, image, "v2")
    await wait_for(
        "dl/app:v2 at Distribution", lambda: manifest_at(http, dist.url, "dl/app", "v2"), source
    )

    # Deletes disabled there: 405 for every attempt, then a dead letter.
    await delete_at(http, src, "dl/app", image.digest)
    row = await wait_for(
        "the dead letter",
        lambda: _with_dead_letters(source, "to-dist", 1),
        source,
    )
    ((seq, _, attempts, reason),) = row["dead_recent"]
    assert attempts == MAX_ATTEMPTS and reason.startswith("DeleteRefused"), row
    assert "405" in reason and row["status"]["events_dead"] == 1
    assert dist.requests("DELETE", "/v2/dl/app/manifests/") == MAX_ATTEMPTS
    assert await manifest_at(http, dist.url, "dl/app", image.digest) == image.digest
    text = await admin(source, "replication", "status", "to-dist")
    assert "dead letters  1 (the last 1 below), 0 queued to retry" in text, text
    assert f"seq {seq} " in text and f"after {MAX_ATTEMPTS} attempts: DeleteRefused" in text

    # The rule went on: a later push is copied.
    later = ImageSpec("dl/app", "v3", 22, (2000,))
    await push_image(http, src, later)
    await wait_for(
        "dl/app:v3 at Distribution", lambda: manifest_at(http, dist.url, "dl/app", "v3"), source
    )

    # The cause fixed (deletes enabled), the operator retries: deleted there.
    dist.stop()
    dist.set_deletes(True)
    dist.start()
    queued = await admin(source, "replication", "retry", "to-dist")
    assert queued == "1 dead letters of to-dist queued to be copied again\n"
    await wait_for(
        "the retried delete",
        lambda: _gone(manifest_at(http, dist.url, "dl/app", image.digest)),
        source,
    )
    row = await wait_for(
        "the retry queue emptied", lambda: _with_dead_letters(source, "to-dist", 0), source
    )
    assert row["retry"] == [] and await manifest_at(http, dist.url, "dl/app", "v2") is None
    assert await manifest_at(http, dist.url, "dl/app", "v3") == later.digest

    # Distribution 2.8 deletes by digest only: a tag delete is refused for good (400), and
    # nothing else is deleted in its place.
    await delete_at(http, src, "dl/app", "v3")
    row = await wait_for(
        "the tag's dead letter", lambda: _with_dead_letters(source, "to-dist", 1), source
    )
    ((_, _, _, reason),) = row["dead_recent"]
    assert "deletes no tag by name" in reason, row
    assert await manifest_at(http, dist.url, "dl/app", "v3") == later.digest


async def _with_dead_letters(cluster: LocalCluster, rule: str, n: int) -> dict[str, Any] | None:
    """The rule's status row once it has `n` dead letters and none queued to retry."""
    row = await status(cluster, rule)
    return row if row["dead_letters"] == n and not row["retry"] else None
