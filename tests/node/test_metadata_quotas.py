"""Namespace quotas in the metadata state (node/metadata/quotas.py, node/metadata/state.py):
usage deduplicated inside a namespace and kept by every link and unlink, refusals at
`upload_append`, `blob_commit`, `blob_mount` and `manifest_put` that change nothing, and
the limits surviving a snapshot (version 4) while usage is recounted."""

from __future__ import annotations

import io
import pickle
import random

import pytest
from test_metadata_state import cid, commit_blob, dg, put_manifest

from cargohold.errors import NameInvalid, QuotaExceeded, RequestInvalid
from node.metadata.state import MetadataState


def quotas(st: MetadataState) -> dict[str, tuple[int, int, int]]:
    return {q["namespace"]: (q["limit"], q["used"], q["blobs"]) for q in st.query("quota_list", {})}


def set_quota(st: MetadataState, namespace: str, limit: int | None) -> None:
    st.apply("quota_set", {"namespace": namespace, "limit": limit})


def test_usage_counts_a_blob_once_per_namespace() -> None:
    st = MetadataState()
    set_quota(st, "team", 1000)
    commit_blob(st, "team/a", "layer", 100)
    commit_blob(st, "team/b", "layer", 100)  # the same digest in another repo: once
    commit_blob(st, "team/b/c", "other", 50)
    commit_blob(st, "teamx/a", "big", 500)  # not in `team` (prefix ends at a `/`)
    commit_blob(st, "elsewhere", "layer", 100)
    assert quotas(st) == {"team": (1000, 150, 2)}
    st.apply("blob_unlink", {"repo": "team/a", "digest": dg("layer")})
    assert quotas(st)["team"] == (1000, 150, 2)  # still linked in team/b
    st.apply("blob_unlink", {"repo": "team/b", "digest": dg("layer")})
    assert quotas(st)["team"] == (1000, 50, 1)
    # A quota on the repository's own name counts that repository only.
    set_quota(st, "team/b", 60)
    assert quotas(st)["team/b"] == (60, 50, 1)


def test_a_commit_over_the_quota_is_refused_and_changes_nothing() -> None:
    st = MetadataState()
    set_quota(st, "team", 100)
    commit_blob(st, "team/a", "one", 60)
    before = st.dump()
    with pytest.raises(QuotaExceeded) as refused:
        commit_blob(st, "team/a", "two", 41)
    assert "namespace team" in refused.value.message
    assert refused.value.detail == {"namespace": "team", "used": 60, "limit": 100, "adding": 41}
    assert refused.value.code == "DENIED" and refused.value.status == 403
    assert st.dump() == before
    commit_blob(st, "team/a", "two", 40)  # exactly at the limit fits
    commit_blob(st, "team/b", "one", 60)  # held already: adds nothing
    commit_blob(st, "team/a", "one", 60)  # a repeated commit too
    assert quotas(st)["team"] == (100, 100, 2)


def test_two_concurrent_pushes_cannot_both_slip_under() -> None:
    # Raft applies commands one at a time: the second commit sees the first's bytes.
    st = MetadataState()
    set_quota(st, "team", 100)
    commit_blob(st, "team/a", "first", 70)
    with pytest.raises(QuotaExceeded):
        commit_blob(st, "team/b", "second", 70)
    assert quotas(st)["team"] == (100, 70, 1)


def test_upload_append_refuses_the_patch_that_crosses() -> None:
    st = MetadataState()
    set_quota(st, "team", 100)
    commit_blob(st, "team/a", "one", 50)

    def append(offset: int, name: str, n: int, request: str) -> int:
        return int(
            st.apply(
                "upload_append",
                {
                    "upload": "u1",
                    "repo": "team/a",
                    "offset": offset,
                    "chunks": [[cid(name), n]],
                    "request": request,
                    "now": 1.0,
                },
            )["size"]
        )

    assert append(0, "p1", 30, "r1") == 30
    with pytest.raises(QuotaExceeded):
        append(30, "p2", 21, "r2")
    assert st.query("upload_get", {"upload": "u1"})["size"] == 30  # unchanged
    assert append(30, "p2", 20, "r3") == 50


def test_mount_and_manifest_put_are_checked_too() -> None:
    st = MetadataState()
    commit_blob(st, "other/src", "layer", 80)
    set_quota(st, "team", 100)
    commit_blob(st, "team/a", "small", 30)
    with pytest.raises(QuotaExceeded):
        st.apply("blob_mount", {"repo": "team/a", "digest": dg("layer"), "from": "other/src"})
    assert dg("layer") not in st.links["team/a"]
    set_quota(st, "team", 200)  # raising a limit keeps the usage
    assert st.apply("blob_mount", {"repo": "team/a", "digest": dg("layer"), "from": "other/src"})
    assert quotas(st)["team"] == (200, 110, 2)
    set_quota(st, "team", 110)
    with pytest.raises(QuotaExceeded):  # the manifest's own bytes count
        put_manifest(st, "team/a", "m1", blobs=[dg("layer")], tag="v1")
    assert "team/a" not in st.tags
    set_quota(st, "team", 10_000)
    put_manifest(st, "team/a", "m1", blobs=[dg("layer")], tag="v1")
    used = quotas(st)["team"][1]
    assert used > 110
    st.apply("manifest_delete", {"repo": "team/a", "digest": dg("m1")})
    assert quotas(st)["team"][1] == 110


def test_setting_a_quota_counts_existing_data_and_unset_removes_it() -> None:
    st = MetadataState()
    commit_blob(st, "team/a", "one", 10)
    commit_blob(st, "team/b", "one", 10)
    commit_blob(st, "team/b", "two", 5)
    set_quota(st, "team", 12)  # below the usage: allowed, pushes adding bytes are refused
    assert quotas(st) == {"team": (12, 15, 2)}
    with pytest.raises(QuotaExceeded):
        commit_blob(st, "team/c", "three", 1)
    st.apply("blob_unlink", {"repo": "team/b", "digest": dg("one")})  # deletes still work
    set_quota(st, "team", None)
    assert quotas(st) == {}
    commit_blob(st, "team/c", "three", 1)
    with pytest.raises(RequestInvalid):
        set_quota(st, "team", -1)
    with pytest.raises(NameInvalid):
        st.apply("quota_set", {"namespace": "Bad Name", "limit": 1})


def test_quotas_survive_a_snapshot_and_usage_is_recounted() -> None:
    st = MetadataState()
    commit_blob(st, "team/a", "one", 10)
    data = st.dump()
    assert pickle.load(io.BytesIO(data))["version"] == 2  # no quota: still readable by old
    set_quota(st, "team", 1000)
    set_quota(st, "team/a", 500)
    commit_blob(st, "team/b", "one", 10)
    commit_blob(st, "team/a", "two", 20)
    data = st.dump()
    assert pickle.load(io.BytesIO(data))["version"] == 4
    again = MetadataState()
    again.load(data)
    assert quotas(again) == quotas(st) == {"team": (1000, 30, 2), "team/a": (500, 30, 2)}
    # The same state (a byte comparison of dumps would depend on set iteration order).
    assert again.snapshot() == st.snapshot()


def test_incremental_usage_matches_a_recount_after_random_changes() -> None:
    rng = random.Random(12)
    st = MetadataState()
    set_quota(st, "ns", 10**9)
    set_quota(st, "ns/sub", 10**9)
    repos = ["ns", "ns/a", "ns/sub", "ns/sub/x", "other/y"]
    names = [f"b{i}" for i in range(12)]
    for step in range(400):
        repo, name = rng.choice(repos), rng.choice(names)
        size = 1 + names.index(name)
        roll = rng.random()
        if roll < 0.45:
            commit_blob(st, repo, name, size)
        elif roll < 0.6:
            src = rng.choice(repos)
            st.apply("blob_mount", {"repo": repo, "digest": dg(name), "from": src})
        elif roll < 0.8 and dg(name) in st.links.get(repo, ()):
            st.apply("blob_unlink", {"repo": repo, "digest": dg(name)})
        elif roll < 0.9:
            put_manifest(st, repo, f"m{step % 5}", tag="t")
        elif st.manifests.get(repo):
            digest = sorted(st.manifests[repo])[0]
            st.apply("manifest_delete", {"repo": repo, "digest": digest})
    recounted = MetadataState()
    recounted.load(st.dump())
    assert quotas(st) == quotas(recounted)
    for ns in ("ns", "ns/sub"):
        held = {d for r, ds in st.links.items() if r == ns or r.startswith(ns + "/") for d in ds}
        assert quotas(st)[ns][1] == sum(st.blobs[d].size for d in held)
