"""Removals seen at once on every gateway (gateway/manifest_cache.py `RecordCache` under the
lease on the leader's unlink revision): a real cluster of 3 nodes and 2 gateways whose
record TTLs are 0, so only the lease may let a gateway answer a blob or manifest lookup by
digest from its cache.

Gateway B pulls a blob and a manifest by digest in a loop while gateway A deletes them:
every pull B *started* after A's 202 answers 404, and before the delete B answered from
its cache (no query) well past any TTL. Then the Raft leader is SIGKILLed mid-loop: B's
lease ends with its stream, B asks the cluster until the new leader grants one, and a
removal acknowledged by the new leader is again never served by B after its 202.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = pytest.mark.cluster

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
# A request answered 503 (no leader yet) is retried this long.
ELECTION_SECONDS = 60.0


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def lookups(http: aiohttp.ClientSession, base: str) -> dict[tuple[str, str], float]:
    """A gateway's `cargohold_gateway_record_lookups_total` by (record, source)."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("cargohold_gateway_record_lookups_total{"):
            record = line.split('record="', 1)[1].split('"', 1)[0]
            source = line.split('source="', 1)[1].split('"', 1)[0]
            counts[(record, source)] = float(line.rsplit(" ", 1)[1])
    return counts


async def retried(http: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> int:
    """A request retried while the cluster elects a leader (503); a retried DELETE that
    finds the thing gone (404) had been acknowledged already: it counts as done (202)."""
    deadline = time.monotonic() + ELECTION_SECONDS
    tries = 0
    while True:
        tries += 1
        async with http.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
            await resp.read()
            status = resp.status
        if status == 404 and method == "DELETE" and tries > 1:
            return 202
        if status != 503 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def push_image(http: aiohttp.ClientSession, base: str, repo: str, n: int) -> tuple[str, str]:
    """A layer and a manifest naming it, pushed through `base`; their digests."""
    layer = f"layer {n} ".encode() * 100
    config = json.dumps({"n": n}).encode()
    for blob in (layer, config):
        url = f"{base}/v2/{repo}/blobs/uploads/?digest={sha(blob)}"
        assert await retried(http, "POST", url, data=blob) == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": sha(layer), "size": len(layer)}],
        }
    ).encode()
    url = f"{base}/v2/{repo}/manifests/v{n}"
    headers = {"Content-Type": OCI_MANIFEST}
    assert await retried(http, "PUT", url, data=manifest, headers=headers) == 201
    return sha(layer), sha(manifest)


class Puller:
    """GETs of one URL through one gateway, back to back: (sent, answered, status) each."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.seen: list[tuple[float, float, int]] = []
        self._answered = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            sent = time.monotonic()
            async with self.http.get(self.url) as resp:
                await resp.read()
                self.seen.append((sent, time.monotonic(), resp.status))
                self._answered.set()

    async def until(self, done: Callable[[list[tuple[float, float, int]]], bool]) -> None:
        """Wait until `done(seen)`, looking again after each answer."""
        while not done(self.seen):
            self._answered.clear()
            await asyncio.wait_for(self._answered.wait(), ELECTION_SECONDS)

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def delete_while_pulled(
    http: aiohttp.ClientSession, a: str, b: str, path: str
) -> tuple[list[int], list[int]]:
    """DELETE `path` through A while B pulls it; B's statuses before the DELETE was sent,
    and of B's pulls sent after A's 202."""
    puller = Puller(http, b + path)
    await puller.until(lambda seen: len(seen) >= 20)
    sent = time.monotonic()
    assert await retried(http, "DELETE", a + path) == 202
    acknowledged = time.monotonic()
    await puller.until(lambda seen: any(s[0] > acknowledged for s in seen))
    await asyncio.sleep(0.1)  # a few more pulls after the 202
    await puller.stop()
    before = [status for start, _, status in puller.seen if start < sent]
    after = [status for start, _, status in puller.seen if start > acknowledged]
    return before, after


async def test_a_removal_through_one_gateway_is_never_served_by_the_other_after_its_202(
    make_cluster: Callable[..., LocalCluster], http: aiohttp.ClientSession
) -> None:
    no_ttl = {"blob_digest_ttl_seconds": 0.0, "manifest_digest_ttl_seconds": 0.0}
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={"node": dict(QUIET_ROLES), "gateway": no_ttl},
    )
    a, b = cluster.gateway_urls
    repo = "lease/app"
    for n in range(3):
        layer, manifest = await push_image(http, a, repo, n)
        first = await lookups(http, b)
        for path in (f"/v2/{repo}/blobs/{layer}", f"/v2/{repo}/manifests/{manifest}"):
            before, after = await delete_while_pulled(http, a, b, path)
            assert before and set(before) == {200}, before
            assert after and set(after) == {404}, (path, after)
        counted = await lookups(http, b)
        # With the TTLs at 0 only the lease can have answered from the cache: B did.
        for record in ("blob", "manifest"):
            gained = counted.get((record, "lease"), 0.0) - first.get((record, "lease"), 0.0)
            assert gained >= 10, (record, counted)
            assert counted.get((record, "ttl"), 0.0) == 0.0

    # The leader SIGKILLed while B pulls: B's lease ends with its stream. A removal the new
    # leader acknowledges (only once every lease the dead one granted has run out, and
    # every lease it granted itself has the new revision) is never served by B after it.
    layer, manifest = await push_image(http, a, repo, 99)
    path = f"/v2/{repo}/blobs/{layer}"
    puller = Puller(http, b + path)
    await puller.until(lambda seen: len(seen) >= 20)
    leader = cluster.leader_index()
    assert leader is not None
    cluster.kill_node(leader)
    assert await retried(http, "DELETE", a + path) == 202
    acknowledged = time.monotonic()
    await puller.until(lambda seen: any(s[0] > acknowledged for s in seen))
    await puller.stop()
    after = [status for start, _, status in puller.seen if start > acknowledged]
    assert after and set(after) == {404}, after
    # And B caches under the new leader's lease again (its first answers may still be
    # queries while the lease is not granted yet).
    layer, _ = await push_image(http, a, repo, 100)
    path = f"{b}/v2/{repo}/blobs/{layer}"
    start = await lookups(http, b)
    deadline = time.monotonic() + ELECTION_SECONDS
    while time.monotonic() < deadline:
        assert await retried(http, "GET", path) == 200
        now = await lookups(http, b)
        if now.get(("blob", "lease"), 0.0) > start.get(("blob", "lease"), 0.0):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("B never cached a link under the new leader's lease")
