"""Unit tests of the metadata state machine (node/metadata/state.py): every command and
query of the catalogue, idempotency, pagination, referrers, deletes, snapshots."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from typing import Any

import pytest

import node.metadata.state as state_module
from cargohold.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    NotFound,
    PaginationInvalid,
    RangeInvalid,
    RecipeConflict,
    RequestInvalid,
    SizeInvalid,
    TagInvalid,
)
from node.metadata.state import COMMANDS, QUERIES, MetadataState

REPO = "library/app"
OTHER = "library/other"


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def cid(name: str) -> str:
    return hashlib.sha256(b"chunk:" + name.encode()).hexdigest()


def recipe(*parts: tuple[str, int]) -> dict[str, Any]:
    return {"size": sum(n for _, n in parts), "chunks": [[cid(c), n] for c, n in parts]}


@pytest.fixture
def st() -> MetadataState:
    return MetadataState()


def commit_blob(
    st: MetadataState, repo: str, name: str, size: int = 10, upload: str | None = None
) -> str:
    digest = dg(name)
    st.apply(
        "blob_commit",
        {
            "repo": repo,
            "digest": digest,
            "recipe": recipe((name, size)),
            "upload": upload,
            "now": 1.0,
        },
    )
    return digest


def put_manifest(
    st: MetadataState,
    repo: str,
    name: str,
    blobs: list[str] | None = None,
    tag: str | None = None,
    subject: str | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    children: list[str] | None = None,
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
) -> str:
    digest = dg(name)
    st.apply(
        "manifest_put",
        {
            "repo": repo,
            "digest": digest,
            "media_type": media_type,
            "recipe": recipe((name, 100)),
            "blobs": blobs or [],
            "manifests": children or [],
            "subject": subject,
            "artifact_type": artifact_type,
            "annotations": annotations,
            "tag": tag,
            "now": 2.0,
        },
    )
    return digest


def image(st: MetadataState, repo: str, name: str, tag: str | None = None, **kw: Any) -> str:
    layer = commit_blob(st, repo, f"{name}-layer")
    config = commit_blob(st, repo, f"{name}-config")
    return put_manifest(st, repo, name, blobs=[config, layer], tag=tag, **kw)


def test_catalogue_ops_are_all_implemented(st: MetadataState) -> None:
    assert "barrier" in COMMANDS and "expire_uploads" in COMMANDS
    assert st.apply("barrier", {}) is None
    assert {"tag_get", "referrers", "members", "status"} <= QUERIES
    with pytest.raises(RequestInvalid):
        st.apply("no_such_op", {})
    with pytest.raises(RequestInvalid):
        st.query("no_such_op", {})


# -- uploads ---------------------------------------------------------------------------------
def test_upload_new_append_and_get(st: MetadataState) -> None:
    assert st.query("upload_get", {"upload": "u1"}) == {"state": "new"}
    res = st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("a"), 5], [cid("b"), 3]],
            "request": "r1",
            "now": 1.0,
        },
    )
    assert res == {"size": 8}
    res = st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 8,
            "chunks": [[cid("c"), 2]],
            "request": "r2",
            "now": 2.0,
        },
    )
    assert res == {"size": 10}
    assert st.query("upload_get", {"upload": "u1"}) == {
        "state": "open",
        "repo": REPO,
        "size": 10,
        "request": "r2",
        "chunks": [[cid("a"), 5], [cid("b"), 3], [cid("c"), 2]],
    }
    assert st.query("status", {})["uploads"] == 1


def test_upload_append_retry_with_same_request_returns_same_result(st: MetadataState) -> None:
    args = {
        "upload": "u1",
        "repo": REPO,
        "offset": 0,
        "chunks": [[cid("a"), 5]],
        "request": "r1",
        "now": 1.0,
    }
    first = st.apply("upload_append", args)
    again = st.apply("upload_append", args)
    assert first == again == {"size": 5}
    assert st.query("upload_get", {"upload": "u1"})["chunks"] == [[cid("a"), 5]]


def test_upload_append_out_of_order_is_range_invalid_with_size(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("a"), 5]],
            "request": "r1",
            "now": 1.0,
        },
    )
    with pytest.raises(RangeInvalid) as err:
        st.apply(
            "upload_append",
            {
                "upload": "u1",
                "repo": REPO,
                "offset": 3,
                "chunks": [[cid("b"), 5]],
                "request": "r2",
                "now": 1.0,
            },
        )
    assert err.value.message == "size=5"
    # A different request id at an old offset is a repeated chunk, not a retry.
    with pytest.raises(RangeInvalid):
        st.apply(
            "upload_append",
            {
                "upload": "u1",
                "repo": REPO,
                "offset": 0,
                "chunks": [[cid("a"), 5]],
                "request": "r3",
                "now": 1.0,
            },
        )
    with pytest.raises(RangeInvalid) as err:
        st.apply(
            "upload_append",
            {"upload": "u2", "repo": REPO, "offset": 4, "chunks": [], "request": "x", "now": 1.0},
        )
    assert err.value.message == "size=0"
    assert st.query("upload_get", {"upload": "u2"}) == {"state": "new"}


def test_upload_append_in_another_repo_is_unknown(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {"upload": "u1", "repo": REPO, "offset": 0, "chunks": [], "request": "r1", "now": 1.0},
    )
    with pytest.raises(BlobUploadUnknown):
        st.apply(
            "upload_append",
            {"upload": "u1", "repo": OTHER, "offset": 0, "chunks": [], "request": "r2", "now": 1.0},
        )


def test_upload_cancel(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("a"), 1]],
            "request": "r1",
            "now": 1.0,
        },
    )
    assert st.apply("upload_cancel", {"upload": "u1", "now": 2.0}) is None
    assert st.apply("upload_cancel", {"upload": "u1", "now": 3.0}) is None  # idempotent
    with pytest.raises(BlobUploadUnknown):
        st.query("upload_get", {"upload": "u1"})
    with pytest.raises(BlobUploadUnknown):
        st.apply(
            "upload_append",
            {"upload": "u1", "repo": REPO, "offset": 1, "chunks": [], "request": "r2", "now": 4.0},
        )
    with pytest.raises(BlobUploadUnknown):
        commit_blob(st, REPO, "x", upload="u1")
    # Cancelling an id never seen remembers it as cancelled.
    st.apply("upload_cancel", {"upload": "fresh", "now": 1.0})
    with pytest.raises(BlobUploadUnknown):
        st.query("upload_get", {"upload": "fresh"})


def test_upload_cancel_after_commit_is_unknown(st: MetadataState) -> None:
    commit_blob(st, REPO, "x", upload="u1")
    with pytest.raises(BlobUploadUnknown):
        st.apply("upload_cancel", {"upload": "u1", "now": 2.0})


def test_blob_commit_closes_upload_and_is_idempotent(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("x"), 10]],
            "request": "r1",
            "now": 1.0,
        },
    )
    digest = commit_blob(st, REPO, "x", upload="u1")
    assert commit_blob(st, REPO, "x", upload="u1") == digest  # retried commit: no error
    with pytest.raises(BlobUploadUnknown):
        st.query("upload_get", {"upload": "u1"})
    with pytest.raises(BlobUploadUnknown):
        commit_blob(st, REPO, "y", upload="u1")  # closed by a different commit
    with pytest.raises(BlobUploadUnknown):
        st.apply(
            "upload_append",
            {"upload": "u1", "repo": REPO, "offset": 10, "chunks": [], "request": "r2", "now": 1.0},
        )
    assert st.query("blob_get", {"repo": REPO, "digest": digest}) == recipe(("x", 10))
    status = st.query("status", {})
    assert status["blobs"] == 1 and status["blob_bytes"] == 10 and status["uploads"] == 0


def test_blob_commit_monolithic_and_empty_blob(st: MetadataState) -> None:
    digest = dg("empty")
    st.apply(
        "blob_commit",
        {
            "repo": REPO,
            "digest": digest,
            "recipe": {"size": 0, "chunks": []},
            "upload": "never-patched",
            "now": 1.0,
        },
    )
    assert st.query("blob_get", {"repo": REPO, "digest": digest}) == {"size": 0, "chunks": []}


def test_blob_commit_validates(st: MetadataState) -> None:
    with pytest.raises(SizeInvalid):
        st.apply(
            "blob_commit",
            {
                "repo": REPO,
                "digest": dg("a"),
                "recipe": {"size": 5, "chunks": [[cid("a"), 4]]},
                "upload": None,
                "now": 1.0,
            },
        )
    with pytest.raises(DigestInvalid):
        st.apply(
            "blob_commit",
            {
                "repo": REPO,
                "digest": "sha256:XYZ",
                "recipe": {"size": 0, "chunks": []},
                "upload": None,
                "now": 1.0,
            },
        )
    with pytest.raises(NameInvalid):
        st.apply(
            "blob_commit",
            {
                "repo": "Bad Name",
                "digest": dg("a"),
                "recipe": {"size": 0, "chunks": []},
                "upload": None,
                "now": 1.0,
            },
        )
    with pytest.raises(RequestInvalid):
        st.apply(
            "blob_commit",
            {
                "repo": REPO,
                "digest": dg("a"),
                "recipe": {"size": 1, "chunks": [["zz", 1]]},
                "upload": None,
                "now": 1.0,
            },
        )
    with pytest.raises(RequestInvalid):
        st.apply("blob_commit", {"repo": REPO, "digest": dg("a")})
    assert st.query("status", {})["blobs"] == 0
    assert st.query("catalog", {"n": None, "last": None})["repositories"] == []


def test_expire_uploads(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {"upload": "old", "repo": REPO, "offset": 0, "chunks": [], "request": "r", "now": 100.0},
    )
    st.apply(
        "upload_append",
        {"upload": "new", "repo": REPO, "offset": 0, "chunks": [], "request": "r", "now": 1000.0},
    )
    st.apply("upload_cancel", {"upload": "gone", "now": 50.0})
    commit_blob(st, REPO, "x", upload="done")  # closed at now=1.0
    assert st.apply("expire_uploads", {"now": 1100.0, "older_than": 500.0}) == {"expired": 3}
    assert st.query("upload_get", {"upload": "old"}) == {"state": "new"}
    assert st.query("upload_get", {"upload": "gone"}) == {"state": "new"}
    assert st.query("upload_get", {"upload": "new"})["state"] == "open"
    assert st.apply("expire_uploads", {"now": 1100.0, "older_than": 500.0}) == {"expired": 0}


def _append(st: MetadataState, upload: str, name: str) -> None:
    st.apply(
        "upload_append",
        {
            "upload": upload,
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid(name), 10]],
            "request": "r",
            "now": 1.0,
        },
    )


@pytest.mark.parametrize("compact", [True, False])
def test_only_the_newest_closed_uploads_are_kept(
    st: MetadataState, monkeypatch: pytest.MonkeyPatch, compact: bool
) -> None:
    """Closed and cancelled sessions beyond CLOSED_UPLOADS_KEPT are forgotten oldest closed
    first (their ids are "new" again, a retried commit still succeeds), open ones never; a
    node that loaded a snapshot forgets the same ones as the node that wrote it."""
    monkeypatch.setattr(state_module, "CLOSED_UPLOADS_KEPT", 3)
    _append(st, "a", "a")  # opened first, closed last: kept longest
    _append(st, "open", "o")
    for name in ("b", "c", "d"):
        commit_blob(st, REPO, name, upload=name)
    st.apply("upload_cancel", {"upload": "e", "now": 1.0})
    commit_blob(st, REPO, "a", upload="a")
    kept = {"d", "e", "a"}
    for upload in ("b", "c", "d", "e", "a"):
        if upload in kept:
            with pytest.raises(BlobUploadUnknown):
                st.query("upload_get", {"upload": upload})
        else:
            assert st.query("upload_get", {"upload": upload}) == {"state": "new"}
    assert st.query("upload_get", {"upload": "open"})["state"] == "open"
    assert st.query("status", {})["uploads"] == 1
    assert commit_blob(st, REPO, "b", upload="b") == dg("b")  # a retry after the record went
    loaded = MetadataState()
    loaded.load_stream(
        io.BytesIO(b"".join(MetadataState.encode_snapshot(st.snapshot(), compact=compact)))
    )
    assert list(loaded.uploads) == list(st.uploads)
    for state in (st, loaded):
        commit_blob(state, REPO, "f", upload="f")
        assert set(state.uploads) == {"open", "a", "b", "f"}
        assert state.query("status", {})["uploads"] == 1
    assert st.apply("expire_uploads", {"now": 10.0, "older_than": 1.0}) == {"expired": 4}
    assert st.uploads == {} and st.query("status", {})["uploads"] == 0


# -- blobs -------------------------------------------------------------------------------------
def test_blob_get_only_through_linked_repo(st: MetadataState) -> None:
    digest = commit_blob(st, REPO, "x")
    with pytest.raises(BlobUnknown):
        st.query("blob_get", {"repo": OTHER, "digest": digest})


def test_blob_mount(st: MetadataState) -> None:
    digest = commit_blob(st, REPO, "x")
    assert st.apply("blob_mount", {"repo": OTHER, "digest": digest, "from": None}) == {
        "mounted": False
    }
    assert st.apply("blob_mount", {"repo": OTHER, "digest": digest, "from": "nope/repo"}) == {
        "mounted": False
    }
    assert st.apply("blob_mount", {"repo": OTHER, "digest": dg("unknown"), "from": REPO}) == {
        "mounted": False
    }
    assert st.query("catalog", {})["repositories"] == [REPO]
    assert st.apply("blob_mount", {"repo": OTHER, "digest": digest, "from": REPO}) == {
        "mounted": True
    }
    assert st.apply("blob_mount", {"repo": OTHER, "digest": digest, "from": REPO}) == {
        "mounted": True
    }
    assert st.query("blob_get", {"repo": OTHER, "digest": digest})["size"] == 10
    # Already linked: mounted, whatever `from` says.
    assert st.apply("blob_mount", {"repo": OTHER, "digest": digest}) == {"mounted": True}
    assert st.query("catalog", {})["repositories"] == [REPO, OTHER]


def test_blob_unlink(st: MetadataState) -> None:
    digest = commit_blob(st, REPO, "x")
    st.apply("blob_mount", {"repo": OTHER, "digest": digest, "from": REPO})
    assert st.apply("blob_unlink", {"repo": REPO, "digest": digest}) is None
    with pytest.raises(BlobUnknown):
        st.query("blob_get", {"repo": REPO, "digest": digest})
    with pytest.raises(BlobUnknown):
        st.apply("blob_unlink", {"repo": REPO, "digest": digest})
    assert st.query("blob_get", {"repo": OTHER, "digest": digest})["size"] == 10
    # REPO has nothing left: it no longer exists.
    assert st.query("catalog", {})["repositories"] == [OTHER]
    with pytest.raises(NameUnknown):
        st.query("tags_list", {"repo": REPO})


# -- manifests, tags ------------------------------------------------------------------------------
def test_manifest_put_and_get_by_tag_and_digest(st: MetadataState) -> None:
    digest = image(st, REPO, "m1", tag="v1", annotations={"b": "2", "a": "1"})
    record = st.query("tag_get", {"repo": REPO, "tag": "v1"})
    assert record == {
        "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "size": 100,
        "recipe": recipe(("m1", 100)),
        "subject": None,
        "artifact_type": None,
        "annotations": {"a": "1", "b": "2"},
    }
    assert st.query("manifest_get", {"repo": REPO, "digest": digest}) == record
    # The manifest bytes are a blob of the repository too.
    assert st.query("blob_get", {"repo": REPO, "digest": digest}) == recipe(("m1", 100))
    status = st.query("status", {})
    assert status["manifests"] == 1 and status["repos"] == 1 and status["blobs"] == 3


def test_manifest_put_is_idempotent_and_retags(st: MetadataState) -> None:
    first = image(st, REPO, "m1", tag="latest")
    image(st, REPO, "m1", tag="latest")
    assert st.query("status", {})["manifests"] == 1
    second = image(st, REPO, "m2", tag="latest")
    assert st.query("tag_get", {"repo": REPO, "tag": "latest"})["digest"] == second
    assert st.query("manifest_get", {"repo": REPO, "digest": first})["digest"] == first


def test_manifest_put_with_missing_blobs(st: MetadataState) -> None:
    config = commit_blob(st, REPO, "cfg")
    elsewhere = commit_blob(st, OTHER, "layer-elsewhere")
    missing = dg("never-pushed")
    with pytest.raises(ManifestBlobUnknown) as err:
        put_manifest(st, REPO, "m", blobs=[config, missing, elsewhere], tag="v1")
    assert err.value.detail == {"missing": sorted([missing, elsewhere])}
    assert missing in err.value.message and elsewhere in err.value.message
    assert config not in err.value.message
    with pytest.raises(ManifestUnknown):
        st.query("tag_get", {"repo": REPO, "tag": "v1"})
    with pytest.raises(ManifestUnknown):
        st.query("manifest_get", {"repo": REPO, "digest": dg("m")})


def test_index_needs_children_in_repo(st: MetadataState) -> None:
    child = image(st, REPO, "child")
    with pytest.raises(ManifestBlobUnknown):
        put_manifest(
            st,
            REPO,
            "idx",
            children=[child, dg("absent")],
            media_type="application/vnd.oci.image.index.v1+json",
        )
    with pytest.raises(ManifestBlobUnknown):
        put_manifest(st, OTHER, "idx", children=[child])
    index = put_manifest(
        st,
        REPO,
        "idx",
        children=[child],
        tag="multi",
        media_type="application/vnd.oci.image.index.v1+json",
    )
    assert st.query("tag_get", {"repo": REPO, "tag": "multi"})["digest"] == index


def test_manifest_put_validates_tag_and_digests(st: MetadataState) -> None:
    with pytest.raises(TagInvalid):
        put_manifest(st, REPO, "m", tag="-bad")
    with pytest.raises(DigestInvalid):
        put_manifest(st, REPO, "m", blobs=["md5:abc"])
    assert st.query("status", {})["manifests"] == 0


def test_get_unknowns(st: MetadataState) -> None:
    with pytest.raises(NameUnknown):
        st.query("tag_get", {"repo": REPO, "tag": "v1"})
    image(st, REPO, "m1", tag="v1")
    with pytest.raises(ManifestUnknown):
        st.query("tag_get", {"repo": REPO, "tag": "v2"})
    with pytest.raises(ManifestUnknown):
        st.query("manifest_get", {"repo": REPO, "digest": dg("zzz")})
    with pytest.raises(ManifestUnknown):
        st.query("manifest_get", {"repo": OTHER, "digest": dg("m1")})


def test_tag_delete_removes_only_the_tag(st: MetadataState) -> None:
    digest = image(st, REPO, "m1", tag="v1")
    put_manifest(st, REPO, "m1", blobs=[dg("m1-config"), dg("m1-layer")], tag="v2")
    st.apply("tag_delete", {"repo": REPO, "tag": "v1"})
    with pytest.raises(ManifestUnknown):
        st.query("tag_get", {"repo": REPO, "tag": "v1"})
    assert st.query("tag_get", {"repo": REPO, "tag": "v2"})["digest"] == digest
    assert st.query("manifest_get", {"repo": REPO, "digest": digest})["digest"] == digest
    with pytest.raises(ManifestUnknown):
        st.apply("tag_delete", {"repo": REPO, "tag": "v1"})
    with pytest.raises(ManifestUnknown):
        st.apply("tag_delete", {"repo": OTHER, "tag": "v2"})


def test_manifest_delete_removes_manifest_tags_and_referrer(st: MetadataState) -> None:
    subject = image(st, REPO, "base", tag="keep")
    target = image(st, REPO, "sig", tag="a", subject=subject, artifact_type="x/sig")
    put_manifest(
        st,
        REPO,
        "sig",
        blobs=[dg("sig-config"), dg("sig-layer")],
        tag="b",
        subject=subject,
        artifact_type="x/sig",
    )
    assert len(st.query("referrers", {"repo": REPO, "digest": subject})["manifests"]) == 1
    st.apply("manifest_delete", {"repo": REPO, "digest": target})
    for tag in ("a", "b"):
        with pytest.raises(ManifestUnknown):
            st.query("tag_get", {"repo": REPO, "tag": tag})
    with pytest.raises(ManifestUnknown):
        st.query("manifest_get", {"repo": REPO, "digest": target})
    with pytest.raises(BlobUnknown):
        st.query("blob_get", {"repo": REPO, "digest": target})
    assert st.query("referrers", {"repo": REPO, "digest": subject}) == {"manifests": []}
    assert st.query("tags_list", {"repo": REPO}) == {"tags": ["keep"], "more": False}
    with pytest.raises(ManifestUnknown):
        st.apply("manifest_delete", {"repo": REPO, "digest": target})


def test_repository_disappears_when_empty(st: MetadataState) -> None:
    digest = put_manifest(st, REPO, "lonely", tag="t")
    assert st.query("catalog", {})["repositories"] == [REPO]
    st.apply("manifest_delete", {"repo": REPO, "digest": digest})
    assert st.query("catalog", {})["repositories"] == []
    assert st.query("status", {})["repos"] == 0


# -- pagination --------------------------------------------------------------------------------
def test_tags_list_pagination(st: MetadataState) -> None:
    digest = put_manifest(st, REPO, "m")
    tags = ["b", "B", "a", "_x", "1.0", "a-1", "a.1", "Z9"]
    for tag in tags:
        st.apply(
            "manifest_put",
            {
                "repo": REPO,
                "digest": digest,
                "media_type": "application/json",
                "recipe": recipe(("m", 100)),
                "tag": tag,
                "now": 1.0,
            },
        )
    ordered = sorted(tags, key=lambda t: t.encode())
    assert ordered == ["1.0", "B", "Z9", "_x", "a", "a-1", "a.1", "b"]
    assert st.query("tags_list", {"repo": REPO}) == {"tags": ordered, "more": False}
    assert st.query("tags_list", {"repo": REPO, "n": 3}) == {"tags": ordered[:3], "more": True}
    assert st.query("tags_list", {"repo": REPO, "n": 3, "last": "Z9"}) == {
        "tags": ["_x", "a", "a-1"],
        "more": True,
    }
    assert st.query("tags_list", {"repo": REPO, "n": 2, "last": "a-1"}) == {
        "tags": ["a.1", "b"],
        "more": False,
    }
    # `last` need not be a tag; it is an exclusive bound.
    assert st.query("tags_list", {"repo": REPO, "n": 10, "last": "a-2"}) == {
        "tags": ["a.1", "b"],
        "more": False,
    }
    assert st.query("tags_list", {"repo": REPO, "n": 10, "last": "c"}) == {
        "tags": [],
        "more": False,
    }
    assert st.query("tags_list", {"repo": REPO, "n": 0}) == {"tags": [], "more": False}
    assert st.query("tags_list", {"repo": REPO, "n": 8}) == {"tags": ordered, "more": False}
    with pytest.raises(PaginationInvalid):
        st.query("tags_list", {"repo": REPO, "n": -1})
    with pytest.raises(NameUnknown):
        st.query("tags_list", {"repo": "no/such"})


def test_tags_list_follows_every_tag_change(st: MetadataState) -> None:
    first = image(st, REPO, "m1", tag="b")
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["b"]
    image(st, REPO, "m2", tag="a")
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["a", "b"]
    image(st, REPO, "m2", tag="b")  # moves an existing tag: same list
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["a", "b"]
    put_manifest(st, REPO, "m1", blobs=[dg("m1-config"), dg("m1-layer")], tag="c")
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["a", "b", "c"]
    st.apply("tag_delete", {"repo": REPO, "tag": "a"})
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["b", "c"]
    st.apply("manifest_delete", {"repo": REPO, "digest": first})  # carries "c"
    assert st.query("tags_list", {"repo": REPO})["tags"] == ["b"]
    restored = MetadataState()
    restored.load(st.dump())
    assert restored.query("tags_list", {"repo": REPO})["tags"] == ["b"]


def test_repo_with_blobs_only_lists_no_tags(st: MetadataState) -> None:
    commit_blob(st, REPO, "x")
    assert st.query("tags_list", {"repo": REPO, "n": None, "last": None}) == {
        "tags": [],
        "more": False,
    }


def test_catalog_pagination(st: MetadataState) -> None:
    repos = ["b/x", "a", "a/b", "a-b", "a_b", "c", "a.b"]
    for repo in repos:
        commit_blob(st, repo, "x")
    ordered = sorted(repos, key=lambda r: r.encode())
    assert st.query("catalog", {"n": None, "last": None}) == {
        "repositories": ordered,
        "more": False,
    }
    assert st.query("catalog", {"n": 2}) == {"repositories": ordered[:2], "more": True}
    assert st.query("catalog", {"n": 2, "last": ordered[1]}) == {
        "repositories": ordered[2:4],
        "more": True,
    }
    assert st.query("catalog", {"n": 100, "last": ordered[4]}) == {
        "repositories": ordered[5:],
        "more": False,
    }
    assert st.query("catalog", {"n": 0}) == {"repositories": [], "more": False}
    with pytest.raises(PaginationInvalid):
        st.query("catalog", {"n": "ten"})
    # The cached order follows new repositories.
    commit_blob(st, "0first", "x")
    assert st.query("catalog", {"n": 1}) == {"repositories": ["0first"], "more": True}


# -- referrers -----------------------------------------------------------------------------------
def test_referrers_filtering_and_descriptors(st: MetadataState) -> None:
    subject = dg("subject-that-does-not-exist-yet")
    sig = image(
        st,
        REPO,
        "sig",
        subject=subject,
        artifact_type="application/x.sig",
        annotations={"org.example": "yes"},
    )
    sbom = image(st, REPO, "sbom", subject=subject, artifact_type="application/x.sbom")
    plain = image(st, REPO, "plain", subject=subject)
    image(st, OTHER, "other-sig", subject=subject, artifact_type="application/x.sig")
    everything = st.query("referrers", {"repo": REPO, "digest": subject, "artifact_type": None})[
        "manifests"
    ]
    assert [d["digest"] for d in everything] == sorted([sig, sbom, plain])
    by_digest = {d["digest"]: d for d in everything}
    assert by_digest[sig] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sig,
        "size": 100,
        "artifactType": "application/x.sig",
        "annotations": {"org.example": "yes"},
    }
    assert by_digest[plain] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": plain,
        "size": 100,
    }
    only_sig = st.query(
        "referrers", {"repo": REPO, "digest": subject, "artifact_type": "application/x.sig"}
    )
    assert [d["digest"] for d in only_sig["manifests"]] == [sig]
    assert st.query(
        "referrers", {"repo": REPO, "digest": subject, "artifact_type": "nothing/such"}
    ) == {"manifests": []}
    assert st.query("referrers", {"repo": REPO, "digest": dg("unknown")}) == {"manifests": []}
    assert st.query("referrers", {"repo": "no/repo", "digest": subject}) == {"manifests": []}


# -- members -------------------------------------------------------------------------------------
def test_members(st: MetadataState) -> None:
    st.apply("member_join", {"id": "n2", "grpc": "h2:7001", "raft": "h2:7101"})
    st.apply("member_join", {"id": "n1", "grpc": "h1:7001", "raft": "h1:7101"})
    st.apply("member_join", {"id": "n1", "grpc": "h1:7001", "raft": "h1:7101"})
    assert st.query("members", {}) == [
        {"id": "n1", "grpc": "h1:7001", "raft": "h1:7101", "state": "active"},
        {"id": "n2", "grpc": "h2:7001", "raft": "h2:7101", "state": "active"},
    ]
    st.apply("member_set_state", {"id": "n2", "state": "draining"})
    # A restarted node re-joins with a new address but stays draining.
    st.apply("member_join", {"id": "n2", "grpc": "h9:7001", "raft": "h9:7101"})
    assert st.query("members", {})[1] == {
        "id": "n2",
        "grpc": "h9:7001",
        "raft": "h9:7101",
        "state": "draining",
    }
    with pytest.raises(NotFound):
        st.apply("member_set_state", {"id": "n7", "state": "removed"})
    with pytest.raises(RequestInvalid):
        st.apply("member_set_state", {"id": "n1", "state": "asleep"})


# -- determinism and snapshots -------------------------------------------------------------------
def _workload(st: MetadataState) -> None:
    subject = image(st, REPO, "base", tag="v1")
    image(st, REPO, "sig", subject=subject, artifact_type="a/b", annotations={"k": "v"})
    image(st, OTHER, "o", tag="latest")
    st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("p"), 7]],
            "request": "r1",
            "now": 5.0,
        },
    )
    st.apply("upload_cancel", {"upload": "u2", "now": 5.0})
    st.apply("member_join", {"id": "n1", "grpc": "h1:1", "raft": "h1:2"})
    st.apply("blob_mount", {"repo": "third/repo", "digest": dg("o-layer"), "from": OTHER})


def _everything(st: MetadataState) -> list[Any]:
    queries: list[tuple[str, dict[str, Any]]] = [
        ("catalog", {}),
        ("status", {}),
        ("members", {}),
        ("tags_list", {"repo": REPO}),
        ("tags_list", {"repo": OTHER}),
        ("tag_get", {"repo": REPO, "tag": "v1"}),
        ("referrers", {"repo": REPO, "digest": dg("base")}),
        ("upload_get", {"upload": "u1"}),
        ("blob_get", {"repo": "third/repo", "digest": dg("o-layer")}),
    ]
    return [st.query(op, args) for op, args in queries]


def test_dump_load_roundtrip(st: MetadataState) -> None:
    _workload(st)
    restored = MetadataState()
    restored.load(st.dump())
    assert _everything(restored) == _everything(st)
    with pytest.raises(BlobUploadUnknown):
        restored.query("upload_get", {"upload": "u2"})
    # The restored state keeps applying commands like the original.
    for state in (st, restored):
        state.apply(
            "upload_append",
            {
                "upload": "u1",
                "repo": REPO,
                "offset": 7,
                "chunks": [[cid("q"), 1]],
                "request": "r2",
                "now": 6.0,
            },
        )
        state.apply("manifest_delete", {"repo": REPO, "digest": dg("sig")})
    assert _everything(restored) == _everything(st)
    assert restored.dump() == MetadataState.dump(restored)


def test_snapshot_is_a_copy_unaffected_by_later_commands(st: MetadataState) -> None:
    _workload(st)
    expected = st.dump()
    snap = st.snapshot()
    st.apply(
        "manifest_put",
        {
            "repo": REPO,
            "digest": dg("later"),
            "media_type": "x",
            "recipe": recipe(("later", 1)),
            "tag": "v1",
            "subject": dg("base"),
            "now": 9.0,
        },
    )
    st.apply("blob_mount", {"repo": OTHER, "digest": dg("base-layer"), "from": REPO})
    st.apply("member_set_state", {"id": "n1", "state": "draining"})
    assert b"".join(MetadataState.encode_snapshot(snap)) == expected
    assert st.dump() != expected


def test_load_reads_version_1_snapshots(st: MetadataState) -> None:
    import pickle

    _workload(st)
    v1 = pickle.dumps(
        {
            "version": 1,
            "blobs": st.blobs,
            "links": st.links,
            "manifests": st.manifests,
            "tags": st.tags,
            "referrers": st.referrers,
            "uploads": st.uploads,
            "members": st.members,
            "blob_bytes": st.blob_bytes,
        },
        protocol=5,
    )
    restored = MetadataState()
    restored.load(v1)
    assert _everything(restored) == _everything(st)


def test_load_rejects_unknown_version() -> None:
    import pickle

    with pytest.raises(ValueError):
        MetadataState().load(pickle.dumps({"version": 99}))


def test_refused_commands_leave_state_unchanged(st: MetadataState) -> None:
    _workload(st)
    before = st.dump()
    refused = [
        (
            "manifest_put",
            {
                "repo": REPO,
                "digest": dg("bad"),
                "media_type": "x",
                "recipe": recipe(("bad", 1)),
                "blobs": [dg("absent")],
                "tag": "v1",
                "now": 1.0,
            },
        ),
        (
            "upload_append",
            {"upload": "u1", "repo": REPO, "offset": 99, "chunks": [], "request": "z", "now": 1.0},
        ),
        ("blob_unlink", {"repo": REPO, "digest": dg("absent")}),
        ("tag_delete", {"repo": REPO, "tag": "absent"}),
        (
            "blob_commit",
            {
                "repo": REPO,
                "digest": dg("s"),
                "upload": "u2",
                "recipe": recipe(("s", 1)),
                "now": 1.0,
            },
        ),
    ]
    for op, args in refused:
        with pytest.raises(
            (BlobUnknown, BlobUploadUnknown, ManifestBlobUnknown, ManifestUnknown, RangeInvalid)
        ):
            st.apply(op, args)
    assert st.dump() == before


def test_status_counters_match_a_recount(st: MetadataState) -> None:
    def check() -> None:
        counted = st.query("status", {})
        st._recount()
        assert st.query("status", {}) == counted

    _workload(st)
    check()
    st.apply(
        "upload_append",
        {"upload": "u3", "repo": OTHER, "offset": 0, "chunks": [], "request": "r", "now": 7.0},
    )
    commit_blob(st, OTHER, "u3-blob", upload="u3")
    st.apply("upload_cancel", {"upload": "u1", "now": 8.0})
    check()
    st.apply(
        "upload_append",
        {"upload": "u4", "repo": OTHER, "offset": 0, "chunks": [], "request": "r", "now": 1.0},
    )
    st.apply("expire_uploads", {"now": 100.0, "older_than": 10.0})
    check()
    for repo in (REPO, OTHER, "third/repo"):
        for digest in list(st.manifests.get(repo, {})):
            st.apply("manifest_delete", {"repo": repo, "digest": digest})
        for digest in list(st.links.get(repo, ())):
            st.apply("blob_unlink", {"repo": repo, "digest": digest})
        check()
    assert st.query("status", {})["repos"] == 0


def test_json_results_are_plain(st: MetadataState) -> None:
    _workload(st)
    json.dumps(_everything(st))


def test_the_first_recipe_of_a_digest_is_never_replaced(st: MetadataState) -> None:
    """Digest squatting (issue 9): a conflicting recipe for a recorded digest is refused,
    in blob_commit and manifest_put alike, and the state is unchanged."""
    digest = commit_blob(st, OTHER, "c")
    before = st.dump()
    args = {"repo": REPO, "digest": digest, "recipe": recipe(("evil", 10)), "now": 2.0}
    with pytest.raises(RecipeConflict):
        st.apply("blob_commit", {**args, "upload": None})
    with pytest.raises(RecipeConflict):
        st.apply(
            "manifest_put",
            {**args, "media_type": "x", "blobs": [], "manifests": [], "tag": "t"},
        )
    assert st.dump() == before
    # The same recipe links (a re-push into another repository), and any gateway can read
    # the recorded recipe to verify it.
    commit_blob(st, REPO, "c")
    assert st.query("blob_get", {"repo": REPO, "digest": digest}) == recipe(("c", 10))
    assert st.query("blob_recipe", {"digest": digest}) == recipe(("c", 10))
    with pytest.raises(BlobUnknown):
        st.query("blob_recipe", {"digest": dg("nothing")})


def test_a_commit_extends_what_its_session_appended(st: MetadataState) -> None:
    st.apply(
        "upload_append",
        {
            "upload": "u1",
            "repo": REPO,
            "offset": 0,
            "chunks": [[cid("a"), 10]],
            "request": "r1",
            "now": 1.0,
        },
    )
    for wrong in (recipe(("b", 10), ("a", 10)), recipe(("b", 5))):
        with pytest.raises(SizeInvalid):
            st.apply(
                "blob_commit",
                {"repo": REPO, "digest": dg("ab"), "recipe": wrong, "upload": "u1", "now": 2.0},
            )
    # Another repository's session cannot be committed here (a cross-repository link).
    with pytest.raises(BlobUploadUnknown):
        st.apply(
            "blob_commit",
            {
                "repo": OTHER,
                "digest": dg("ab"),
                "recipe": recipe(("a", 10), ("b", 3)),
                "upload": "u1",
                "now": 2.0,
            },
        )
    st.apply(
        "blob_commit",
        {
            "repo": REPO,
            "digest": dg("ab"),
            "recipe": recipe(("a", 10), ("b", 3)),
            "upload": "u1",
            "now": 2.0,
        },
    )
    assert st.query("blob_get", {"repo": REPO, "digest": dg("ab")})["size"] == 13


def test_immutable_rules_refuse_moving_and_removing_a_tag(st: MetadataState) -> None:
    from cargohold.errors import TagImmutable

    rules = ["library/*:v*"]
    first = image(st, REPO, "one", tag="v1")
    second = image(st, REPO, "two")
    args = {
        "repo": REPO,
        "digest": second,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "recipe": recipe(("two", 100)),
        "tag": "v1",
        "now": 3.0,
        "immutable": rules,
    }
    with pytest.raises(TagImmutable, match=r"rule library/\*:v\*"):
        st.apply("manifest_put", args)
    assert st.query("tag_get", {"repo": REPO, "tag": "v1"})["digest"] == first
    # Re-pushing the same manifest under the tag, and a tag the rule does not match, pass.
    st.apply("manifest_put", {**args, "digest": first, "recipe": recipe(("one", 100))})
    st.apply("manifest_put", {**args, "tag": "latest"})
    with pytest.raises(TagImmutable) as refused:
        st.apply("tag_delete", {"repo": REPO, "tag": "v1", "immutable": rules})
    assert refused.value.detail == {"repository": REPO, "tag": "v1", "rule": rules[0]}
    with pytest.raises(TagImmutable):
        st.apply("manifest_delete", {"repo": REPO, "digest": first, "immutable": rules})
    st.apply("tag_delete", {"repo": REPO, "tag": "latest", "immutable": rules})
    st.apply("manifest_delete", {"repo": REPO, "digest": second, "immutable": rules})
    # Commands logged before the rules existed carry no `immutable`: nothing is refused.
    st.apply("tag_delete", {"repo": REPO, "tag": "v1"})
    assert st.query("tags_list", {"repo": REPO, "n": None, "last": None})["tags"] == []


def test_users_namespaces_and_grants_survive_a_snapshot() -> None:
    st = MetadataState()
    hashed = "$2b$04$" + "c" * 53
    with pytest.raises(RequestInvalid):  # a new user needs a hash
        st.apply("user_put", {"name": "bob"})
    with pytest.raises(RequestInvalid):  # bcrypt only
        st.apply("user_put", {"name": "bob", "password_hash": "{SHA}abc"})
    st.apply("user_put", {"name": "bob", "password_hash": hashed, "admin": True})
    st.apply("namespace_put", {"name": "team", "visibility": "public"})
    with pytest.raises(NotFound):
        st.apply("grant_set", {"namespace": "team", "user": "carol", "role": "reader"})
    with pytest.raises(NotFound):
        st.apply("grant_set", {"namespace": "other", "user": "bob", "role": "reader"})
    st.apply("grant_set", {"namespace": "team", "user": "bob", "role": "maintainer"})
    st.apply("user_put", {"name": "bob", "disabled": True})
    data = st.dump()
    assert pickle.load(io.BytesIO(data))["version"] == 3
    again = MetadataState()
    again.load(data)
    assert (
        again.query("access_list", {})
        == st.query("access_list", {})
        == {
            "users": [{"name": "bob", "password_hash": hashed, "disabled": True, "admin": True}],
            "namespaces": [
                {
                    "name": "team",
                    "visibility": "public",
                    "grants": {"bob": "maintainer"},
                    "group_grants": {},
                }
            ],
            "groups": [],
            "robots": [],
        }
    )
    st.apply("grant_set", {"namespace": "team", "user": "bob", "role": None})
    assert st.query("access_list", {})["namespaces"][0]["grants"] == {}


def _access_state() -> MetadataState:
    st = MetadataState()
    hashed = "$2b$04$" + "c" * 53
    for user in ("ann", "bob"):
        st.apply("user_put", {"name": user, "password_hash": hashed})
    st.apply("namespace_put", {"name": "team", "visibility": "private"})
    st.apply("namespace_put", {"name": "lib", "visibility": "public"})
    return st


def _robot(name: str, perms: list[dict[str, object]], expires: float | None = 99.0) -> dict:
    return {
        "name": name,
        "secret_hash": "$2b$04$" + "r" * 53,
        "expires_at": expires,
        "permissions": perms,
        "description": "ci",
        "created_at": 1.0,
    }


def test_groups_members_and_group_grants() -> None:
    st = _access_state()
    with pytest.raises(NotFound):
        st.apply("group_member_set", {"group": "ops", "user": "ann", "member": True})
    st.apply("group_put", {"name": "ops"})
    st.apply("group_put", {"name": "ops"})  # idempotent: stays as it is
    with pytest.raises(NotFound):  # unknown user
        st.apply("group_member_set", {"group": "ops", "user": "zed", "member": True})
    for user in ("bob", "ann", "ann"):
        st.apply("group_member_set", {"group": "ops", "user": user, "member": True})
    st.apply("group_member_set", {"group": "ops", "user": "zed", "member": False})
    with pytest.raises(NotFound):
        st.apply("group_grant_set", {"namespace": "nope", "group": "ops", "role": "reader"})
    with pytest.raises(NotFound):
        st.apply("group_grant_set", {"namespace": "team", "group": "nope", "role": "reader"})
    with pytest.raises(RequestInvalid):
        st.apply("group_grant_set", {"namespace": "team", "group": "ops", "role": "god"})
    st.apply("group_grant_set", {"namespace": "team", "group": "ops", "role": "developer"})
    st.apply("grant_set", {"namespace": "team", "user": "ann", "role": "reader"})
    data = st.query("access_list", {})
    assert data["groups"] == [{"name": "ops", "members": ["ann", "bob"]}]
    team = next(ns for ns in data["namespaces"] if ns["name"] == "team")
    assert team["grants"] == {"ann": "reader"}
    assert team["group_grants"] == {"ops": "developer"}
    st.apply("group_member_set", {"group": "ops", "user": "bob", "member": False})
    assert st.query("access_list", {})["groups"][0]["members"] == ["ann"]
    # Deleting a group takes its grants with it: a new group of the same name has none.
    assert st.apply("group_delete", {"name": "ops"}) == {"deleted": True}
    assert st.apply("group_delete", {"name": "ops"}) == {"deleted": False}
    st.apply("group_put", {"name": "ops"})
    team = next(ns for ns in st.query("access_list", {})["namespaces"] if ns["name"] == "team")
    assert team["group_grants"] == {} and team["grants"] == {"ann": "reader"}


def test_robot_accounts_are_checked_stored_and_deleted() -> None:
    st = _access_state()
    with pytest.raises(NotFound):  # permissions name existing namespaces only
        st.apply("robot_put", _robot("ci", [{"namespace": "nope", "actions": ["pull"]}]))
    with pytest.raises(RequestInvalid):  # robots never get `*` or roles
        st.apply("robot_put", _robot("ci", [{"namespace": "team", "actions": ["*"]}]))
    with pytest.raises(RequestInvalid):
        st.apply("robot_put", _robot("ci", []))
    with pytest.raises(RequestInvalid):
        st.apply("robot_put", _robot("robot$ci", [{"namespace": "team", "actions": ["pull"]}]))
    with pytest.raises(RequestInvalid):
        st.apply(
            "robot_put",
            {**_robot("ci", [{"namespace": "team", "actions": ["pull"]}]), "secret_hash": "x"},
        )
    perms = [
        {"namespace": "team", "actions": ["push", "pull"]},
        {"namespace": "lib", "actions": ["pull"]},
    ]
    st.apply("robot_put", _robot("ci", perms))
    st.apply("robot_put", _robot("forever", perms[1:], None))
    robots = st.query("access_list", {})["robots"]
    assert robots[0] == {
        "name": "ci",
        "secret_hash": "$2b$04$" + "r" * 53,
        "expires_at": 99.0,
        "permissions": {"lib": ["pull"], "team": ["pull", "push"]},
        "description": "ci",
        "created_at": 1.0,
    }
    assert robots[1]["name"] == "forever" and robots[1]["expires_at"] is None
    assert st.apply("robot_delete", {"name": "forever"}) == {"deleted": True}
    assert st.apply("robot_delete", {"name": "forever"}) == {"deleted": False}
    assert [r["name"] for r in st.query("access_list", {})["robots"]] == ["ci"]


def test_groups_and_robots_make_a_version_4_snapshot_and_older_ones_still_load() -> None:
    st = _access_state()
    data = st.dump()
    assert pickle.load(io.BytesIO(data))["version"] == 3
    st.apply("group_put", {"name": "ops"})
    st.apply("group_member_set", {"group": "ops", "user": "ann", "member": True})
    st.apply("group_grant_set", {"namespace": "team", "group": "ops", "role": "maintainer"})
    st.apply("robot_put", _robot("ci", [{"namespace": "team", "actions": ["pull"]}]))
    data4 = st.dump()
    assert pickle.load(io.BytesIO(data4))["version"] == 4
    again = MetadataState()
    again.load(data4)
    assert again.query("access_list", {}) == st.query("access_list", {})
    assert again.snapshot() == st.snapshot()
    older = MetadataState()
    older.load(data)  # version 3: no groups, no robots
    assert older.groups == {} and older.robots == {}
    assert len(older.users) == 2


def test_access_revision_moves_with_access_changes_only() -> None:
    st = MetadataState()
    start = st.query("access_revision", {})["revision"]
    st.apply("namespace_put", {"name": "team", "visibility": "private"})
    after_namespace = st.query("access_revision", {})["revision"]
    assert after_namespace != start
    st.apply("barrier", {})
    st.apply("audit_append", {"events": []})
    assert st.query("access_revision", {})["revision"] == after_namespace
    st.apply("robot_put", _robot("ci", [{"namespace": "team", "actions": ["pull"]}]))
    after_robot = st.query("access_revision", {})["revision"]
    st.apply("robot_delete", {"name": "ci"})
    assert (
        len({start, after_namespace, after_robot, st.query("access_revision", {})["revision"]}) == 4
    )
    # Another process's state (or the same one after loading a snapshot) never answers
    # a revision seen before.
    again = MetadataState()
    again.load(st.dump())
    assert (
        again.query("access_revision", {})["revision"]
        != st.query("access_revision", {})["revision"]
    )
