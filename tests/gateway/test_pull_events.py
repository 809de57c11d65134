"""The gateway's pull batcher (gateway/pull_events.py): a manifest GET queues one event and
answers without waiting for the cluster; batches become one `pull_record` command each; a
full queue drops and counts; a failed batch is put back."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from fakecluster import FakeCluster
from test_manifests import OCI_MANIFEST, encode, image, link_all, put

from cargohold.config import Config
from cargohold.errors import Unavailable
from cargohold.metadata_api import PullEvent
from gateway import pull_events
from gateway.app import build_app
from gateway.context import GatewayContext
from gateway.pull_events import PULLS, PullRecorder
from tests.cancel_fakes import StuckCall, assert_one_cancel_ends

REPO = "library/app"


class _Meta:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[tuple[PullEvent, ...]] = []
        self.fail = fail
        self.sent = asyncio.Event()

    async def pull_record(self, pulls: tuple[PullEvent, ...]) -> int:
        if self.fail:
            self.fail -= 1
            raise Unavailable("no leader")
        self.batches.append(pulls)
        self.sent.set()
        return len(pulls)


def _recorder(meta: _Meta, batch: int = 3, queue: int = 5) -> PullRecorder:
    return PullRecorder(meta, 3600.0, batch, queue)  # type: ignore[arg-type]


def _record(rec: PullRecorder, n: int) -> None:
    for i in range(n):
        rec.record(REPO, "sha256:" + f"{i:064x}", None, None, "127.0.0.1", "ua")


async def test_flush_sends_one_command_per_batch() -> None:
    meta = _Meta()
    rec = _recorder(meta)
    _record(rec, 5)
    assert await rec.flush() == 5
    assert [len(b) for b in meta.batches] == [3, 2]
    assert len(rec) == 0


async def test_a_full_batch_flush_leaves_the_rest_for_the_interval() -> None:
    meta = _Meta()
    rec = _recorder(meta, batch=2, queue=10)
    _record(rec, 5)
    assert await rec.flush(full_only=True) == 4
    assert [len(b) for b in meta.batches] == [2, 2] and len(rec) == 1


async def test_a_full_queue_drops_and_counts() -> None:
    meta = _Meta()
    rec = _recorder(meta)
    before = pull_events.DROPPED._value.get()
    _record(rec, 8)
    assert len(rec) == 5
    assert pull_events.DROPPED._value.get() - before == 3


async def test_a_failed_batch_is_put_back_and_sent_next_time() -> None:
    meta = _Meta(fail=1)
    rec = _recorder(meta)
    _record(rec, 4)
    assert await rec.flush() == 0
    assert len(rec) == 4
    assert await rec.flush() == 4
    assert [e.digest[-1] for b in meta.batches for e in b] == ["0", "1", "2", "3"]


async def test_a_full_batch_wakes_the_flusher_before_the_interval() -> None:
    meta = _Meta()
    rec = _recorder(meta, batch=2, queue=10)
    task = asyncio.get_running_loop().create_task(rec.run())
    try:
        _record(rec, 2)
        async with asyncio.timeout(30):  # hang guard; the interval is an hour
            await meta.sent.wait()
    finally:
        task.cancel()
    assert len(meta.batches[0]) == 2


async def test_manifest_get_is_recorded_head_is_not() -> None:
    cfg = Config()
    cfg.lifecycle.pull_flush_seconds = 3600.0
    fake = FakeCluster()
    app = build_app(GatewayContext(cfg=cfg, cluster=fake))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as gw:
        doc = image(OCI_MANIFEST)
        link_all(fake, doc)
        resp = await put(gw, "v1", encode(doc))
        assert resp.status == 201
        digest = resp.headers["Docker-Content-Digest"]
        assert (await gw.head(f"/v2/{REPO}/manifests/v1")).status == 200
        assert (
            await gw.get(f"/v2/{REPO}/manifests/v1", headers={"User-Agent": "t/1"})
        ).status == 200
        assert (await gw.get(f"/v2/{REPO}/manifests/{digest}")).status == 200
        assert (await gw.get(f"/v2/{REPO}/manifests/nope")).status == 404
        rec = app[PULLS]
        assert len(rec) == 2
        assert await rec.flush() == 2
        assert fake.ops("command").count("pull_record") == 1
        assert set(fake.state.pulled[REPO]) == {digest}
        [args] = [a for kind, op, a in fake.calls if op == "pull_record"]
        rows: list[Any] = args["pulls"]
        assert [(r[0], r[1], r[2], r[6]) for r in rows] == [
            (REPO, digest, "v1", "t/1"),
            (REPO, digest, None, rows[1][6]),
        ]


async def test_pull_recording_off() -> None:
    cfg = Config()
    cfg.lifecycle.pull_flush_seconds = 0
    app = build_app(GatewayContext(cfg=cfg, cluster=FakeCluster()))  # type: ignore[arg-type]
    assert app.get(PULLS) is None


async def test_a_stop_that_lands_in_a_flush_ends_the_flush_loop() -> None:
    meta = _Meta()
    stuck = StuckCall()
    meta.pull_record = stuck  # type: ignore[method-assign]
    rec = _recorder(meta, batch=1)
    task = asyncio.create_task(rec.run())
    _record(rec, 1)  # a full batch: the loop flushes at once
    await assert_one_cancel_ends(task, stuck)
