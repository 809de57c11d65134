"""Push and pull times in the metadata state (node/metadata/state.py): `manifest_put`'s
`now`, the batched `pull_record`, what deletes forget, and the version-4 snapshot that
carries them (older versions still load)."""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import pytest

from node.metadata.state import MetadataState

REPO = "team/app"


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def put(st: MetadataState, name: str, tag: str | None, now: float | None) -> str:
    digest = dg(name)
    args: dict[str, Any] = {
        "repo": REPO,
        "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "recipe": {"size": 3, "chunks": [[hashlib.sha256(name.encode()).hexdigest(), 3]]},
        "tag": tag,
    }
    if now is not None:
        args["now"] = now
    st.apply("manifest_put", args)
    return digest


def pulls(st: MetadataState, *events: tuple[str, str, float]) -> int:
    rows = [[repo, digest, None, when, "alice", "127.0.0.1", "ua"] for repo, digest, when in events]
    return int(st.apply("pull_record", {"pulls": rows})["recorded"])


@pytest.fixture
def st() -> MetadataState:
    return MetadataState()


def test_push_records_manifest_and_tag_times(st: MetadataState) -> None:
    a = put(st, "a", "v1", 100.0)
    put(st, "a", "v2", 150.0)
    assert st.pushed[REPO] == {a: 150.0}
    assert st.tag_pushed[REPO] == {"v1": 100.0, "v2": 150.0}
    # An old log entry without `now` records nothing (replay stays deterministic).
    b = put(st, "b", "old", None)
    assert b not in st.pushed[REPO] and "old" not in st.tag_pushed[REPO]


def test_pull_record_keeps_the_latest_time_of_present_manifests(st: MetadataState) -> None:
    a = put(st, "a", "v1", 100.0)
    assert pulls(st, (REPO, a, 200.0), (REPO, a, 180.0), ("team/none", a, 300.0)) == 2
    assert st.pulled == {REPO: {a: 200.0}}
    assert pulls(st, (REPO, dg("never-pushed"), 400.0)) == 0
    assert pulls(st, (REPO, a, 200.0)) == 1  # a replayed batch changes nothing
    assert st.pulled == {REPO: {a: 200.0}}


def test_deletes_forget_the_times(st: MetadataState) -> None:
    a = put(st, "a", "v1", 100.0)
    put(st, "a", "v2", 110.0)
    pulls(st, (REPO, a, 200.0))
    st.apply("tag_delete", {"repo": REPO, "tag": "v1"})
    assert st.tag_pushed[REPO] == {"v2": 110.0}
    st.apply("manifest_delete", {"repo": REPO, "digest": a})
    assert (st.pushed, st.tag_pushed, st.pulled) == ({}, {}, {})


def _header(st: MetadataState) -> dict[str, Any]:
    header: dict[str, Any] = pickle.load(io.BytesIO(st.dump()))
    return header


def test_snapshot_version_4_carries_the_times(st: MetadataState) -> None:
    a = put(st, "a", "v1", 100.0)
    pulls(st, (REPO, a, 200.0))
    header = _header(st)
    assert header["version"] == 4 and header["sections"][9:12] == ["pushed", "tag_pushed", "pulled"]
    copy = MetadataState()
    copy.load(st.dump())
    assert (copy.pushed, copy.tag_pushed, copy.pulled) == (st.pushed, st.tag_pushed, st.pulled)
    assert copy.dump() == st.dump()


def test_a_state_without_times_is_still_written_as_version_2(st: MetadataState) -> None:
    put(st, "a", "v1", None)
    assert _header(st)["version"] == 2


def test_a_version_4_header_with_an_unknown_section_is_refused(st: MetadataState) -> None:
    put(st, "a", "v1", 1.0)
    data = bytearray(st.dump())
    header = pickle.load(io.BytesIO(bytes(data)))
    rest = bytes(data)[len(pickle.dumps(header, protocol=5)) :]
    header["sections"] = [*header["sections"], "from_the_future"]
    with pytest.raises(ValueError):
        MetadataState().load(pickle.dumps(header, protocol=5) + rest)
