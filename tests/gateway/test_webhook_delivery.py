"""Webhook delivery (gateway/webhooks.py) over the FakeCluster's real metadata state, to a
real HTTP receiver: cursor moves only after a 2xx, retries, dead letters and their retry,
sealed segments, the lease fencing a second deliverer, envelope enrichment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fakecluster import FakeCluster
from prometheus_client import REGISTRY

from cargohold import audit
from cargohold.config import Config
from cargohold.metadata_api import (
    Actor,
    AuditAppend,
    BlobCommit,
    BlobUnlink,
    ManifestPut,
    PullEvent,
    PullRecord,
    Recipe,
)
from cargohold.webhooks import MEDIA_TYPE, Endpoint, wants
from gateway.activity import AuditSealer
from gateway.webhooks import WebhookDeliverer
from tests.cancel_fakes import StuckCall, assert_one_cancel_ends

D = "sha256:" + "cd" * 32
OCI = "application/vnd.oci.image.manifest.v1+json"
LAYER = "sha256:" + "ab" * 32


class Receiver:
    """An HTTP receiver that answers `status` (a list consumed per request, then 200)."""

    def __init__(self) -> None:
        self.failures: list[int] = []
        self.events: list[dict[str, Any]] = []
        self.requests: list[web.Request] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.failures:
            return web.Response(status=self.failures.pop(0))
        body = await request.json()
        self.events.extend(body["events"])
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield rec, str(server.make_url("/hook"))
    finally:
        await server.close()


def config(url: str, **hooks: Any) -> Config:
    cfg = Config()
    cfg.webhooks.endpoints = [
        {"name": "ci", "url": url, "headers": {"Authorization": "Bearer t0ken"}, "timeout": 2.0}
    ]
    cfg.webhooks.backoff_seconds = 0.01
    cfg.webhooks.backoff_max_seconds = 0.02
    for key, value in hooks.items():
        setattr(cfg.webhooks, key, value)
    return cfg


def push(fake: FakeCluster, repo: str, tag: str, age: float = 0.0) -> None:
    fake.state.execute(
        ManifestPut(
            repo,
            D,
            OCI,
            {"size": 321, "chunks": [["ef" * 32, 321]]},
            tag=tag,
            audit={"time": time.time() - age, "actor": "alice", "actor_kind": "user"},
        )
    )


def blob_events(fake: FakeCluster, repo: str) -> None:
    """A layer pushed, pulled twice and deleted, as the gateway's commands record them."""
    bob: Actor = {"time": time.time(), "actor": "bob", "actor_kind": "user"}
    recipe: Recipe = {"size": 4096, "chunks": [["ab" * 32, 4096]]}
    fake.state.execute(BlobCommit(repo, LAYER, recipe, None, time.time(), bob))
    pull = PullEvent(repo, LAYER, None, time.time(), "bob", "10.0.0.9", "docker", 4096)
    fake.state.execute(PullRecord((pull, pull)))
    fake.state.execute(BlobUnlink(repo, LAYER, bob))


def append(fake: FakeCluster, action: str, repo: str, n: int = 1) -> None:
    events = [audit.event(action, time=time.time(), repository=repo, digest=D) for _ in range(n)]
    fake.state.execute(AuditAppend(events))


async def drain(d: WebhookDeliverer, fake: FakeCluster, name: str = "ci") -> int:
    """Run delivery rounds until the endpoint's cursor reaches the log's head."""
    await d.tick()
    for _ in range(200):
        listing = fake.state.query("webhook_list", {})
        row = next((r for r in listing["endpoints"] if r["name"] == name), None)
        if row and row["cursor"] == listing["head_seq"] and not row["retry"]:
            return int(row["cursor"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"not delivered: {listing}")


async def test_events_arrive_in_order_once_after_failures(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    fake = FakeCluster()
    cfg = config(url, batch_events=3)
    # Blob events too, but only pushes and deletes (blob pulls are filtered out).
    cfg.webhooks.endpoints[0]["blob_actions"] = ["push", "delete"]
    d = WebhookDeliverer(cfg, fake.meta_api(), fake.read_all, "gw1")
    try:
        await d.tick()  # a configured endpoint starts at the head: nothing before counts
        await asyncio.sleep(0.05)
        push(fake, "lib/old", "x")  # may or may not be after the first cursor: drained below
        await drain(d, fake)
        rec.events.clear()
        rec.failures = [500, 503, 502]
        for i in range(7):
            if i == 3:  # a layer pushed, pulled twice (batched like manifest pulls), deleted
                blob_events(fake, "team/app1")
            push(fake, f"team/app{i % 2}", f"v{i}")
        append(fake, "login", "")  # not an event an endpoint can want
        await drain(d, fake)
    finally:
        await d.close()
    tags = [e["target"].get("tag", "blob") for e in rec.events]
    # In order, each once; the blob's push and delete where they happened, no blob pull.
    assert tags == ["v0", "v1", "v2", "blob", "blob", "v3", "v4", "v5", "v6"]
    first = rec.events[0]
    assert first["action"] == "push" and first["target"]["mediaType"] == OCI
    assert first["target"]["size"] == 321 and first["actor"] == {"name": "alice"}
    blob_push, blob_delete = rec.events[3], rec.events[4]
    assert [blob_push["action"], blob_delete["action"]] == ["push", "delete"]
    target = dict(blob_push["target"])
    assert target.pop("url").endswith(f"/v2/team/app1/blobs/{LAYER}")
    assert target == {
        "mediaType": "application/octet-stream",
        "digest": LAYER,
        "size": 4096,
        "length": 4096,
        "repository": "team/app1",
    }
    assert blob_push["actor"] == {"name": "bob"} and blob_push["request"]["method"] == "PUT"
    assert blob_delete["target"]["size"] == 4096
    assert rec.headers[-1]["Authorization"] == "Bearer t0ken"
    assert rec.headers[-1]["Content-Type"] == MEDIA_TYPE
    # The pulls were recorded (in the activity log: an endpoint with blob_actions=["pull"]
    # gets them), just not sent to this endpoint.
    lines = fake.state.query("audit_tail", {"after": 0, "n": 10000})["records"]
    pulls = [r for r in map(audit.decode, lines) if r["action"] == "pull"]
    assert [(r["digest"], audit.blob_size(r)) for r in pulls] == [(LAYER, 4096)] * 2
    assert wants(Endpoint.from_json({"name": "x", "url": url, "blob_actions": ["pull"]}), pulls[0])


async def test_a_batch_failing_max_attempts_times_is_dead_lettered_then_retried(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    fake = FakeCluster()
    d = WebhookDeliverer(config(url, max_attempts=2), fake.meta_api(), fake.read_all, "gw1")
    try:
        await drain(d, fake)
        rec.failures = [500, 500]
        push(fake, "team/app", "v1")
        await drain(d, fake)
        assert rec.events == []
        (letter,) = fake.state.query("webhook_dead_letters", {"name": "ci"})
        assert letter[2] == 2 and "HTTP 500" in letter[3]
        push(fake, "team/app", "v2")  # later events are not held back by a dead one
        await drain(d, fake)
        assert [e["target"]["tag"] for e in rec.events] == ["v2"]
        fake.state.apply("webhook_retry", {"name": "ci", "seqs": None})
        await drain(d, fake)
    finally:
        await d.close()
    assert [e["target"]["tag"] for e in rec.events] == ["v2", "v1"]
    assert fake.state.query("webhook_dead_letters", {"name": "ci"}) == []


async def test_records_already_sealed_into_segments_are_delivered(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    fake = FakeCluster()
    d = WebhookDeliverer(config(url), fake.meta_api(), fake.read_all, "gw1")
    try:
        start = await drain(d, fake)
        rec.failures = [500] * 1000  # the receiver is down while records get sealed
        for i in range(12):
            push(fake, "team/app", f"v{i}")
        cfg = Config()
        cfg.audit.segment_records = 5
        assert await AuditSealer(cfg.audit, fake.meta_api(), fake.store_bytes).run_once() == 2
        assert fake.state.audit.tail_first > start + 1
        rec.failures = []
        await drain(d, fake)
    finally:
        await d.close()
    assert [e["target"]["tag"] for e in rec.events] == [f"v{i}" for i in range(12)]


async def test_only_the_lease_holder_moves_cursors(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    fake = FakeCluster()
    one = WebhookDeliverer(config(url), fake.meta_api(), fake.read_all, "gw1")
    two = WebhookDeliverer(config(url), fake.meta_api(), fake.read_all, "gw2")
    try:
        await drain(one, fake)
        await two.tick()
        assert one.holding() and not two.holding() and not two._tasks
        await one.close()  # a clean stop hands the lease over at once
        push(fake, "team/app", "v1")
        await drain(two, fake)
        assert two.holding()
    finally:
        await one.close()
        await two.close()
    assert [e["target"]["tag"] for e in rec.events] == ["v1"]


async def test_no_endpoint_no_lease() -> None:
    fake = FakeCluster()
    d = WebhookDeliverer(Config(), fake.meta_api(), fake.read_all, "gw1")
    await d.tick()
    await d.close()
    assert fake.ops("command") == [] and not d.holding()


def lost() -> float:
    sample = REGISTRY.get_sample_value("cargohold_webhook_events_lost_total", {"endpoint": "ci"})
    return sample or 0.0


async def test_records_expired_by_retention_are_counted_and_skipped(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    fake = FakeCluster()
    d = WebhookDeliverer(config(url), fake.meta_api(), fake.read_all, "gw1")
    try:
        await drain(d, fake)
        rec.failures = [500] * 1000  # down while the oldest records are sealed and expired
        for i in range(10):
            push(fake, "team/app", f"v{i}", age=100.0 if i < 5 else 0.0)
        cfg = Config()
        cfg.audit.segment_records = 5
        assert await AuditSealer(cfg.audit, fake.meta_api(), fake.store_bytes).run_once() == 2
        assert await fake.meta_api().audit_expire(time.time() - 50) == 1
        assert fake.state.audit.base_seq == 5
        await d._stop_tasks()  # the deliverer re-reads its cursor, now behind the base
        rec.failures = []
        lost_before = lost()
        await drain(d, fake)
    finally:
        await d.close()
    assert [e["target"]["tag"] for e in rec.events] == [f"v{i}" for i in range(5, 10)]
    assert lost() - lost_before == 5


async def test_a_deleted_manifests_events_take_its_media_type_from_the_trash(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    fake = FakeCluster()
    d = WebhookDeliverer(config(url), fake.meta_api(), fake.read_all, "gw1")
    try:
        await drain(d, fake)
        rec.failures = [500] * 1000  # down until the manifest is deleted (into the trash)
        push(fake, "team/app", "v1")
        await fake.meta_api().manifest_delete("team/app", D, now=time.time(), trash=True)
        await asyncio.sleep(0.1)
        rec.failures = []
        await drain(d, fake)
    finally:
        await d.close()
    assert [e["action"] for e in rec.events] == ["push"]  # no actor context: no delete record
    assert rec.events[0]["target"]["mediaType"] == OCI
    assert rec.events[0]["target"]["size"] == 321


async def test_a_stop_that_lands_in_a_metadata_call_ends_the_delivery_loop() -> None:
    """grpc.aio reports a cancellation inside a call as an error (the metadata client's
    Unavailable); the delivery loop retries those, but not its own cancellation."""
    fake = FakeCluster()
    d = WebhookDeliverer(config("http://127.0.0.1:9/hook"), fake.meta_api(), fake.read_all, "gw1")
    stuck = StuckCall()
    d._cursor = stuck  # type: ignore[method-assign]  # the loop's first metadata call
    d._lease_until = time.monotonic() + 3600  # holding: the loop runs until stopped
    task = asyncio.create_task(d._deliver_loop(Endpoint("ci", "http://127.0.0.1:9/hook")))
    await assert_one_cancel_ends(task, stuck)
