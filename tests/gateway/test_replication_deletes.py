"""gateway/replication/runner.py's delete events (a push rule's `replicate_deletes`), on
the real metadata state (FakeCluster) with two in-memory registries (fakeregistry.py):
one stands in for this cluster, the other is the target.

- What happened here happens there: a tag deleted by name is deleted by name (the
  manifest and its other tags stay), a manifest deleted by digest is deleted by digest
  (its tags with it); a 404 at the target is done; a tag the rule does not copy, a tag or
  manifest here again by now, a blob's delete send nothing.
- Without `replicate_deletes` the delete records are passed over.
- A restore from the trash copies the tags it brought back.
- A DELETE asks a token for the `delete` action.
- A target refusing deletes (405) fails the event like a refused push: after
  `event_max_attempts` it is a dead letter naming the cause, the next events go on, and
  `retry` deletes it once the target allows deletes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakecluster import FakeCluster
from fakeregistry import FakeRegistry, image, remote_side

from cargohold import audit
from cargohold.audit import TAG_DELETED, manifest_deleted_detail
from cargohold.config import Config
from cargohold.metadata_api import AuditAppend
from gateway.replication.runner import ReplicationRunner, RuleRunner, blames_event
from gateway.replication.sides import DeleteRefused

REPO = "team/app"


def rules(fake: FakeCluster) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in fake.state.query("replication_list", {})["rules"]}


def tag_deleted(tag: str, digest: str, repo: str = REPO) -> list[Any]:
    return audit.event(
        "delete", time=2.0, repository=repo, reference=tag, digest=digest, detail=TAG_DELETED
    )


def manifest_deleted(digest: str, tags: list[str]) -> list[Any]:
    detail = manifest_deleted_detail(tags)
    return audit.event(
        "delete", time=2.0, repository=REPO, reference=digest, digest=digest, detail=detail
    )


class Setup:
    """A rule `out` (on_push, `team/*`, tags `v*` and `again`) from `src` to `dst`."""

    def __init__(self, replicate_deletes: bool = True, max_attempts: int = 10) -> None:
        self.fake = FakeCluster()
        self.cfg = Config()
        self.cfg.replication.backoff_seconds = 0.02
        self.cfg.replication.backoff_max_seconds = 0.05
        self.cfg.replication.event_max_attempts = max_attempts
        self.deletes = replicate_deletes

    async def __aenter__(self) -> Setup:
        self.src = await FakeRegistry().start()  # stands in for this cluster
        self.dst = await FakeRegistry().start()
        self.cfg.replication.rules = [
            {
                "name": "out",
                "url": self.dst.url,
                "repositories": ["team/*"],
                "tags": ["v*", "again"],
                "replicate_deletes": self.deletes,
            }
        ]
        # "This cluster" is another registry here: the loop is the same, the sides are not.
        self.here = remote_side(self.cfg, self.src)
        meta, read_all = self.fake.meta_api(), self.fake.read_all
        self.owner = ReplicationRunner(self.cfg, meta, self.here, read_all, "gw1")  # type: ignore[arg-type]
        self.rule = RuleRunner(self.owner, self.owner.rules[0])
        lease = {"rule": "out", "holder": "gw1", "now": time.time(), "ttl": 60}
        self.fake.state.apply("replication_lease", lease)
        await self.rule._load()  # a new on_push rule: from the log's head
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.owner.close()
        await self.rule.remote.close()
        await self.here.close()
        await self.src.close()
        await self.dst.close()

    def log(self, *records: list[Any]) -> int:
        """Append records to the activity log; the head's seq."""
        head: int = self.fake.state.execute(AuditAppend(list(records)))
        return head

    async def step(self) -> None:
        """One round of the rule's loop: its work, or its failure's report and back-off."""
        try:
            await self.rule.step()
        except Exception as exc:
            await self.rule._failed(exc)

    def row(self) -> dict[str, Any]:
        return rules(self.fake)["out"]


def same_image(s: Setup, seed: str) -> str:
    """One image stored at both ends (untagged); its digest."""
    _, digest = image(s.src, REPO, seed)
    _, there = image(s.dst, REPO, seed)
    assert there == digest
    return digest


async def test_deletes_happen_at_the_target_as_they_happened_here() -> None:
    async with Setup() as s:
        x = same_image(s, "x")
        s.dst.tags[REPO] = {"v1": x, "v2": x, "again": x, "dev": x}
        s.src.tags[REPO] = {"v2": x, "again": x, "dev": x}  # v1 deleted, `again` re-tagged
        head = s.log(
            tag_deleted("v1", x),
            tag_deleted("again", x),  # here again by now: its push event copies it
            tag_deleted("dev", x),  # a tag the rule does not copy
            tag_deleted("v9", x),  # never reached the target: 404, done
            audit.event("delete", time=2.0, repository=REPO, reference=x, digest=x),  # a blob
            tag_deleted("v1", x, repo="other/app"),  # a repository the rule does not copy
        )
        await s.step()
        row = s.row()
        assert row["cursor"] == head and row["dead_letters"] == 0
        # v1 by name: the manifest stays, and the tags on it the source still has.
        assert s.dst.tags[REPO] == {"v2": x, "again": x, "dev": x}
        assert x in s.dst.manifests[REPO]
        assert s.dst.calls["DELETE manifests"] == 2  # v1 and v9
        assert row["status"]["deletes_sent"] == 2
        assert row["status"]["last_event"]["action"] == "delete"

        # The manifest by digest (here its tags went with it): gone there, with its tags.
        del s.src.manifests[REPO][x]
        s.src.tags[REPO] = {}
        head = s.log(manifest_deleted(x, ["again", "dev", "v2"]))
        await s.step()
        assert s.row()["cursor"] == head
        assert x not in s.dst.manifests[REPO] and s.dst.tags[REPO] == {}

        # A manifest deleted and pushed again since: nothing is deleted.
        y = same_image(s, "y")
        head = s.log(manifest_deleted(y, []))
        await s.step()
        assert s.row()["cursor"] == head and y in s.dst.manifests[REPO]
        assert s.dst.calls["DELETE manifests"] == 3


async def test_without_replicate_deletes_the_delete_records_are_passed_over() -> None:
    async with Setup(replicate_deletes=False) as s:
        x = same_image(s, "x")
        s.dst.tags[REPO] = {"v1": x}
        head = s.log(tag_deleted("v1", x), manifest_deleted(x, []))
        del s.src.manifests[REPO][x]
        await s.step()
        assert s.row()["cursor"] == head and s.dst.tags[REPO] == {"v1": x}
        assert s.dst.calls["DELETE manifests"] == 0 and x in s.dst.manifests[REPO]


async def test_a_target_refusing_deletes_dead_letters_the_event_and_retry_deletes_it() -> None:
    async with Setup(max_attempts=2) as s:
        x = same_image(s, "x")
        s.dst.tags[REPO] = {"v1": x}
        del s.src.manifests[REPO][x]
        _, later = image(s.src, REPO, "later")
        s.src.tags[REPO] = {"v3": later}
        s.dst.deletes = False  # as Distribution without storage.delete.enabled: 405
        head = s.log(
            manifest_deleted(x, ["v1"]),
            audit.event("push", time=2.0, repository=REPO, reference="v3"),
        )
        await s.step()  # the first attempt: the push behind it waits
        row = s.row()
        assert row["status"]["event_attempts"] == {"seq": head - 1, "attempts": 1}
        assert row["cursor"] == head - 2 and "v3" not in s.dst.tags[REPO]
        await s.step()  # the last attempt: given up on, the push copied
        row = s.row()
        assert row["cursor"] == head and s.dst.tags[REPO] == {"v1": x, "v3": later}
        ((seq, _, attempts, reason),) = row["dead_recent"]
        assert (seq, attempts, row["dead_letters"]) == (head - 1, 2, 1)
        assert reason.startswith("DeleteRefused") and "405" in reason
        assert "storage.delete.enabled" in reason
        assert row["status"]["events_dead"] == 1

        s.dst.deletes = True  # the target fixed; the operator retries
        assert s.fake.state.apply("replication_retry", {"rule": "out", "seqs": None}) == {
            "queued": 1
        }
        await s.step()
        row = s.row()
        assert (row["dead_letters"], row["retry"], row["cursor"]) == (0, [], head)
        assert x not in s.dst.manifests[REPO] and s.dst.tags[REPO] == {"v3": later}


async def test_a_tag_delete_a_target_cannot_do_by_name_is_refused_for_good() -> None:
    async with Setup() as s:
        x = same_image(s, "x")
        s.dst.tags[REPO] = {"v1": x}
        s.dst.tag_deletes = False  # Distribution 2.x: 400 DIGEST_INVALID for any tag
        with pytest.raises(DeleteRefused, match="digests only") as refused:
            await s.rule.remote.delete_manifest(REPO, "v1")
        assert refused.value.status == 400 and blames_event(refused.value)
        assert s.dst.tags[REPO] == {"v1": x}  # never the manifest instead
        assert await s.rule.remote.delete_manifest(REPO, "sha256:" + "0" * 64) is False
        s.dst.deletes = False
        with pytest.raises(DeleteRefused) as refused:
            await s.rule.remote.delete_manifest(REPO, x)
        assert refused.value.status == 405 and blames_event(refused.value)


async def test_the_loop_runs_delete_events_like_push_events() -> None:
    async with Setup() as s:
        x = same_image(s, "x")
        s.dst.tags[REPO] = {"v1": x, "v2": x}
        s.src.tags[REPO] = {"v2": x}
        head = s.log(tag_deleted("v1", x))
        await s.owner.tick()  # renews the lease, starts the rule's task
        for _ in range(500):
            if s.row()["cursor"] == head:
                break
            await asyncio.sleep(0.02)
        assert s.row()["cursor"] == head and s.dst.tags[REPO] == {"v2": x}


async def test_a_delete_asks_the_token_service_for_the_delete_action() -> None:
    dst = await FakeRegistry(token=True).start()
    side = remote_side(Config(), dst)
    try:
        _, x = image(dst, REPO, "x")
        dst.tags[REPO] = {"v1": x}
        assert await side.delete_manifest(REPO, "v1") is True
        assert dst.token_scopes == [f"repository:{REPO}:delete"] and dst.tags[REPO] == {}
        assert await side.delete_manifest(REPO, "v1") is False  # 404: nothing there
    finally:
        await side.close()
        await dst.close()


async def test_a_restore_from_the_trash_copies_its_tags_back() -> None:
    async with Setup() as s:
        x = same_image(s, "x")
        s.src.tags[REPO] = {"v1": x, "dev": x}  # restored here (with a tag not copied)
        s.dst.tags[REPO] = {}  # the replicated delete took them there
        detail = audit.restore_detail(["dev", "v1"], forced=True)
        assert audit.restored_tags({"action": "restore", "detail": detail}) == ["dev", "v1"]
        head = s.log(
            audit.event("restore", time=2.0, repository=REPO, reference=x, digest=x, detail=detail)
        )
        await s.step()
        assert s.row()["cursor"] == head and s.dst.tags[REPO] == {"v1": x}
