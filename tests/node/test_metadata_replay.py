"""The Raft log and snapshots stay replayable across versions of the metadata code.

The fixtures in tests/node/fixtures/ were written by the version before the metadata
contract was typed (make_metadata_fixtures.py): a log of commands as the Raft log carries
them, the snapshot of the state they built, and what that version answered. The current
code must apply the same log with the same outcomes, and load the old snapshot into a state
that answers every query the same way.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from cargohold.errors import RegistryError
from node.metadata.state import (
    CancelledUpload,
    ClosedUpload,
    Manifest,
    Member,
    MetadataState,
    OneChunk,
    OpenUpload,
    Recipe,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _outcome(fn: Any) -> Any:
    try:
        return {"ok": fn()}
    except RegistryError as exc:
        return {"error": type(exc).__name__, "message": exc.message, "detail": exc.detail}


def _json(value: Any) -> Any:
    """As it would travel: JSON-encoded and decoded (tuples become lists)."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((FIXTURES / "metadata_expected.json").read_text())


def _answers(st: MetadataState, queries: list[list[Any]]) -> list[Any]:
    return [_json(_outcome(lambda op=op, args=args: st.query(op, args))) for op, args in queries]


def test_old_log_replays_with_the_same_outcomes(expected: dict[str, Any]) -> None:
    log = pickle.loads((FIXTURES / "metadata_log.pickle").read_bytes())
    st = MetadataState()
    results = [_json(_outcome(lambda op=op, args=args: st.apply(op, args))) for op, args in log]
    assert results == expected["results"]
    assert _answers(st, expected["queries"]) == expected["answers"]


def test_old_snapshot_loads_into_the_same_state(expected: dict[str, Any]) -> None:
    st = MetadataState()
    st.load((FIXTURES / "metadata_state.dump").read_bytes())
    assert _answers(st, expected["queries"]) == expected["answers"]
    again = MetadataState()
    again.load(st.dump())
    assert _answers(again, expected["queries"]) == expected["answers"]
    assert again.snapshot() == st.snapshot()


def test_old_snapshot_then_old_log_tail(expected: dict[str, Any]) -> None:
    """A node that restarts from the old snapshot applies further commands like before."""
    st = MetadataState()
    st.load((FIXTURES / "metadata_state.dump").read_bytes())
    log = pickle.loads((FIXTURES / "metadata_log.pickle").read_bytes())
    # Re-applying the log is the retried-commands case: same state afterwards.
    for op, args in log:
        _outcome(lambda op=op, args=args: st.apply(op, args))
    assert _answers(st, expected["queries"]) == expected["answers"]


def _old_rows(data: bytes) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The header and per-section rows of a version-2 stream, read without the state code."""
    stream = io.BytesIO(data)
    header = pickle.load(stream)
    sections: dict[str, list[Any]] = {}
    for name in ("blobs", "links", "manifests", "tags", "referrers", "uploads", "members"):
        rows = sections[name] = []
        while (chunk := pickle.load(stream)) is not None:
            rows += chunk
    return header, sections


def test_old_snapshot_records_load_as_named_records() -> None:
    """Pickled plain tuples come back as the records, told apart by type, and give back the
    same rows (records.py keeps blobs and manifests in a compact form)."""
    data = (FIXTURES / "metadata_state.dump").read_bytes()
    _, rows = _old_rows(data)
    st = MetadataState()
    st.load(data)
    assert all(type(r) in (Recipe, OneChunk) for r in st.blobs.values())
    manifests = [m for present in st.manifests.values() for m in present.values()]
    assert manifests and all(
        isinstance(m, Manifest) and type(m.recipe) in (Recipe, OneChunk) for m in manifests
    )
    assert {type(u) for u in st.uploads.values()} == {OpenUpload, ClosedUpload, CancelledUpload}
    assert all(type(m) is Member for m in st.members.values())
    # Same values as the old rows, field for field.
    old_uploads = dict(rows["uploads"])
    for upload, record in st.uploads.items():
        old = old_uploads[upload]
        if old[0] in ("open", "closed"):
            assert tuple(record) == old[1:]
        else:
            assert (record.repo, record.closed_at) == (old[1], old[3])
    assert {d: r.row(d) for d, r in st.blobs.items()} == dict(rows["blobs"])
    assert sorted(
        (repo, d, m.row(d)) for repo, present in st.manifests.items() for d, m in present.items()
    ) == sorted(rows["manifests"])
    assert {i: tuple(m) for i, m in st.members.items()} == dict(rows["members"])


def test_new_snapshots_keep_the_old_row_layout() -> None:
    """A snapshot written now has the rows the old version wrote, so either reads the other."""
    data = (FIXTURES / "metadata_state.dump").read_bytes()
    st = MetadataState()
    st.load(data)
    old_header, old = _old_rows(data)
    new_header, new = _old_rows(st.dump())
    assert new_header == old_header
    for name in old:
        assert sorted(map(repr, new[name])) == sorted(map(repr, old[name])), name


def test_version_1_snapshot_of_plain_tuples_loads(expected: dict[str, Any]) -> None:
    """Version 1 (one pickle of the containers, records as plain tuples) still loads."""
    _, rows = _old_rows((FIXTURES / "metadata_state.dump").read_bytes())
    links: dict[str, set[str]] = {}
    for repo, digest in rows["links"]:
        links.setdefault(repo, set()).add(digest)
    manifests: dict[str, dict[str, Any]] = {}
    for repo, digest, record in rows["manifests"]:
        manifests.setdefault(repo, {})[digest] = record
    tags: dict[str, dict[str, str]] = {}
    for repo, tag, digest in rows["tags"]:
        tags.setdefault(repo, {})[tag] = digest
    referrers: dict[str, dict[str, set[str]]] = {}
    for repo, subject, digest in rows["referrers"]:
        referrers.setdefault(repo, {}).setdefault(subject, set()).add(digest)
    v1 = {
        "version": 1,
        "blobs": dict(rows["blobs"]),
        "links": links,
        "manifests": manifests,
        "tags": tags,
        "referrers": referrers,
        "uploads": dict(rows["uploads"]),
        "members": dict(rows["members"]),
        "blob_bytes": sum(r[0] for _, r in rows["blobs"]),
    }
    st = MetadataState()
    st.load(pickle.dumps(v1, protocol=5))
    assert _answers(st, expected["queries"]) == expected["answers"]
