"""gateway/replication/runner.py's leases on the real metadata state (FakeCluster): one
gateway at a time runs a rule, a rule's lease is handed over when its holder closes, a
new on_push rule starts at the activity log's head, and a run asked for that fails is
reported and retried (its error visible in the status); a full run copies every tag it
can and fails (to be retried) for those it cannot; a scheduled rule runs again after its
interval; a push event that fails for good becomes a dead letter after
`event_max_attempts` and the next events are copied, and `retry` copies it again."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fakecluster import FakeCluster
from fakeregistry import FakeRegistry, image, remote_side

from cargohold import audit
from cargohold.config import Config
from cargohold.errors import Conflict, DigestInvalid, Unavailable
from cargohold.metadata_api import AuditAppend
from gateway.mirror.upstream import UpstreamFailed
from gateway.replication.runner import (
    ReplicationRunner,
    RuleRunner,
    RunIncomplete,
    blames_event,
)


def config(url: str) -> Config:
    cfg = Config()
    cfg.replication.rules = [
        {"name": "out", "url": url, "repositories": ["team/*"]},
        {"name": "down", "direction": "pull", "url": url, "triggers": []},
    ]
    cfg.replication.backoff_seconds = 0.05
    cfg.replication.backoff_max_seconds = 0.1
    cfg.replication.poll_seconds = 0.02
    return cfg


def rules(fake: FakeCluster) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in fake.state.query("replication_list", {})["rules"]}


async def until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never met")


async def test_one_runner_per_rule_handover_and_failures_reported() -> None:
    fake = FakeCluster()
    fake.state.execute(AuditAppend([audit.event("login", time=1.0) for _ in range(3)]))
    # Nothing listens on this port: every copy fails (and no rule reaches this cluster's
    # content: the local side is not needed).
    cfg = config("http://127.0.0.1:9")
    one = ReplicationRunner(cfg, fake.meta_api(), None, fake.read_all, "gw1")  # type: ignore[arg-type]
    two = ReplicationRunner(cfg, fake.meta_api(), None, fake.read_all, "gw2")  # type: ignore[arg-type]
    try:
        await one.tick()
        await two.tick()
        assert one.holding("out") and one.holding("down")
        assert not two.holding("out") and not two.holding("down")
        await until(lambda: rules(fake).get("out", {}).get("cursor") == 3)  # from the head
        fake.state.apply("replication_run", {"rule": "down"})
        await until(lambda: (rules(fake)["down"]["status"] or {}).get("failures", 0) >= 2)
        status = rules(fake)["down"]["status"]
        assert status["state"] == "retrying" and "UpstreamFailed" in status["last_error"]["message"]
        assert status["runs_done"] == 0 and status["rule"]["url"] == "http://127.0.0.1:9"
        await one.close()  # hands both leases over at once
        await two.tick()
        assert two.holding("out") and two.holding("down")
        assert rules(fake)["out"]["lease"]["holder"] == "gw2"
    finally:
        await one.close()
        await two.close()


async def test_a_failing_tag_does_not_stop_the_others_and_the_run_is_retried() -> None:
    src = await FakeRegistry().start()
    dst = await FakeRegistry().start()
    fake = FakeCluster()
    cfg = config(src.url)
    cfg.replication.rules = [{"name": "copy", "direction": "pull", "url": src.url}]
    owner = ReplicationRunner(cfg, fake.meta_api(), None, fake.read_all, "gw1")  # type: ignore[arg-type]
    rule = RuleRunner(owner, owner.rules[0])
    try:
        fake.state.apply(
            "replication_lease", {"rule": "copy", "holder": "gw1", "now": time.time(), "ttl": 60}
        )
        _, good = image(src, "app", "good")
        bad_body, bad = image(src, "app", "bad")
        src.tags["app"] = {"v1": good, "v2": bad}
        layer = json.loads(bad_body)["layers"][0]["digest"]
        kept = src.blobs["app"][layer]
        src.blobs["app"][layer] = b"x" + kept[1:]
        rule.dst = remote_side(cfg, dst)  # registry to registry: no cluster involved
        rule.src = remote_side(cfg, src)
        await rule._load()
        with pytest.raises(RunIncomplete, match="1 tags failed"):
            await rule.full_run()
        assert dst.tags["app"] == {"v1": good}  # the other tag was copied
        failed = rule.status["failed_tags"]  # reported by the loop with the error
        assert [(f["tag"], f["error"][:14]) for f in failed] == [("v2", "UpstreamFailed")]
        src.blobs["app"][layer] = kept
        await rule.full_run()
        assert dst.tags["app"] == {"v1": good, "v2": bad}
        status = rules(fake)["copy"]["status"]
        assert status["failed_tags"] == [] and status["runs_done"] == 1
        # v1 is there (not looked into again); v2's config was copied by the failed run.
        last = status["last_run"]
        assert (last["manifests_present"], last["blobs_present"], last["blobs_copied"]) == (1, 1, 2)
    finally:
        await rule.remote.close()
        for side in (rule.src, rule.dst):
            await side.close()  # type: ignore[attr-defined]
        await src.close()
        await dst.close()


async def test_a_scheduled_rule_runs_again_after_its_interval() -> None:
    src = await FakeRegistry().start()
    dst = await FakeRegistry().start()
    fake = FakeCluster()
    cfg = config(src.url)
    cfg.replication.rules = [
        {"name": "sched", "direction": "pull", "url": src.url, "interval_seconds": 1}
    ]
    # "This cluster" is another registry here: the loop is the same, the sides are not.
    here = remote_side(cfg, dst)
    owner = ReplicationRunner(cfg, fake.meta_api(), here, fake.read_all, "gw1")  # type: ignore[arg-type]
    try:
        _, first = image(src, "app", "first")
        src.tags["app"] = {"v1": first}
        await owner.tick()
        await until(lambda: dst.tags.get("app") == {"v1": first})
        _, second = image(src, "app", "second")
        src.tags["app"]["v2"] = second
        await until(lambda: dst.tags.get("app", {}).get("v2") == second)
        await until(lambda: rules(fake)["sched"]["status"]["runs_done"] >= 2)
    finally:
        await owner.close()
        await here.close()
        await src.close()
        await dst.close()


async def step(rule: RuleRunner) -> None:
    """One round of the rule's loop: its work, or its failure's report and back-off."""
    try:
        await rule.step()
    except Exception as exc:
        await rule._failed(exc)


async def test_a_push_event_failing_for_good_is_dead_lettered_and_retried() -> None:
    src = await FakeRegistry().start()  # stands in for this cluster
    dst = await FakeRegistry().start()
    fake = FakeCluster()
    cfg = config(dst.url)
    cfg.replication.rules = [{"name": "out", "url": dst.url, "repositories": ["team/*"]}]
    cfg.replication.event_max_attempts = 2
    owner = ReplicationRunner(cfg, fake.meta_api(), None, fake.read_all, "gw1")  # type: ignore[arg-type]
    rule = RuleRunner(owner, owner.rules[0])
    try:
        fake.state.apply(
            "replication_lease", {"rule": "out", "holder": "gw1", "now": time.time(), "ttl": 60}
        )
        rule.src, rule.dst = remote_side(cfg, src), remote_side(cfg, dst)
        await rule._load()  # a new on_push rule: from the log's head
        bad_body, bad = image(src, "team/app", "bad")
        _, good = image(src, "team/app", "good")
        src.tags["team/app"] = {"v1": bad, "v2": good}
        layer = json.loads(bad_body)["layers"][0]["digest"]
        kept = src.blobs["team/app"][layer]
        src.blobs["team/app"][layer] = b"x" + kept[1:]  # the target refuses its digest
        pushes = [
            audit.event("push", time=2.0, repository="team/app", reference=tag)
            for tag in ("v1", "v2")
        ]
        head = fake.state.execute(AuditAppend(pushes))
        await step(rule)  # v1's first attempt fails: v2 waits behind it
        row = rules(fake)["out"]
        assert row["status"]["event_attempts"] == {"seq": head - 1, "attempts": 1}
        assert row["cursor"] == head - 2 and "team/app" not in dst.tags
        await step(rule)  # the second, the last: v1 given up on, v2 copied
        row = rules(fake)["out"]
        assert row["cursor"] == head and dst.tags["team/app"] == {"v2": good}
        assert row["dead_letters"] == 1 and row["retry"] == []
        ((seq, _, attempts, reason),) = row["dead_recent"]
        assert (seq, attempts) == (head - 1, 2) and reason.startswith("UpstreamFailed")
        assert "event_attempts" not in row["status"] and row["status"]["events_dead"] == 1

        src.blobs["team/app"][layer] = kept  # fixed at the source; the operator retries
        assert fake.state.apply("replication_retry", {"rule": "out", "seqs": None}) == {"queued": 1}
        await step(rule)
        row = rules(fake)["out"]
        assert dst.tags["team/app"] == {"v1": bad, "v2": good}
        assert (row["dead_letters"], row["retry"], row["cursor"]) == (0, [], head)
    finally:
        await rule.remote.close()
        for side in (rule.src, rule.dst):
            await side.close()  # type: ignore[attr-defined]
        await src.close()
        await dst.close()


def test_only_failures_that_blame_the_event_count_as_its_attempts() -> None:
    assert blames_event(UpstreamFailed("refused the manifest", 400))
    assert blames_event(DigestInvalid("mismatch"))
    assert blames_event(TimeoutError())  # run_timeout_seconds
    assert not blames_event(UpstreamFailed("connection refused"))  # unreachable
    assert not blames_event(UpstreamFailed("rate limited", 429))
    assert not blames_event(UpstreamFailed("maintenance", 503))
    assert not blames_event(Unavailable())  # this cluster
    assert not blames_event(Conflict("the lease was lost"))
