"""The compact snapshot format (version 5, node/metadata/state.py `_encode_compact`).

It must hold exactly what the row format (versions 2-4) holds: a state loaded from either
answers the same and snapshots to the same rows. Its records share strings as the state in
RAM did, a container larger than a batch is written in pieces and merged back, and its
unpickler resolves nothing but the record types (a snapshot naming anything else is
refused before it runs). Nothing is timed (bench/metadata_scale.py measures the load).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import pytest

from node.metadata.state import SNAPSHOT_COMPACT, MetadataState, _flatten

FIXTURES = Path(__file__).parent / "fixtures"
A = "sha256:" + "a" * 64


def _rich_state() -> MetadataState:
    """The fixture log (uploads, members, manifests with children and subjects, deletes),
    then a command of every later section: access, times, quotas, trash, activity log."""
    st = MetadataState()
    for op, args in pickle.loads((FIXTURES / "metadata_log.pickle").read_bytes()):
        try:
            st.apply(op, args)
        except Exception:  # the log holds refused commands on purpose
            continue
    bcrypt = "$2b$12$" + "x" * 53
    st.apply("user_put", {"name": "alice", "password_hash": bcrypt, "disabled": None})
    st.apply("namespace_put", {"name": "library", "visibility": "public"})
    st.apply("grant_set", {"namespace": "library", "user": "alice", "role": "developer"})
    st.apply("group_put", {"name": "devs"})
    st.apply("group_member_set", {"group": "devs", "user": "alice", "member": True})
    st.apply("quota_set", {"namespace": "library", "limit": 1 << 30})
    repo = next(iter(st.tags))
    tag, digest = next(iter(st.tags[repo].items()))
    st.apply("pull_record", {"pulls": [[repo, digest, tag, 20.0, "alice", None, None]]})
    actor = {
        "time": 21.0,
        "actor": "alice",
        "actor_kind": "user",
        "client": "127.0.0.1",
        "user_agent": "test",
    }
    st.apply(
        "tag_delete",
        {"repo": repo, "tag": tag, "immutable": [], "now": 22.0, "trash": True, "audit": actor},
    )
    return st


def _rows(st: MetadataState) -> dict[str, list[str]]:
    """Every section as sorted rows (set order differs between two equal states)."""
    snap = st.snapshot()
    return {
        name: sorted(repr(row) for row in _flatten(name, snap[name]))
        for name in snap
        if name != "blob_bytes"
    } | {"blob_bytes": [repr(snap["blob_bytes"])]}


def _compact(st: MetadataState, batch: int = 4096) -> bytes:
    return b"".join(MetadataState.encode_snapshot(st.snapshot(), batch=batch, compact=True))


def test_compact_snapshot_holds_what_the_row_format_holds() -> None:
    st = _rich_state()
    assert st.trash.tags and st.quotas.limits and st.audit.copy().rows()  # sections covered
    data = _compact(st)
    assert pickle.load(io.BytesIO(data))["version"] == SNAPSHOT_COMPACT
    from_compact, from_rows = MetadataState(), MetadataState()
    from_compact.load(data)
    from_rows.load(st.dump())
    assert _rows(from_compact) == _rows(st) == _rows(from_rows)
    for op, args in (
        ("status", {}),
        ("catalog", {"n": None, "last": None}),
        ("quota_list", {}),
        ("trash_list", {"repo": None}),
        ("access_list", {}),
        ("audit_head", {"segments": None}),
    ):
        assert from_compact.query(op, args) == st.query(op, args), op
    for repo in st.tags:
        page = {"repo": repo, "n": None, "last": None}
        assert from_compact.query("tags_list", page) == st.query("tags_list", page)
        for digest in st.manifests[repo]:
            get = {"repo": repo, "digest": digest}
            assert from_compact.query("manifest_get", get) == st.query("manifest_get", get)
    # Row formats are unchanged: what older nodes read is still what `dump` writes.
    assert pickle.load(io.BytesIO(st.dump()))["version"] == 4


def test_a_loaded_compact_snapshot_shares_each_string_once() -> None:
    st = MetadataState()
    repo = "team/app"
    st.apply("blob_commit", {"repo": repo, "digest": A, "recipe": _one(A, 3), "now": 1.0})
    for i in range(3):
        digest = f"sha256:{i:064x}"
        st.apply(
            "manifest_put",
            {
                "repo": repo,
                "digest": digest,
                "media_type": "application/vnd.oci.image.manifest.v1+json",
                "recipe": _one(digest, 10 + i),
                "blobs": [A],
                "tag": f"v{i}",
                "now": 2.0,
            },
        )
    again = MetadataState()
    again.load(_compact(st))
    (blob_key,) = (d for d in again.blobs if d == A)
    assert all(m.blobs[0] is blob_key for m in again.manifests[repo].values())
    (linked,) = (d for d in again.links[repo] if d == A)
    assert linked is blob_key
    for tag, digest in again.tags[repo].items():
        (key,) = (d for d in again.manifests[repo] if d == digest)
        assert digest is key, tag
    assert type(again.manifests[repo]["sha256:" + "0" * 64]) is type(
        st.manifests[repo]["sha256:" + "0" * 64]
    )
    # Records of one size are one object in RAM, so written once and loaded as one.
    sizes = [again.blobs[d] for d in again.manifests[repo]]
    assert sizes == [10, 11, 12] and sizes[0] is st.blobs["sha256:" + "0" * 64]


def _one(digest: str, size: int) -> dict[str, Any]:
    return {"size": size, "chunks": [[digest.removeprefix("sha256:"), size]]}


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_containers_larger_than_a_batch_are_written_in_pieces(batch: int) -> None:
    st = MetadataState()
    for repo, count in (("big", 10), ("small", 1), ("mid", 4)):
        for i in range(count):
            digest = "sha256:" + hashlib.sha256(f"{repo}{i}".encode()).hexdigest()
            st.apply(
                "blob_commit",
                {"repo": repo, "digest": digest, "recipe": _one(digest, 5), "now": 1.0},
            )
            st.apply(
                "manifest_put",
                {
                    "repo": repo,
                    "digest": digest.replace("sha256:", "sha256:f")[:71],
                    "media_type": "application/vnd.oci.image.manifest.v1+json",
                    "recipe": {"size": 0, "chunks": []},
                    "blobs": [digest],
                    "tag": f"t{i}",
                    "now": float(i),
                },
            )
    again = MetadataState()
    again.load(_compact(st, batch=batch))
    assert _rows(again) == _rows(st)


def test_a_compact_snapshot_naming_anything_else_is_refused() -> None:
    """The unpickler resolves only the record types: a crafted snapshot cannot run code."""
    header = pickle.dumps(
        {"version": SNAPSHOT_COMPACT, "blob_bytes": 0, "sections": ("blobs",)}, protocol=5
    )
    ran: list[str] = []
    evil = pickle.dumps({A: _Evil(ran)}, protocol=5)
    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        MetadataState().load(header + evil)
    assert not ran


class _Evil:
    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    def __reduce__(self) -> tuple[Any, ...]:
        return print, ("ran",)


def test_a_newer_version_is_refused_with_what_reads_it() -> None:
    header = pickle.dumps({"version": SNAPSHOT_COMPACT + 1, "blob_bytes": 0}, protocol=5)
    with pytest.raises(ValueError, match="reads versions 1-5"):
        MetadataState().load(header)
