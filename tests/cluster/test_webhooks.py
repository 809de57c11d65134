"""Webhooks on a real cluster (3 nodes, 2 gateways): a receiver that is down for 30 s in the
middle of 200 pushes, pulls and deletes, a SIGKILL of the gateway delivering and of the
Raft leader meanwhile; every event of the activity log arrives (deduplicated by id), the
blob pushes' events among them, each repository's events in order, and the pushes never
waited on the receiver: they were all acknowledged while it was down and their events not
yet delivered (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cargohold.webhooks import MEDIA_TYPE, event_id
from cargohold_cli.devcluster import LocalCluster, free_port
from cluster.images import ImageSpec
from cluster.polling import eventually
from cluster.registry_client import RegistryClient, Retryable
from cluster.shapes import CHUNK, QUIET_ROLES

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

REPOS = [f"hooks/app{i}" for i in range(8)]
DOWN_SECONDS = 30.0


class Receiver:
    """A local webhook receiver that can be taken down (its port closed) and back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.envelopes: list[list[dict[str, Any]]] = []
        self.content_types: set[str] = set()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.add(request.headers.get("Content-Type", ""))
        assert request.headers.get("Authorization") == "Bearer hook-secret"
        self.envelopes.append((await request.json())["events"])
        return web.Response(status=200)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event received, first arrival of each id, in arrival order."""
        seen: set[str] = set()
        out = []
        for batch in self.envelopes:
            for ev in batch:
                if ev["id"] not in seen:
                    seen.add(ev["id"])
                    out.append(ev)
        return out


def admin(cluster: LocalCluster, *args: str) -> str:
    argv = [sys.executable, "-m", "cargohold_cli", "admin", *args]
    argv += ["--config", str(cluster.admin_config_path())]
    argv += ["--nodes", ",".join(cluster.node_grpc_addresses)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def admin_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(await asyncio.to_thread(admin, cluster, *args, "--json"))


class Workload:
    """Pushes (a new tag each), pulls and tag deletes through whichever gateway answers,
    retried until acknowledged; remembers each repository's acknowledged pushes in order."""

    def __init__(self, cluster: LocalCluster, client: RegistryClient) -> None:
        self.cluster = cluster
        self.client = client
        self.images = {
            repo: ImageSpec(repo, "base", i, (1000, 3000)) for i, repo in enumerate(REPOS)
        }
        self.pushed: dict[str, list[str]] = {repo: [] for repo in REPOS}
        self.deleted: dict[str, list[str]] = {repo: [] for repo in REPOS}
        self.ops = 0
        self.turn = 0

    async def retried(self, op: Callable[[str], Awaitable[Any]]) -> Any:
        deadline = time.monotonic() + 120
        while True:
            bases = self.cluster.gateway_urls
            base = bases[self.turn % len(bases)]
            self.turn += 1
            try:
                return await op(base)
            except Retryable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def setup(self) -> None:
        for repo, image in self.images.items():
            for _media, digest, data in image.blobs():
                await self.retried(
                    lambda base, r=repo, d=digest, b=data: self.client.push_blob(
                        base, r, d, b, monolithic=True
                    )
                )

    async def push(self, repo: str) -> None:
        tag = f"t{len(self.pushed[repo]):03d}"
        body = self.images[repo].manifest()
        await self.retried(lambda base: self.client.put_manifest(base, repo, tag, body))
        self.pushed[repo].append(tag)
        self.ops += 1

    async def pull(self, repo: str) -> None:
        tag = self.pushed[repo][-1]

        async def get(base: str) -> None:
            status, _d, _b = await self.client.get_manifest(base, repo, tag)
            assert status == 200, (status, repo, tag)

        await self.retried(get)
        self.ops += 1

    async def delete(self, repo: str) -> None:
        tag = self.pushed[repo][len(self.deleted[repo])]  # the oldest tag still there

        async def rm(base: str) -> None:
            attempts.append(base)
            try:
                async with self.client.session.delete(f"{base}/v2/{repo}/manifests/{tag}") as r:
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Retryable("tag_delete", 0, type(exc).__name__) from None
            if status in (500, 502, 503, 504):
                raise Retryable("tag_delete", status, "")
            if status == 404 and len(attempts) > 1:
                return  # a retried delete whose earlier attempt went through
            assert status == 202, (status, repo, tag)

        attempts: list[str] = []

        await self.retried(rm)
        self.deleted[repo].append(tag)
        self.ops += 1

    async def round(self, n: int) -> None:
        """`n` operations: per repository a push then a pull; every 10th a tag delete."""
        for k in range(n):
            repo = REPOS[(self.ops // 2) % len(REPOS)]
            if self.ops % 10 == 9 and len(self.pushed[repo]) > len(self.deleted[repo]) + 1:
                await self.delete(repo)
            elif k % 2 == 0 or not self.pushed[repo]:
                await self.push(repo)
            else:
                await self.pull(repo)


def lease_holder_gateway(cluster: LocalCluster, holder: str) -> int:
    for j, url in enumerate(cluster.gateway_urls):
        if f"/{url.removeprefix('http://')}/" in holder:
            return j
    raise AssertionError(f"no gateway holds {holder}")


@pytest.mark.slow
async def test_webhooks_survive_a_dead_receiver_a_gateway_and_the_leader(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(
        nodes=3,
        gateways=2,
        chunk_size=CHUNK,
        extra={
            "node": dict(QUIET_ROLES),
            "audit": {"segment_records": 60, "seal_interval_seconds": 2},
            "lifecycle": {"pull_flush_seconds": 0.2},
            "webhooks": {
                "lease_seconds": 6,
                "poll_seconds": 0.3,
                "backoff_seconds": 0.5,
                "backoff_max_seconds": 4,
                "batch_events": 20,
            },
        },
    )
    receiver = Receiver(free_port())
    await receiver.up()
    url = f"http://127.0.0.1:{receiver.port}/events"
    await asyncio.to_thread(
        admin, cluster, "webhooks", "add", "ci", url, "--namespace", "hooks",
        "--header", "Authorization: Bearer hook-secret", "--timeout", "3",
        "--blob-action", "push", "--blob-action", "pull", "--blob-action", "delete",
    )  # fmt: skip
    listing = await admin_json(cluster, "webhooks", "list")
    start = listing["endpoints"][0]["cursor"]
    try:
        async with aiohttp.ClientSession() as session:
            work = Workload(cluster, RegistryClient(session, timeout=30))
            await work.setup()
            await work.round(50)
            await eventually(
                lambda: _has(receiver, sum(map(len, work.pushed.values()))),
                "first events",
                interval=1.0,
            )

            # The receiver goes down for DOWN_SECONDS; meanwhile 100 operations, the
            # delivering gateway and the Raft leader are SIGKILLed (and restarted).
            await receiver.down()
            down_at = time.monotonic()
            before_down = len(receiver.envelopes)
            pushes_before = sum(map(len, work.pushed.values()))
            await work.round(30)
            holder = (await admin_json(cluster, "webhooks", "list"))["lease"]["holder"]
            victim = lease_holder_gateway(cluster, holder)
            await asyncio.sleep(0.5)  # its last pull batch (0.2 s) is in the log
            cluster.kill_gateway(victim)
            await work.round(30)

            async def taken_over() -> bool:
                lease = (await admin_json(cluster, "webhooks", "list"))["lease"]
                return lease_holder_gateway(cluster, lease["holder"]) != victim

            await eventually(
                taken_over, "the other gateway to take the delivery lease", interval=1.0
            )
            leader = cluster.leader_index()
            assert leader is not None
            cluster.kill_node(leader)
            await work.round(20)
            cluster.start_gateway(victim)
            cluster.start_node(leader)
            await work.round(20)
            # Structural proof that no push waited on the receiver: every one of these
            # operations was acknowledged while the receiver was unreachable, and the
            # endpoint's cursor is still behind their records.
            listing = await admin_json(cluster, "webhooks", "list")
            (row,) = listing["endpoints"]
            assert len(receiver.envelopes) == before_down
            cursor_while_down = row["cursor"]
            pushes_while_down = sum(map(len, work.pushed.values())) - pushes_before
            assert cursor_while_down < listing["head_seq"] and pushes_while_down >= 40
            await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
            await receiver.up()
            await work.round(50)
            assert work.ops == 200

            # Every push/pull/delete record of the log after the endpoint's start arrives,
            # and nothing else. The log is read again at each check, after the events
            # received so far: a record may still reach it after the workload ended (a
            # gateway flushes its pulls every 0.2 s, a requeued batch later), and an export
            # taken once, early, missed such a record whose event then arrived.
            await asyncio.to_thread(cluster.wait_ready, 60)
            wanted: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []

            async def log_and_receiver_agree() -> bool:
                nonlocal wanted, events
                events = receiver.events
                wanted = await _log_events(cluster, start)
                got, logged = {e["id"] for e in events}, {r["id"] for r in wanted}
                assert got <= logged, f"events not in the log: {sorted(got - logged)[:5]}"
                return logged <= got

            await eventually(
                log_and_receiver_agree, "every event of the log, only those", 180, interval=1.0
            )
    finally:
        if receiver.runner is not None:
            await receiver.down()

    assert receiver.content_types == {MEDIA_TYPE}
    # Those pushes were acknowledged while their events were still behind the cursor:
    # each was delivered only after the receiver came back.
    late = [
        e
        for e in events
        if e["action"] == "push" and not _blob(e) and e["cargohold"]["seq"] > cursor_while_down
    ]
    assert len(late) >= pushes_while_down
    # Per repository: events in log order, and the pushes' tags in the order acknowledged.
    for repo in REPOS:
        mine = [e for e in events if e["target"]["repository"] == repo]
        seqs = [e["cargohold"]["seq"] for e in mine]
        assert seqs == sorted(seqs), f"{repo}: events out of order"
        tags = [e["target"]["tag"] for e in mine if e["action"] == "push" and not _blob(e)]
        assert _squeeze(tags) == work.pushed[repo], repo  # a retried PUT may repeat one
        deletes = [e["target"].get("tag") for e in mine if e["action"] == "delete"]
        assert _squeeze(deletes) == work.deleted[repo]
        assert sum(e["action"] == "pull" for e in mine) >= 1
    pushes = [e for e in events if e["action"] == "push" and not _blob(e)]
    assert all(e["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
               for e in pushes)  # fmt: skip
    # Blob events travel the same path: every blob pushed by the setup, once per repository.
    blob_pushes = {
        (e["target"]["repository"], e["target"]["digest"], e["target"]["size"])
        for e in events
        if e["action"] == "push" and _blob(e)
    }
    assert blob_pushes == {
        (repo, digest, len(data))
        for repo, image in work.images.items()
        for _media, digest, data in image.blobs()
    }
    assert {e["action"] for e in events} == {"push", "pull", "delete"}
    assert len(events) == len(wanted)  # nothing but the log's events, once each after dedupe
    # No dead letters: the outage was shorter than max_age and retries are unlimited enough.
    assert (await admin_json(cluster, "webhooks", "dead-letters", "ci")) == []


def _squeeze(items: list[Any]) -> list[Any]:
    return [x for i, x in enumerate(items) if i == 0 or items[i - 1] != x]


def _blob(event: dict[str, Any]) -> bool:
    return bool(event["target"].get("mediaType") == "application/octet-stream")


async def _has(receiver: Receiver, pushes: int) -> bool:
    return sum(e["action"] == "push" and not _blob(e) for e in receiver.events) >= pushes


async def _log_events(cluster: LocalCluster, after: int) -> list[dict[str, Any]]:
    """The activity log's push/pull/delete records of the `hooks` namespace after `after`,
    with the id their events carry."""
    out = []
    for action in ("push", "pull", "delete"):
        text = await asyncio.to_thread(
            admin, cluster, "audit", "export", "--action", action, "--repo", "hooks/"
        )
        for line in text.splitlines():
            record = json.loads(line)
            if record["seq"] > after and record["result"] == "ok":
                record["id"] = event_id(record["hash"])
                out.append(record)
    return out
