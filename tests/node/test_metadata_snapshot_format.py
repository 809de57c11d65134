"""The compact snapshot formats (versions 5 and 6, node/metadata/state.py `_encode_compact`).

Each must hold exactly what the row format (versions 2-4) holds: a state loaded from either
answers the same and snapshots to the same rows. Their records share strings as the state
in RAM did, a container larger than a batch is written in pieces and merged back, and their
unpickler resolves nothing but the record types (a snapshot naming anything else is
refused before it runs). Version 6 pickles no tuple per record (what the load's memo would
keep to its end), and a version-5 file written before version 6 existed still loads.
Nothing is timed (bench/snapshot_format.py measures the load).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import pytest

from node.metadata.state import (
    COMPACT_VERSIONS,
    SNAPSHOT_COMPACT,
    SNAPSHOT_COMPACT_V5,
    MetadataState,
    _flatten,
)

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


def _with_image_info(st: MetadataState) -> MetadataState:
    """`st` with the `image_info` of its manifests recorded (search's platforms)."""
    entries = [
        [repo, digest, {"platforms": ["linux/amd64"]} if i % 2 else None]
        for repo, present in st.manifests.items()
        for i, digest in enumerate(present)
    ]
    st.apply("image_info_backfill", {"entries": entries})
    assert st.image_info
    return st


def _rows(st: MetadataState) -> dict[str, list[str]]:
    """Every section as sorted rows (set order differs between two equal states)."""
    snap = st.snapshot()
    return {
        name: sorted(repr(row) for row in _flatten(name, snap[name]))
        for name in snap
        if name != "blob_bytes"
    } | {"blob_bytes": [repr(snap["blob_bytes"])]}


def _compact(st: MetadataState, batch: int = 4096, version: int = SNAPSHOT_COMPACT) -> bytes:
    return b"".join(
        MetadataState.encode_snapshot(
            st.snapshot(), batch=batch, compact=True, compact_version=version
        )
    )


@pytest.mark.parametrize("version", COMPACT_VERSIONS)
def test_compact_snapshot_holds_what_the_row_format_holds(version: int) -> None:
    st = _with_image_info(_rich_state())
    assert st.trash.tags and st.quotas.limits and st.audit.copy().rows()  # sections covered
    assert st.image_info and any(type(m).__name__ == "_FullManifest" for m in _records(st))
    data = _compact(st, version=version)
    assert pickle.load(io.BytesIO(data))["version"] == version
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


def _records(st: MetadataState) -> list[Any]:
    return [m for entries in st.manifests.values() for m in entries.values()]


def test_version_6_round_trips_the_exact_state() -> None:
    """Every container equal, dicts in the same order, records of the same types."""
    st = _with_image_info(_rich_state())
    again = MetadataState()
    again.load(_compact(st))
    loaded = again.snapshot()
    for name, section in st.snapshot().items():
        _same(loaded[name], section, name)
    for got, want in zip(_records(again), _records(st), strict=True):
        assert type(got) is type(want) and tuple(got) == tuple(want)
        assert type(got.recipe) is type(want.recipe)


def _same(got: Any, want: Any, where: str) -> None:
    assert type(got) is type(want) and got == want, where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key, value in want.items():
            _same(got[key], value, f"{where}/{key}")


def test_a_version_5_file_written_before_version_6_still_loads() -> None:
    """fixtures/metadata_state_v5.dump: `_rich_state()` as the code before version 6
    wrote it (compact on, PYTHONHASHSEED=0); it loads into the same state."""
    data = (FIXTURES / "metadata_state_v5.dump").read_bytes()
    assert pickle.load(io.BytesIO(data))["version"] == SNAPSHOT_COMPACT_V5
    st, again = _rich_state(), MetadataState()
    again.load(data)
    assert _rows(again) == _rows(st)
    for got, want in zip(_records(again), _records(st), strict=True):
        assert type(got) is type(want) and tuple(got) == tuple(want)
    # and what it loaded writes version 6 by default, which loads the same again
    newer = MetadataState()
    newer.load(_compact(again))
    assert _rows(newer) == _rows(st)


def _tuples_built(data: bytes) -> int:
    """Tuples a load of `data` builds from its opcodes (each one memoized to the end)."""
    stream, count = io.BytesIO(data), 0
    while stream.tell() < len(data):
        for op, _, _ in pickletools.genops(stream):
            count += op.name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3")
    return count


def test_version_6_builds_no_tuple_per_record() -> None:
    """Version 5 pickled an argument tuple per manifest, which the unpickler's memo keeps
    until the load ends (docs/metadata.md): version 6 builds a few per piece, none per
    record, whatever the count."""
    st = MetadataState()
    st.apply("blob_commit", {"repo": "r0", "digest": A, "recipe": _one(A, 3), "now": 1.0})
    count = 600
    for i in range(count):
        repo, digest = f"r{i % 3}", f"sha256:{i:064x}"
        st.apply(
            "manifest_put",
            {
                "repo": repo,
                "digest": digest,
                "media_type": "application/vnd.oci.image.manifest.v1+json",
                "recipe": _one(digest, 10 + i % 2),
                "blobs": [A] if repo == "r0" else [],
                "tag": f"v{i}",
                "now": 2.0,
                "info": {"platforms": ["linux/amd64"]},
            },
        )
    layers = 300  # chunk lists of several chunks: `Recipe` records
    for i in range(layers):
        digest = "sha256:" + hashlib.sha256(f"layer{i}".encode()).hexdigest()
        chunks = [[hashlib.sha256(f"{i}/{k}".encode()).hexdigest(), 1 << 20] for k in range(3)]
        recipe = {"size": 3 << 20, "chunks": chunks}
        st.apply("blob_commit", {"repo": "r1", "digest": digest, "recipe": recipe, "now": 1.0})
    assert len(st.image_info) == count
    assert sum(type(r).__name__ == "Recipe" for r in st.blobs.values()) == layers
    assert _tuples_built(_compact(st, version=SNAPSHOT_COMPACT_V5)) > 2 * count + layers
    assert _tuples_built(_compact(st)) < 40
    for batch in (4096, 7):  # pieces of blobs with and without recipes, in their order
        again = MetadataState()
        again.load(_compact(st, batch=batch))
        _same(again.snapshot()["blobs"], st.snapshot()["blobs"], "blobs")
        assert [type(r) for r in again.blobs.values()] == [type(r) for r in st.blobs.values()]


@pytest.mark.parametrize("version", COMPACT_VERSIONS)
def test_a_loaded_compact_snapshot_shares_each_string_once(version: int) -> None:
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
    again.load(_compact(st, version=version))
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


@pytest.mark.parametrize("version", COMPACT_VERSIONS)
@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_containers_larger_than_a_batch_are_written_in_pieces(batch: int, version: int) -> None:
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
    again.load(_compact(st, batch=batch, version=version))
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
    with pytest.raises(ValueError, match="reads versions 1-6"):
        MetadataState().load(header)
