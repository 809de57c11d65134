"""The metadata contract (cargohold/metadata_api.py): docs/metadata.md lists exactly its ops
with their JSON keys, and every request survives the trip to JSON and back."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cargohold import metadata_api as api
from cargohold.errors import BlobUploadUnknown, PaginationInvalid, RequestInvalid
from cargohold.search import PullAccess, SearchSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "metadata.md"
D = "sha256:" + "ab" * 32
RECIPE: api.Recipe = {"size": 3, "chunks": [["cd" * 32, 3]]}


def _tables() -> dict[str, dict[str, str]]:
    """{"Commands"|"Queries": {op: args cell}} from the doc's two tables."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].split()[0]
            current = tables.setdefault(title, {}) if title in ("Commands", "Queries") else None
        elif current is not None and (row := re.match(r"\| `(\w+)` \| `([^`]*)` \|", line)):
            current[row.group(1)] = row.group(2)
    return tables


def _doc_keys(cell: str) -> list[str]:
    """The top-level keys of an args cell such as `{"repo": name, "n": int or null}`."""
    return re.findall(r'[{,]\s*"(\w+)"\s*:', cell)


def test_doc_lists_exactly_the_contracts_ops() -> None:
    tables = _tables()
    assert set(tables["Commands"]) == api.COMMANDS
    assert set(tables["Queries"]) == api.QUERIES


@pytest.mark.parametrize("op", sorted(api.COMMANDS | api.QUERIES))
def test_doc_args_are_the_requests_json_keys(op: str) -> None:
    cls = api.COMMAND_TYPES.get(op) or api.QUERY_TYPES[op]
    tables = _tables()
    cell = tables["Commands"].get(op) or tables["Queries"][op]
    assert _doc_keys(cell) == [key for _, key in api.wire_keys(cls)]


EXAMPLES: list[api.Request[Any]] = [
    api.Barrier(),
    api.UploadAppend("u1", "lib/app", 0, [["cd" * 32, 3]], "r1", 1.5),
    api.UploadCancel("u1", 2.0),
    api.BlobCommit("lib/app", D, RECIPE, None, 3.0),
    api.BlobMount("lib/app", D, "lib/other"),
    api.BlobUnlink("lib/app", D),
    api.ManifestPut(
        "lib/app", D, "application/x", RECIPE, (D,), (), D, "a/b", {"k": "v"}, "v1", 4.0
    ),
    api.TagDelete("lib/app", "v1"),
    api.ManifestDelete("lib/app", D),
    api.TagDelete("lib/app", "v1", ("lib/*:v*",), now=5.0, trash=True),
    api.ManifestDelete("lib/app", D, (), now=5.5, trash=True),
    api.MemberJoin("n1", "h:1", "h:2"),
    api.MemberSetState("n1", "draining"),
    api.ExpireUploads(10.0, 5.0),
    api.GcPrune((D,)),
    api.PullRecord(
        (
            api.PullEvent("lib/app", D, "v1", 5.0, "alice", "127.0.0.1", "skopeo"),
            api.PullEvent("lib/app", D, None, 6.0, None, None, None),
        )
    ),
    api.TrashRestore("lib/app", D, None, False, (), 6.0),
    api.TrashRestore("lib/app", None, "v1", True, ("lib/*:v*",), None),
    api.TrashPurge(7.0, 3600.0),
    api.TrashPurge(7.0, 0.0, "lib/app"),
    api.UserPut("alice", "$2b$04$" + "a" * 53, False, True),
    api.UserPut("alice", None, True, None),
    api.NamespacePut("team", "public"),
    api.GrantSet("team", "alice", "developer"),
    api.GrantSet("team", "alice", None),
    api.GroupPut("ops"),
    api.GroupDelete("ops"),
    api.GroupMemberSet("ops", "alice", True),
    api.GroupGrantSet("team", "ops", "maintainer"),
    api.GroupGrantSet("team", "ops", None),
    api.RobotPut(
        "ci",
        "$2b$04$" + "a" * 53,
        5.0,
        (("lib", ("pull",)), ("team", ("pull", "push"))),
        "CI pushes",
        1.0,
    ),
    api.RobotPut("ci", "$2b$04$" + "a" * 53, None, (("team", ("pull",)),), "", 1.0),
    api.RobotDelete("ci"),
    api.QuotaSet("team", 1 << 30),
    api.QuotaSet("team", None),
    api.TrustKeyPut(
        "team", "release", "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
    ),
    api.TrustKeyPut("team", "release", None),
    api.PullPolicyPut("team", True),
    api.VulnPolicyPut("team", "high", ("CVE-2024-1",), "deny"),
    api.VulndbPut(D, RECIPE, 3.0, "Debian.zip", {"advisories": 1}),
    api.TagGet("lib/app", "v1"),
    api.ManifestGet("lib/app", D),
    api.BlobGet("lib/app", D),
    api.BlobRecipe(D),
    api.UploadGet("u1"),
    api.TagsList("lib/app", 10, "a"),
    api.Catalog(None, None),
    api.Referrers("lib/app", D, None),
    api.Members(),
    api.Status(),
    api.AccessList(),
    api.AccessRevision(),
    api.UnlinkRevision(),
    api.AccessFence(),
    api.Search(SearchSpec(q="app", labels=("a=b",), platform="linux/amd64", n=5)),
    api.Search(SearchSpec(kind="repository", access=PullAccess(False, (("team", True),)))),
    api.ManifestPut(
        "lib/app", D, "application/x", RECIPE, tag="v3", info={"platforms": ["linux/amd64"]}
    ),
    api.ManifestPut(
        "lib/app",
        D,
        "application/x",
        RECIPE,
        tag="v2",
        audit={
            "time": 5.0,
            "actor": "bob",
            "actor_kind": "user",
            "client": "::1",
            "user_agent": "docker/27",
        },
    ),
    api.GrantSet(
        "team",
        "alice",
        "reader",
        {"time": 6.0, "actor": "cli:root", "actor_kind": "admin", "client": "", "user_agent": ""},
    ),
    api.AuditAppend(
        [[1.5, "bob", "user", "10.0.0.1", "docker/27", "pull", "a/b", "v1", D, "ok", ""]]
    ),
    api.AuditSeal(1, 10, D, RECIPE, 7.0),
    api.AuditExpire(8.0),
    api.AuditHead(),
    api.AuditHead(1),
    api.AuditTail(0, 100),
    api.QuotaList(),
    api.TrashList(None),
    api.TrashList("lib/app"),
    api.TrustList(),
    api.WebhookPut(
        {
            "name": "ci",
            "url": "http://ci.test/hook",
            "namespace": "",
            "actions": ["push"],
            "repositories": [],
            "headers": {},
            "timeout": 5.0,
        }
    ),
    api.WebhookRemove("ci"),
    api.WebhookLease("gw1", 1.0, 15.0),
    api.WebhookAdvance("ci", "gw1", 3, 5, [[4, 2.0, 3, "HTTP 500"]], [2], 100),
    api.WebhookAdvance("cfg", "gw1", None, 5, [], [], 100),
    api.WebhookRetry("ci", [4]),
    api.WebhookRetry("ci"),
    api.WebhookList(),
    api.WebhookDeadLetters("ci"),
    api.ReplicationLease("to-dr", "gw1", 1.0, 15.0),
    api.ReplicationLease("to-dr", "gw1", 2.0, 1.0, release=True),
    api.ReplicationReport("to-dr", "gw1", None, 7, {"state": "ok", "runs_done": 1}),
    api.ReplicationReport("to-dr", "gw1", 7, None, {"state": "retrying"}),
    api.ReplicationRun("to-dr"),
    api.ReplicationReport("to-dr", "gw1", 7, 9, {"state": "ok"}, [[8, 2.0, 10, "x"]], [5], 50),
    api.ReplicationRetry("to-dr", [8]),
    api.ReplicationRetry("to-dr"),
    api.ReplicationList(),
    api.JobLease("search_backfill", "gw1", 1.0, 30.0),
    api.JobLease("search_backfill", "gw1", 2.0, 1.0, release=True),
    api.ManifestPut("lib/app", D, "application/x", RECIPE, now=1.0, scan=True),
    api.ScanClaim("gw1", 2.0, 60.0, 4, 3),
    api.ScanFinish("lib/app", D, "gw1", 3.0, "done", "", D),
    api.ScanFinish("lib/app", D, "gw1", 3.0, "queued", "unavailable", "", 5.0),
    api.ScanEnqueue("lib/app", D, 4.0),
    api.ScanList(),
    api.ScanList("lib/app", D, "done", ("lib/app", D), 10),
    api.VulndbGet(),
    api.ArtifactsList("lib/app", "application/vnd.cyclonedx+json"),
    api.ImageInfoMissing(),
    api.ImageInfoMissing(("lib/app", D), 10),
    api.ImageInfoBackfill((("lib/app", D, {"platforms": ["linux/amd64"]}), ("lib/app", D, None))),
]


def test_every_op_has_an_example() -> None:
    assert {type(r).op for r in EXAMPLES} == api.COMMANDS | api.QUERIES


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: type(r).op)
def test_request_roundtrips_through_json(request_: api.Request[Any]) -> None:
    args = json.loads(json.dumps(request_.to_args()))
    decode = api.decode_command if request_.is_command else api.decode_query
    assert decode(type(request_).op, args) == request_


def test_unknown_ops_and_bad_args_are_request_invalid() -> None:
    with pytest.raises(RequestInvalid):
        api.decode_command("tag_get", {"repo": "a", "tag": "b"})
    with pytest.raises(RequestInvalid):
        api.decode_query("manifest_put", {})
    with pytest.raises(RequestInvalid):
        api.decode_query("tag_get", ["a"])
    with pytest.raises(RequestInvalid):
        api.decode_command("member_set_state", {"id": "n1", "state": "gone"})
    with pytest.raises(PaginationInvalid):
        api.decode_query("catalog", {"n": -1})


def test_results_roundtrip_through_json() -> None:
    info = api.ManifestInfo(D, "application/x", 3, RECIPE, None, "a/b", {"k": "v"})
    assert api.TagGet.decode_result(json.loads(json.dumps(api.TagGet.encode_result(info)))) == (
        info
    )
    page = api.Page(["a", "b"], True)
    assert api.TagsList.decode_result(api.TagsList.encode_result(page)) == page
    assert api.Catalog.decode_result(api.Catalog.encode_result(page)) == page
    upload = api.UploadInfo("open", "lib/app", 3, [["cd" * 32, 3]], "r1")
    assert api.UploadGet.decode_result(api.UploadGet.encode_result(upload)) == upload
    assert api.UploadGet.encode_result(api.UploadInfo("new")) == {"state": "new"}
    members = [api.MemberInfo("n1", "h:1", "h:2", "active")]
    assert api.Members.decode_result(api.Members.encode_result(members)) == members
    status = api.MetadataStatus(1, 2, 3, 4, 5)
    assert api.Status.decode_result(api.Status.encode_result(status)) == status
    assert api.UploadAppend.decode_result(api.UploadAppend.encode_result(7)) == 7
    assert api.BlobMount.decode_result(api.BlobMount.encode_result(True)) is True
    assert api.ExpireUploads.decode_result(api.ExpireUploads.encode_result(2)) == 2
    assert api.GcPrune.decode_result(api.GcPrune.encode_result(4)) == 4
    quotas = [api.QuotaInfo("team", 10, 3, 1)]
    assert (
        api.QuotaList.decode_result(json.loads(json.dumps(api.QuotaList.encode_result(quotas))))
        == quotas
    )
    restored = api.TrashRestored([D], ["v1"])
    assert api.TrashRestore.decode_result(api.TrashRestore.encode_result(restored)) == restored
    assert api.TrashPurge.decode_result(api.TrashPurge.encode_result(3)) == 3
    entries = [
        api.TrashEntry("lib/app", "manifest", D, None, "application/x", 3, 5.5),
        api.TrashEntry("lib/app", "tag", D, "v1", None, None, 5.0),
    ]
    raw = json.loads(json.dumps(api.TrashList.encode_result(entries)))
    assert api.TrashList.decode_result(raw) == entries


def test_trash_args_are_checked() -> None:
    with pytest.raises(RequestInvalid):  # into the trash without a time
        api.decode_command("manifest_delete", {"repo": "a", "digest": D, "trash": True})
    with pytest.raises(RequestInvalid):
        api.decode_command("trash_restore", {"repo": "a"})
    with pytest.raises(RequestInvalid):
        api.decode_command("trash_restore", {"repo": "a", "digest": D, "tag": "v1"})
    # An older log entry (no `now`, no `trash`) is a plain delete.
    old = api.decode_command("tag_delete", {"repo": "a", "tag": "v1"})
    assert old == api.TagDelete("a", "v1")


def test_the_facade_has_one_method_per_op() -> None:
    assert all(callable(getattr(api.Metadata, op, None)) for op in api.COMMANDS | api.QUERIES)


class _JsonTransport:
    """The real state machine behind JSON in, JSON out (what a node does, minus gRPC)."""

    def __init__(self) -> None:
        from node.metadata.state import MetadataState

        self.state = MetadataState()
        self.sent: list[tuple[str, Any]] = []

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.sent.append((op, json.loads(json.dumps(args))))
        return json.loads(json.dumps(self.state.apply(op, self.sent[-1][1])))

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        self.sent.append((op, json.loads(json.dumps(args))))
        return json.loads(json.dumps(self.state.query(op, self.sent[-1][1])))


async def test_every_facade_method_against_the_state() -> None:
    transport = _JsonTransport()
    meta = api.Metadata(transport)
    repo, layer, m = "lib/app", "sha256:" + "01" * 32, "sha256:" + "02" * 32
    chunk = ["cd" * 32, 3]
    await meta.barrier()
    assert await meta.upload_append(api.UploadAppend("u1", repo, 0, [chunk], "r1", 1.0)) == 3
    assert await meta.upload_get("u1") == api.UploadInfo("open", repo, 3, [chunk], "r1")
    await meta.blob_commit(api.BlobCommit(repo, layer, {"size": 3, "chunks": [chunk]}, "u1", 2.0))
    with pytest.raises(BlobUploadUnknown):  # closed by the commit
        await meta.upload_get("u1")
    assert await meta.blob_get(repo, layer) == {"size": 3, "chunks": [chunk]}
    assert await meta.blob_recipe(layer) == {"size": 3, "chunks": [chunk]}
    assert await meta.blob_mount("lib/other", layer, repo) is True
    unlinks = await meta.unlink_revision()
    await meta.blob_unlink("lib/other", layer)
    moved = await meta.unlink_revision()
    assert moved != unlinks  # a removal moves it
    put = api.ManifestPut(repo, m, "application/x", RECIPE, (layer,), subject=layer, tag="v1")
    await meta.manifest_put(put)
    info = await meta.tag_get(repo, "v1")
    assert info == await meta.manifest_get(repo, m)
    assert (info.digest, info.size, info.subject) == (m, 3, layer)
    assert await meta.tags_list(repo, None, None) == api.Page(["v1"], False)
    assert await meta.catalog(None, None) == api.Page([repo], False)
    [descriptor] = await meta.referrers(repo, layer, None)
    assert descriptor["digest"] == m
    pull = api.PullEvent(repo, m, "v1", 9.0, None, "127.0.0.1", "ua")
    assert await meta.pull_record((pull, pull._replace(repo="lib/none"))) == 1
    await meta.tag_delete(repo, "v1")
    assert await meta.unlink_revision() == moved  # a tag is not a link
    await meta.manifest_delete(repo, m)
    assert await meta.unlink_revision() != moved
    await meta.upload_cancel("u2", 3.0)
    assert await meta.expire_uploads(100.0, 10.0) == 2
    await meta.member_join("n1", "h:1", "h:2")
    await meta.member_set_state("n1", "draining")
    assert await meta.members() == [api.MemberInfo("n1", "h:1", "h:2", "draining")]
    assert await meta.status() == api.MetadataStatus(1, 2, 0, 0, 6)
    # The manifest's bytes were unlinked by manifest_delete; the layer is still linked.
    assert await meta.gc_prune((m, layer)) == 1
    assert await meta.status() == api.MetadataStatus(1, 1, 0, 0, 3)
    hashed = "$2b$04$" + "b" * 53
    await meta.user_put(api.UserPut("alice", hashed))
    await meta.user_put(api.UserPut("alice", disabled=True))
    await meta.namespace_put("team", "private")
    await meta.grant_set("team", "alice", "reader")
    await meta.group_put("ops")
    await meta.group_member_set("ops", "alice", True)
    await meta.group_grant_set("team", "ops", "developer")
    await meta.group_put("gone")
    assert await meta.group_delete("gone") is True
    assert await meta.group_delete("gone") is False
    await meta.robot_put(api.RobotPut("ci", hashed, 50.0, (("team", ("pull",)),), "ci", 1.0))
    await meta.robot_put(api.RobotPut("old", hashed, None, (("team", ("pull",)),), "", 1.0))
    before_revision = await meta.access_revision()
    assert await meta.robot_delete("old") is True
    assert await meta.access_revision() != before_revision  # an access change moves it
    assert await meta.access_list() == api.AccessData(
        [api.UserInfo("alice", hashed, True, False)],
        [api.NamespaceInfo("team", "private", {"alice": "reader"}, {"ops": "developer"})],
        [api.GroupInfo("ops", ["alice"])],
        [api.RobotInfo("ci", hashed, 50.0, {"team": ["pull"]}, "ci", 1.0)],
    )
    ev = [9.0, "alice", "user", "10.0.0.9", "ua", "pull", repo, "v1", m, "ok", ""]
    before = (await meta.audit_head()).head_seq  # the pulls recorded above are records too
    assert await meta.audit_append([ev, ev]) == before + 2
    head = await meta.audit_head()
    assert (head.head_seq, head.tail_first, head.segments) == (before + 2, 1, [])
    page = await meta.audit_tail(0, 1)
    assert page.more and len(page.lines) == 1
    data = (page.lines[0] + "\n").encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    recipe: api.Recipe = {"size": len(data), "chunks": [["ef" * 32, len(data)]]}
    assert await meta.audit_seal(1, 1, digest, recipe, 10.0) is True
    assert await meta.audit_expire(20.0) == 1
    assert (await meta.audit_head()).base_seq == 1
    await meta.quota_set("lib", 100)
    assert await meta.quota_list() == [api.QuotaInfo("lib", 100, 3, 1)]
    # The trash: a manifest deleted into it comes back with its tag.
    await meta.manifest_put(put)
    await meta.manifest_delete(repo, m, now=10.0, trash=True)
    assert [(e.kind, e.digest, e.tag) for e in await meta.trash_list(repo)] == [
        ("manifest", m, None),
        ("tag", m, "v1"),
    ]
    restored = await meta.trash_restore(api.TrashRestore(repo, m))
    assert restored == api.TrashRestored([m], ["v1"])
    assert (await meta.tag_get(repo, "v1")).digest == m
    await meta.tag_delete(repo, "v1", now=11.0, trash=True)
    assert await meta.trash_purge(12.0, 5.0) == 0
    assert await meta.trash_purge(20.0, 5.0, repo) == 1
    assert await meta.trash_list() == []
    pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
    await meta.trust_key_put("team", "release", pem)
    await meta.pull_policy_put("team", True)
    assert await meta.trust_list() == [api.TrustInfo("team", {"release": pem}, True)]
    await meta.manifest_put(put)  # tagged v1 again
    found = await meta.search(SearchSpec(q="app", sort="pushed"))
    assert [(i["repository"], i["tag"]) for i in found.items] == [(repo, "v1")]
    # Webhooks: an endpoint, the lease, a fenced cursor move with a dead letter, a retry.
    assert await meta.webhook_put({"name": "ci", "url": "http://ci.test/hook"})
    assert (await meta.webhook_lease("gw1", 1.0, 15.0))[0] == "gw1"
    head = (await meta.webhook_list())["head_seq"]
    letter = [head, 2.0, 3, "HTTP 500"]
    assert await meta.webhook_advance(api.WebhookAdvance("ci", "gw1", head, head, [letter], [], 9))
    assert await meta.webhook_dead_letters("ci") == [letter]
    assert await meta.webhook_retry("ci") == 1
    assert await meta.webhook_remove("ci")
    # Replication: a rule's lease, a report moving its cursor, a run asked, the listing.
    assert (await meta.replication_lease("r", "gw1", 1.0, 15.0))[0] == "gw1"
    report = api.ReplicationReport("r", "gw1", None, 3, {"state": "ok"})
    assert await meta.replication_report(report) == 3
    assert await meta.replication_run("r") == 1
    assert (await meta.replication_list())["rules"][0]["cursor"] == 3
    dead = api.ReplicationReport("r", "gw1", 3, 4, {"state": "ok"}, [[4, 5.0, 10, "x"]], [], 9)
    assert await meta.replication_report(dead) == 4
    assert await meta.replication_retry("r") == 1
    assert (await meta.replication_list())["rules"][0]["retry"] == [4]
    # A gateway job's lease.
    assert (await meta.job_lease("search_backfill", "gw1", 1.0, 30.0))[0] == "gw1"
    assert (await meta.job_lease("search_backfill", "gw2", 2.0, 30.0))[0] == "gw1"
    # The scan queue: queued by the push, claimed, finished, listed, queued again.
    await meta.manifest_put(api.ManifestPut(repo, m, "application/x", RECIPE, now=30.0, scan=True))
    assert await meta.scan_claim(api.ScanClaim("gw", 31.0, 60.0, 8, 3)) == [
        api.ScanClaimed(repo, m, 1)
    ]
    assert await meta.scan_finish(api.ScanFinish(repo, m, "gw", 32.0, "done", "", layer)) is True
    [scan] = await meta.scan_list(api.ScanList(repo))
    assert (scan.state, scan.sbom, scan.attempts) == ("done", layer, 1)
    await meta.scan_enqueue(repo, m, 33.0)
    assert [s.state for s in await meta.scan_list(api.ScanList(state="queued"))] == ["queued"]
    await meta.vuln_policy_put("team", "high", ("CVE-2024-1",), "deny")
    assert await meta.trust_list() == [
        api.TrustInfo("team", {"release": pem}, True, "high", ("CVE-2024-1",), "deny")
    ]
    assert await meta.vulndb_get() is None
    index = b"index"
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    index_recipe = api.Recipe(size=5, chunks=[[hashlib.sha256(index).hexdigest(), 5]])
    assert await meta.vulndb_put(index_digest, index_recipe, "test", {"advisories": 0}) == 1
    db = await meta.vulndb_get()
    assert db is not None and (db.generation, db.digest, db.source) == (1, index_digest, "test")
    assert await meta.artifacts_list(repo, "application/vnd.cyclonedx+json") == []
    missing = await meta.image_info_missing(None, 10)
    assert (repo, m, "application/x") in missing.items and missing.next is None
    assert await meta.image_info_backfill([(repo, m, None)]) == 1
    assert (repo, m, "application/x") not in (await meta.image_info_missing(None, 10)).items
    assert {op for op, _ in transport.sent} == api.COMMANDS | api.QUERIES


class _FenceRecorder:
    """A transport that records calls; `access_fence` unknown, like a node from before it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append(op)
        return api.COMMAND_TYPES[op].encode_result(True if op == "robot_delete" else None)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        self.calls.append(op)
        raise RequestInvalid(f"unknown query {op!r}")


async def test_access_changes_are_fenced_and_other_commands_are_not() -> None:
    transport = _FenceRecorder()
    meta = api.Metadata(transport)
    assert await meta.robot_delete("ci") is True  # an old node's "unknown query" is no error
    await meta.upload_cancel("u1", 1.0)
    assert transport.calls == ["robot_delete", "access_fence", "upload_cancel"]
