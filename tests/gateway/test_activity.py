"""The gateway's activity log (gateway/activity.py) over the FakeCluster: pushes and
deletes carry their actor, pulls, logins and denials are batched, the sealer seals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from authkit import basic, start_gateway, token_config
from fakecluster import FakeCluster
from test_manifests import OCI_MANIFEST, encode, image, link_all, sha

from cargohold import audit
from cargohold.config import Config
from cargohold.metadata_api import AuditHeadInfo
from gateway.activity import ACTIVITY, AuditSealer
from gateway.pull_events import PULLS
from tests.cancel_fakes import StuckCall, assert_one_cancel_ends

USERS = {"alice": "alice-secret"}
UA = {"User-Agent": "docker/27.0 go/1.22"}


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[tuple[TestClient, FakeCluster]]:
    cfg = Config()
    cfg.auth = token_config(tmp_path, USERS)
    cfg.audit.flush_seconds = 3600  # flushed by the test
    cfg.lifecycle.pull_flush_seconds = 3600
    fake = FakeCluster()
    client = await start_gateway(cfg, fake)
    try:
        yield client, fake
    finally:
        await client.close()


async def _token(gw: TestClient, scope: str, password: str = USERS["alice"]) -> str | None:
    resp = await gw.get(
        "/auth/token",
        params={"service": "cargohold", "scope": scope},
        headers={"Authorization": basic("alice", password), **UA},
    )
    return str((await resp.json())["token"]) if resp.status == 200 else None


def _records(fake: FakeCluster) -> list[dict[str, Any]]:
    return [audit.decode(line) for line in fake.state.audit.tail]


async def test_push_pull_delete_login_and_denied_are_recorded(
    audited: tuple[TestClient, FakeCluster],
) -> None:
    gw, fake = audited
    doc = image(OCI_MANIFEST)
    link_all(fake, doc, "team/app")
    body = encode(doc)
    digest = sha(body)
    assert await _token(gw, "repository:team/app:pull", "wrong") is None
    token = await _token(gw, "repository:team/app:pull,push")
    auth = {"Authorization": f"Bearer {token}", **UA}
    resp = await gw.put(
        "/v2/team/app/manifests/v1",
        data=body,
        headers={**auth, "Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201
    assert (await gw.get("/v2/team/app/manifests/v1", headers=auth)).status == 200
    assert (await gw.head(f"/v2/team/app/manifests/{digest}", headers=auth)).status == 200
    # The token does not cover delete: denied (401 insufficient_scope).
    assert (await gw.delete("/v2/team/app/manifests/v1", headers=auth)).status == 401
    # The credential-less probe every client starts with is not recorded.
    assert (await gw.get("/v2/")).status == 401
    # Pushes travel with their command: already in the state before any flush.
    assert [r["action"] for r in _records(fake)] == ["push"]
    # Pulls come through the pull batcher (one pull_record), the rest through ours.
    assert await gw.server.app[PULLS].flush() == 1
    sent = await gw.server.app[ACTIVITY].flush()
    records = _records(fake)
    got = [(r["action"], r["result"], r["actor"], r["reference"]) for r in records]
    assert sent == 3
    assert got == [
        ("push", "ok", "alice", "v1"),
        ("pull", "ok", "alice", "v1"),
        ("login", "failed", "alice", ""),
        ("login", "ok", "alice", ""),
        ("denied", "401", "alice", "v1"),
    ]
    by_action = {r["action"]: r for r in records}
    assert by_action["push"]["digest"] == digest
    assert by_action["pull"]["digest"] == digest
    assert by_action["pull"]["repository"] == "team/app"
    assert by_action["denied"]["detail"] == "DELETE UNAUTHORIZED"
    assert {r["client"] for r in records} == {"127.0.0.1"}
    assert {r["user_agent"] for r in records} == {UA["User-Agent"]}
    assert {r["actor_kind"] for r in records} == {"user"}


async def test_delete_records_its_actor_and_the_sealer_seals(
    audited: tuple[TestClient, FakeCluster],
) -> None:
    gw, fake = audited
    doc = image(OCI_MANIFEST)
    link_all(fake, doc, "team/app")
    body = encode(doc)
    token = await _token(gw, "repository:team/app:pull,push,delete")
    auth = {"Authorization": f"Bearer {token}", **UA}
    for tag in ("v1", "v2", "v3"):
        resp = await gw.put(
            f"/v2/team/app/manifests/{tag}",
            data=body,
            headers={**auth, "Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 201
    assert (await gw.delete("/v2/team/app/manifests/v2", headers=auth)).status == 202
    assert (await gw.delete(f"/v2/team/app/manifests/{sha(body)}", headers=auth)).status == 202
    await gw.server.app[ACTIVITY].flush()
    records = _records(fake)
    deletes = [(r["reference"], r["detail"]) for r in records if r["action"] == "delete"]
    assert deletes == [("v2", "tag"), (sha(body), "manifest; tags v1,v3")]
    cfg = Config().audit
    cfg.segment_records = 3
    sealer = AuditSealer(cfg, gw.server.app[ACTIVITY].meta, fake.store_bytes)
    total = fake.state.audit.head_seq
    assert await sealer.run_once() == total // 3
    head = AuditHeadInfo.from_json(fake.state.query("audit_head", {}))
    assert len(head.segments) == total // 3
    assert len(fake.state.audit.tail) == total % 3

    stored: dict[str, bytes] = {}
    for seg in head.segments:
        stored[seg.digest] = await fake.read_all(seg.recipe)
    report = audit.verify(
        head.base_seq,
        head.base_hash,
        head.segments,
        lambda seg: stored[seg.digest],
        list(fake.state.audit.tail),
        head.head_seq,
        head.head_hash,
    )
    assert report.ok, report.problems
    assert report.checked == total


async def test_recorder_bounds_what_waits_and_the_log_can_be_off(tmp_path: Path) -> None:
    cfg = Config()
    cfg.audit.enabled = False
    fake = FakeCluster()
    client = await start_gateway(cfg, fake)
    try:
        doc = image(OCI_MANIFEST)
        link_all(fake, doc)
        resp = await client.put(
            "/v2/library/app/manifests/v1",
            data=encode(doc),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert resp.status == 201
        assert (
            await client.get("/v2/library/app/manifests/v1", headers={"Host": "x"})
        ).status == 200
        assert (await client.get("/v2/nope/manifests/v1")).status == 404
        assert client.server.app[ACTIVITY].pending == 0
        assert fake.state.audit.head_seq == 0
    finally:
        await client.close()
    on = Config().audit
    on.max_pending = 2
    from gateway.activity import ActivityRecorder

    rec = ActivityRecorder(on, None)  # type: ignore[arg-type]
    for i in range(5):
        rec.record(audit.event("pull", time=float(i)))
    assert rec.pending == 2


async def test_a_stop_that_lands_in_a_flush_ends_the_recorder_and_keeps_the_batch() -> None:
    """grpc.aio reports a cancellation inside a call as an error; the flusher takes such
    errors for a failed flush (kept for later), but not its own stop."""
    from gateway.activity import ActivityRecorder

    cfg = Config().audit
    cfg.max_batch = 1
    stuck = StuckCall()
    meta = type("Meta", (), {"audit_append": staticmethod(stuck)})()
    rec = ActivityRecorder(cfg, meta)
    rec.start()
    rec.record(audit.event("pull", time=1.0))  # a full batch: the flusher sends at once
    assert rec._task is not None
    await assert_one_cancel_ends(rec._task, stuck)
    assert rec.pending == 1  # still there for close()'s last flush
