"""The pass that records platforms and labels of manifests stored before search recorded
them (gateway/search_backfill.py), over the in-process FakeCluster (the real state machine):
an old image becomes findable by label and platform, an old index by platform, an artifact
is marked looked-at, an unreadable config is left for the next pass, and a second pass finds
nothing to do. The backfill's lease: one gateway at a time runs the pass (the other waits
while the holder renews, and runs its own once the holder gives the lease up), a dead
holder's lease is taken over once it expired, and a holder that cannot renew (refused, or
no answer) stops."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cargohold.config import Config
from cargohold.errors import Unavailable
from gateway.context import CONTEXT
from gateway.search_backfill import JOB, InfoBackfill
from tests.gateway.fakecluster import FakeCluster
from tests.gateway.test_search_api import found, push_image, sha

INDEX = "application/vnd.oci.image.index.v1+json"
OCI = "application/vnd.oci.image.manifest.v1+json"


async def test_a_pass_records_what_old_pushes_lack(gw: TestClient, fake_cluster) -> None:
    fake: FakeCluster = fake_cluster
    web = await push_image(gw, fake, "acme/web", "1", "arm64", {"tier": "web"})
    db = await push_image(gw, fake, "acme/db", "1", "amd64", {"tier": "db"})
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": web,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64"},
                }
            ],
        }
    ).encode()
    resp = await gw.put("/v2/acme/web/manifests/all", data=index, headers={"Content-Type": INDEX})
    assert resp.status == 201, await resp.text()
    config = b'{"kind": "not an image"}'
    fake.link_blob("acme/web", sha(config), await fake.store_bytes(config))  # type: ignore[arg-type]
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI,
            "config": {
                "mediaType": "application/vnd.example.thing",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    resp = await gw.put(
        "/v2/acme/web/manifests/thing", data=artifact, headers={"Content-Type": OCI}
    )
    assert resp.status == 201, await resp.text()
    state = fake.state
    # As if pushed before search recorded `image_info`; acme/db's config is unreadable now.
    state.image_info.clear()
    state._search = None
    db_config = [d for d in state.links["acme/db"] if d not in (db,)]
    for digest in db_config:
        state.links["acme/db"].discard(digest)
    assert await found(gw, label="tier=web") == []
    assert await found(gw, platform="linux/arm64") == []

    backfill = InfoBackfill(gw.app[CONTEXT])
    counts = await backfill.run_pass()
    assert counts == {"looked_at": 4, "recorded": 3, "unread": 1}
    assert state.image_info[sha(artifact)] == "{}"  # an artifact: looked at, nothing to index
    assert await found(gw, label="tier=web") == ["acme/web:1"]
    assert await found(gw, platform="linux/arm64") == ["acme/web:1", "acme/web:all"]
    assert await found(gw, label="tier=db") == []
    # The unreadable one is looked at again by the next pass; nothing else is.
    for digest in db_config:
        state.links["acme/db"].add(digest)
    assert await backfill.run_pass() == {"looked_at": 1, "recorded": 1, "unread": 0}
    assert await found(gw, label="tier=db") == ["acme/db:1"]
    assert await backfill.run_pass() == {"looked_at": 0, "recorded": 0, "unread": 0}


async def until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


class Passes:
    """Stands in for `run_pass`: records who started one (and when), and holds each until
    `finish` is set."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.cancelled: list[str] = []
        self.finish = asyncio.Event()

    def of(self, backfill: InfoBackfill, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """Patch `backfill`; the list counts its lease requests."""
        tries: list[int] = []
        renew = backfill._renew

        async def run_pass() -> dict[str, int]:
            self.started.append((backfill.holder, time.time()))
            try:
                await self.finish.wait()
            except asyncio.CancelledError:
                self.cancelled.append(backfill.holder)
                raise
            return {"looked_at": 0, "recorded": 0, "unread": 0}

        async def counted() -> bool:
            tries.append(1)
            return await renew()

        monkeypatch.setattr(backfill, "run_pass", run_pass)
        monkeypatch.setattr(backfill, "_renew", counted)
        return tries


def lease_holder(fake: Any) -> str:
    held = fake.state.webhooks.job_leases.get(JOB)
    return held[0] if held else ""


async def test_one_gateway_at_a_time_runs_the_pass(
    gw: TestClient, gateway_cfg: Config, fake_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_cfg.gateway.search_backfill_lease_seconds = 0.3  # renewed every 0.1 s
    ctx = gw.app[CONTEXT]
    one, two = InfoBackfill(ctx, "gw1"), InfoBackfill(ctx, "gw2")
    passes = Passes()
    passes.of(one, monkeypatch)
    tries = passes.of(two, monkeypatch)
    first = asyncio.create_task(one.run_leased())
    await until(lambda: len(passes.started) == 1)
    second = asyncio.create_task(two._run(0.0))
    try:
        # gw2 asks every 0.1 s; 6 tries span more than one lease: gw1 renewed it meanwhile.
        await until(lambda: len(tries) >= 6)
        assert [h for h, _ in passes.started] == ["gw1"] and lease_holder(fake_cluster) == "gw1"
        passes.finish.set()  # gw1's pass ends: it gives the lease up, gw2 takes it
        assert await first is True
        await until(second.done)
        assert [h for h, _ in passes.started] == ["gw1", "gw2"] and not passes.cancelled
        assert lease_holder(fake_cluster) == ""  # gw2 gave it up after its pass too
    finally:
        first.cancel()
        second.cancel()


async def test_a_dead_holders_lease_is_taken_over_once_expired(
    gw: TestClient, gateway_cfg: Config, fake_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_cfg.gateway.search_backfill_lease_seconds = 0.3
    # A gateway took the lease and died (SIGKILL: no renewal, no release).
    args = {"job": JOB, "holder": "dead", "now": time.time(), "ttl": 0.5}
    expires = fake_cluster.state.apply("job_lease", args)["expires"]
    two = InfoBackfill(gw.app[CONTEXT], "gw2")
    passes = Passes()
    passes.finish.set()
    tries = passes.of(two, monkeypatch)
    task = asyncio.create_task(two._run(0.0))
    try:
        await until(task.done)
    finally:
        task.cancel()
    ((holder, started),) = passes.started
    assert holder == "gw2" and started >= expires and len(tries) >= 2  # it waited


@pytest.mark.parametrize("failure", ["refused", "unanswered"])
async def test_a_holder_that_cannot_renew_stops_its_pass(
    gw: TestClient,
    gateway_cfg: Config,
    fake_cluster,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    gateway_cfg.gateway.search_backfill_lease_seconds = 0.3
    one = InfoBackfill(gw.app[CONTEXT], "gw1")
    passes = Passes()
    passes.of(one, monkeypatch)
    task = asyncio.create_task(one.run_leased())
    try:
        await until(lambda: len(passes.started) == 1)

        command = fake_cluster.command

        async def away(op: str, args: dict[str, Any]) -> Any:
            if op == "job_lease":  # the cluster is away for the lease's renewals
                if failure == "unanswered":  # retried through an election that never ends
                    await asyncio.Event().wait()
                raise Unavailable("the metadata group has no leader")
            return await command(op, args)

        monkeypatch.setattr(fake_cluster, "command", away)
        await until(task.done)
        assert task.result() is False  # lost: the pass was stopped, not finished
        assert passes.cancelled == ["gw1"] and not one.holding()
    finally:
        task.cancel()
