"""The metadata contract (cargohold/metadata_api.py): docs/metadata.md lists exactly its ops
with their JSON keys, and every request survives the trip to JSON and back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cargohold import metadata_api as api
from cargohold.errors import BlobUploadUnknown, PaginationInvalid, RequestInvalid

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
    api.MemberJoin("n1", "h:1", "h:2"),
    api.MemberSetState("n1", "draining"),
    api.ExpireUploads(10.0, 5.0),
    api.GcPrune((D,)),
    api.UserPut("alice", "$2b$04$" + "a" * 53, False, True),
    api.UserPut("alice", None, True, None),
    api.NamespacePut("team", "public"),
    api.GrantSet("team", "alice", "developer"),
    api.GrantSet("team", "alice", None),
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
    await meta.blob_unlink("lib/other", layer)
    put = api.ManifestPut(repo, m, "application/x", RECIPE, (layer,), subject=layer, tag="v1")
    await meta.manifest_put(put)
    info = await meta.tag_get(repo, "v1")
    assert info == await meta.manifest_get(repo, m)
    assert (info.digest, info.size, info.subject) == (m, 3, layer)
    assert await meta.tags_list(repo, None, None) == api.Page(["v1"], False)
    assert await meta.catalog(None, None) == api.Page([repo], False)
    [descriptor] = await meta.referrers(repo, layer, None)
    assert descriptor["digest"] == m
    await meta.tag_delete(repo, "v1")
    await meta.manifest_delete(repo, m)
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
    assert await meta.access_list() == api.AccessData(
        [api.UserInfo("alice", hashed, True, False)],
        [api.NamespaceInfo("team", "private", {"alice": "reader"})],
    )
    assert {op for op, _ in transport.sent} == api.COMMANDS | api.QUERIES
