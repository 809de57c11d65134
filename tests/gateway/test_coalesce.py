"""gateway/coalesce.py: shared linearizable reads, and their use by manifest GET/HEAD."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cargohold.errors import ManifestUnknown
from gateway.coalesce import Coalescer
from gateway.manifests import MANIFEST_CACHE, READS


class GatedCalls:
    """An async function whose calls block until released, numbered in start order."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.started: list[asyncio.Event] = []
        self.gates: list[asyncio.Event] = []
        self.fail = fail
        self.new_call = asyncio.Event()

    async def __call__(self) -> int:
        number = len(self.gates) + 1
        gate = asyncio.Event()
        self.gates.append(gate)
        self.new_call.set()
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        return number

    async def wait_calls(self, count: int) -> None:
        while len(self.gates) < count:
            self.new_call.clear()
            await self.new_call.wait()


async def _settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_late_callers_share_the_next_call_not_the_running_one() -> None:
    reads, fn = Coalescer(), GatedCalls()
    first = asyncio.create_task(reads.run("k", fn))
    await fn.wait_calls(1)
    late = [asyncio.create_task(reads.run("k", fn)) for _ in range(5)]
    await _settle()
    assert len(fn.gates) == 1  # nobody started a second call while the first runs
    fn.gates[0].set()
    assert await first == 1
    await fn.wait_calls(2)
    fn.gates[1].set()
    assert await asyncio.gather(*late) == [2] * 5
    assert len(fn.gates) == 2
    assert len(reads) == 0


async def test_different_keys_do_not_share() -> None:
    reads, fn = Coalescer(), GatedCalls()
    tasks = [asyncio.create_task(reads.run(key, fn)) for key in ("a", "b")]
    await fn.wait_calls(2)
    for gate in fn.gates:
        gate.set()
    assert sorted(await asyncio.gather(*tasks)) == [1, 2]


async def test_errors_reach_every_caller_of_that_call() -> None:
    reads, fn = Coalescer(), GatedCalls(fail=ManifestUnknown())
    first = asyncio.create_task(reads.run("k", fn))
    await fn.wait_calls(1)
    late = [asyncio.create_task(reads.run("k", fn)) for _ in range(3)]
    fn.gates[0].set()
    with pytest.raises(ManifestUnknown):
        await first
    await fn.wait_calls(2)
    fn.gates[1].set()
    results = await asyncio.gather(*late, return_exceptions=True)
    assert all(isinstance(r, ManifestUnknown) for r in results)
    assert len(reads) == 0


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    reads, fn = Coalescer(), GatedCalls()
    first = asyncio.create_task(reads.run("k", fn))
    await fn.wait_calls(1)
    quitter = asyncio.create_task(reads.run("k", fn))
    stayer = asyncio.create_task(reads.run("k", fn))
    await _settle()
    assert reads.waiting("k") == 2
    first.cancel()
    quitter.cancel()
    fn.gates[0].set()
    await fn.wait_calls(2)
    fn.gates[1].set()
    assert await stayer == 2
    assert first.cancelled() and quitter.cancelled()
    assert len(reads) == 0


# -- manifest GET/HEAD use it ------------------------------------------------------------
REPO = "herd/app"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
async def pushed(gw: TestClient, fake_cluster) -> bytes:
    fake_cluster.link_blob(REPO, "sha256:" + "1" * 64)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "x/y", "digest": "sha256:" + "1" * 64, "size": 1},
            "layers": [],
        }
    ).encode()
    resp = await gw.put(f"/v2/{REPO}/manifests/v1", data=body, headers={"Content-Type": MANIFEST})
    assert resp.status == 201
    return body


def _gate_queries(fake_cluster, monkeypatch: pytest.MonkeyPatch) -> GatedCalls:
    gated = GatedCalls()
    real_query = fake_cluster.query

    async def query(op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        if op in ("tag_get", "manifest_get"):  # the lookups; not the pull policy's trust_list
            await gated()
        return await real_query(op, args, linearizable)

    monkeypatch.setattr(fake_cluster, "query", query)
    return gated


async def test_a_herd_of_heads_makes_at_most_two_queries(
    gw: TestClient, fake_cluster, pushed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = _gate_queries(fake_cluster, monkeypatch)
    heads = [asyncio.create_task(gw.head(f"/v2/{REPO}/manifests/v1")) for _ in range(20)]
    await gated.wait_calls(1)
    reads = gw.app[READS]
    for _ in range(3000):  # until the other 19 requests reached the coalescer
        if reads.waiting(("tag_get", REPO, "v1")) == 19:
            break
        await asyncio.sleep(0.01)
    assert reads.waiting(("tag_get", REPO, "v1")) == 19
    gated.gates[0].set()
    await gated.wait_calls(2)
    gated.gates[1].set()
    responses = await asyncio.gather(*heads)
    assert [r.status for r in responses] == [200] * 20
    assert {r.headers["Content-Length"] for r in responses} == {str(len(pushed))}
    assert len(gated.gates) == 2


async def test_coalescing_can_be_turned_off(
    gw: TestClient, fake_cluster, gateway_cfg, pushed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_cfg.gateway.coalesce_manifest_reads = False
    gated = _gate_queries(fake_cluster, monkeypatch)
    heads = [asyncio.create_task(gw.head(f"/v2/{REPO}/manifests/v1")) for _ in range(3)]
    await gated.wait_calls(3)
    for gate in gated.gates:
        gate.set()
    assert [r.status for r in await asyncio.gather(*heads)] == [200] * 3


async def test_cold_cache_misses_read_the_body_once(
    gw: TestClient, fake_cluster, pushed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw.app[MANIFEST_CACHE].discard(_digest(pushed))
    gated = GatedCalls()
    real_read_all = fake_cluster.read_all

    async def read_all(recipe: dict[str, Any]) -> bytes:
        await gated()
        return await real_read_all(recipe)

    monkeypatch.setattr(fake_cluster, "read_all", read_all)
    gets = [asyncio.create_task(gw.get(f"/v2/{REPO}/manifests/v1")) for _ in range(10)]
    await gated.wait_calls(1)
    reads = gw.app[READS]
    key = ("manifest_body", _digest(pushed))
    for _ in range(3000):  # until the other 9 requests wait for the body
        if reads.waiting(key) == 9:
            break
        await asyncio.sleep(0.01)
    assert reads.waiting(key) == 9
    gated.gates[0].set()
    responses = await asyncio.gather(*gets)
    assert [await r.read() for r in responses] == [pushed] * 10
    # The second shared call found the body cached by the first.
    assert len(gated.gates) == 1


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()
