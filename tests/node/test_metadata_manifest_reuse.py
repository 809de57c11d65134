"""`manifest_put` with `reuse_stored` (node/metadata/state.py): the gateway wrote no chunks,
so the apply accepts only a digest recorded in `blobs` with the very recipe sent, and
refuses anything else with `ManifestBytesNotStored`, leaving the state unchanged. Entries
without the field (older logs) apply as before."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from cargohold import metadata_api as api
from cargohold.errors import ManifestBlobUnknown, ManifestBytesNotStored
from node.metadata.state import MetadataState

REPO = "library/app"
OCI = "application/vnd.oci.image.manifest.v1+json"
BODY = b'{"schemaVersion":2,"config":{}}'
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()


def recipe(*pieces: bytes) -> dict[str, Any]:
    return {
        "size": sum(len(p) for p in pieces),
        "chunks": [[hashlib.sha256(p).hexdigest(), len(p)] for p in pieces],
    }


def put(
    st: MetadataState,
    tag: str | None,
    reuse: bool | None,
    sent: dict[str, Any] | None = None,
    blobs: tuple[str, ...] = (),
) -> None:
    st.execute(
        api.ManifestPut(
            REPO,
            DIGEST,
            OCI,
            sent or recipe(BODY),
            blobs=blobs,
            tag=tag,
            now=5.0,
            audit={"time": 5.0, "actor": "ci"},
            reuse_stored=reuse,
        )
    )


@pytest.fixture
def st() -> MetadataState:
    return MetadataState()


def test_accepted_when_the_recipe_is_recorded_as_sent(st: MetadataState) -> None:
    put(st, "v1", None)
    put(st, "v2", True)
    put(st, None, True)  # by digest too
    tags = st.tags[REPO]
    assert tags == {"v1": DIGEST, "v2": DIGEST}
    assert st.pushed[REPO][DIGEST] == 5.0 and st.tag_pushed[REPO]["v2"] == 5.0
    # The same apply records the push as an unflagged one does.
    records = [json.loads(line)[2:] for line in st.audit.tail]  # [seq, prev, *event]
    assert [(e[5], e[7]) for e in records] == [("push", "v1"), ("push", "v2"), ("push", DIGEST)]


def test_refused_when_the_digest_is_not_recorded(st: MetadataState) -> None:
    before = st.dump()
    with pytest.raises(ManifestBytesNotStored) as info:
        put(st, "v1", True)
    assert info.value.detail == {"digest": DIGEST}
    assert st.dump() == before  # nothing recorded, not even the activity-log record


def test_refused_when_the_recorded_recipe_differs(st: MetadataState) -> None:
    half = len(BODY) // 2
    put(st, "v1", None, sent=recipe(BODY[:half], BODY[half:]))  # another chunk size
    before = st.dump()
    with pytest.raises(ManifestBytesNotStored):
        put(st, "v2", True)
    assert st.dump() == before


def test_refused_once_deleted_and_pruned(st: MetadataState) -> None:
    put(st, "v1", None)
    st.execute(api.ManifestDelete(REPO, DIGEST))
    # Deleted but not yet pruned: the recipe (and so its chunks, GC marks it) is there.
    put(st, "v1", True)
    st.execute(api.ManifestDelete(REPO, DIGEST))
    assert st.apply("gc_prune", {"blobs": [DIGEST]}) == {"pruned": 1}
    with pytest.raises(ManifestBytesNotStored):
        put(st, "v1", True)
    # What the gateway does next: the bytes written again, the command unflagged.
    put(st, "v1", None)
    assert st.tags[REPO] == {"v1": DIGEST}


def test_the_other_checks_still_apply(st: MetadataState) -> None:
    put(st, "v1", None)
    missing = "sha256:" + "0" * 64
    with pytest.raises(ManifestBlobUnknown):
        put(st, "v2", True, blobs=(missing,))
    assert "v2" not in st.tags[REPO]


def test_entries_without_the_field_travel_and_apply_as_before(st: MetadataState) -> None:
    plain = api.ManifestPut(REPO, DIGEST, OCI, recipe(BODY), tag="v1", now=5.0)
    args = json.loads(plain.args_json())  # as it sits in the Raft log
    assert "reuse_stored" not in args  # so journals written before it replay unchanged
    assert api.ManifestPut.from_args(args).reuse_stored is None
    st.apply("manifest_put", args)  # not recorded before, accepted: the bytes were written
    assert st.tags[REPO] == {"v1": DIGEST}
    flagged = api.ManifestPut(REPO, DIGEST, OCI, recipe(BODY), tag="v2", reuse_stored=True)
    flagged_args = json.loads(flagged.args_json())
    assert flagged_args["reuse_stored"] is True
    assert api.ManifestPut.from_args(flagged_args) == flagged
