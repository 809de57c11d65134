"""The retention role (node/retention.py) over a real metadata state: a real pass deletes
through `tag_delete` / `manifest_delete`, a dry run reports the same and deletes nothing,
a push that races the plan wins (Conflict, counted), protected namespaces and followers
do nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from cargohold import metadata_api as api
from cargohold.config import Config
from node.metadata.state import MetadataState
from node.retention import RetentionRole

REPO = "demo/app"


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class FakeRaft:
    """The StateSource of node/gc.py over one in-process state."""

    def __init__(self, state: MetadataState, leader: bool = True) -> None:
        self.state = state
        self.leader = leader
        self.ops: list[str] = []
        self.queries: list[str] = []
        self.after_snapshot: Callable[[], None] | None = None

    async def barrier(self) -> None:
        return None

    def state_snapshot(self) -> tuple[dict[str, Any], int]:
        snap = self.state.snapshot()
        if self.after_snapshot is not None:
            self.after_snapshot()
        return snap, 1

    def is_leader(self) -> bool:
        return self.leader

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.ops.append(op)
        return self.state.apply(op, json.loads(json.dumps(args)))

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        self.queries.append(op)
        return self.state.query(op, args)


def put(st: MetadataState, name: str, tag: str | None, now: float, repo: str = REPO) -> str:
    st.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": dg(name),
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "recipe": {"size": 3, "chunks": [[hashlib.sha256(name.encode()).hexdigest(), 3]]},
            "tag": tag,
            "now": now,
        },
    )
    return dg(name)


def role(raft: FakeRaft, **life: Any) -> RetentionRole:
    cfg = Config()
    cfg.lifecycle.retention = ["demo/*: keep_tags=v* untagged_after=1s", "vault/*: keep_tags=v*"]
    for key, value in life.items():
        setattr(cfg.lifecycle, key, value)
    return RetentionRole(cfg, raft)


def prepared() -> MetadataState:
    st = MetadataState()
    put(st, "keep", "v1", 1.0)
    put(st, "drop", "old", 2.0)
    put(st, "untagged", None, 3.0)
    put(st, "vaulted", "old", 4.0, repo="vault/x")
    return st


async def test_dry_run_reports_and_a_real_pass_deletes() -> None:
    st = prepared()
    raft = FakeRaft(st)
    r = role(raft, delete_protected=["vault"])
    await r.run_pass(dry_run=True)
    assert raft.ops == [] and set(st.tags[REPO]) == {"v1", "old"}
    assert "access_fence" not in raft.queries
    assert (r.stats.tags_deleted, r.stats.manifests_deleted) == (1, 2)
    dry_report = r._report
    assert dry_report["protected"] == [
        {"repo": "vault/x", "reason": "delete-protected namespace vault"}
    ]
    await r.run_pass()
    # The deletions, then one summary command for the pass (node/audit_events.py).
    assert raft.ops == ["manifest_delete", "manifest_delete", "audit_append"]
    # The pass reports its deletions once no gateway's cache can serve them (one fence
    # for the repository).
    assert raft.queries.count("access_fence") == 1
    assert st.tags[REPO] == {"v1": dg("keep")}
    assert set(st.manifests[REPO]) == {dg("keep")}
    assert set(st.manifests["vault/x"]) == {dg("vaulted")}
    assert r._report["repositories"] == dry_report["repositories"]
    assert r.stats.tags_deleted_total == 1 and r.stats.manifests_deleted_total == 2
    # The activity log: each manifest deleted, then the pass's count for the repository.
    events = [json.loads(line)[2:] for line in st.execute(api.AuditTail(0)).lines]
    rows = [(e[1], e[2], e[5], e[6], e[7], e[8], e[10]) for e in events]
    assert rows[-1] == (
        "retention",
        "system",
        "retention",
        REPO,
        "pass",
        "",
        "deleted 2 manifests, 1 tags (policy demo/*: keep_tags=v* untagged_after=1s)",
    )
    assert [r[2] for r in rows] == ["delete", "delete", "retention"]
    assert sorted(r[5] for r in rows[:2]) == sorted([dg("drop"), dg("untagged")])
    assert all(r[0] == "retention" and r[1] == "system" for r in rows)


async def test_a_push_racing_the_plan_wins() -> None:
    st = prepared()
    raft = FakeRaft(st)
    # Between the plan's snapshot and the deletes, "old" moves to a new manifest and the
    # untagged one gets a tag.
    raft.after_snapshot = lambda: (put(st, "new", "old", 50.0), put(st, "untagged", "t2", 50.0))
    r = role(raft)
    await r.run_pass()
    assert r.stats.skipped_changed == 2
    assert st.tags[REPO] == {"v1": dg("keep"), "old": dg("new"), "t2": dg("untagged")}
    # The old manifest of "old" lost its tag meanwhile: its guard (tags ["old"]) refuses too.
    assert dg("drop") in st.manifests[REPO]
    assert {x["reference"] for x in r._report["refused"]} == {dg("drop"), dg("untagged")}


async def test_a_follower_and_an_empty_config_do_nothing() -> None:
    st = prepared()
    follower = FakeRaft(st, leader=False)
    r = role(follower)
    await r.run_pass()
    assert follower.ops == [] and r._report["skipped"] == "not the Raft leader"
    leader = FakeRaft(st)
    r = role(leader, retention=[])
    await r.run_pass()
    assert leader.ops == [] and r._report["skipped"] == "no policy"


async def test_trigger_waits_and_returns_the_report() -> None:
    import asyncio

    st = prepared()
    r = role(FakeRaft(st))
    task = asyncio.get_running_loop().create_task(r.run())
    try:
        result = await asyncio.wait_for(r.trigger(wait=True, dry_run=True), 30)
    finally:
        task.cancel()
    assert result["dry_run"] is True and result["report"]["repositories"][0]["repo"] == REPO
