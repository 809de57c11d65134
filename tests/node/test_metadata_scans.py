"""The scan queue in the metadata state (node/metadata/scans.py): queued by manifest_put,
claimed with a lease, taken over when the lease ends, failed after max attempts, only the
holder's result counts, forgotten with the manifest, kept by snapshots."""

from __future__ import annotations

import hashlib

import pytest

from cargohold import metadata_api as api
from cargohold.errors import ManifestUnknown, RequestInvalid
from node.metadata.state import MetadataState

REPO = "lib/app"


def put(state: MetadataState, name: bytes, now: float, scan: bool | None = True) -> str:
    digest = "sha256:" + hashlib.sha256(name).hexdigest()
    recipe: api.Recipe = {
        "size": len(name),
        "chunks": [[hashlib.sha256(name).hexdigest(), len(name)]],
    }
    state.execute(
        api.ManifestPut(
            REPO, digest, "application/vnd.oci.image.manifest.v1+json", recipe, now=now, scan=scan
        )
    )
    return digest


def claim(
    state: MetadataState,
    worker: str,
    now: float,
    limit: int = 10,
    lease: float = 60.0,
    attempts: int = 3,
) -> list[str]:
    return [c.digest for c in state.execute(api.ScanClaim(worker, now, lease, limit, attempts))]


def record(state: MetadataState, digest: str) -> api.ScanInfo:
    [info] = state.execute(api.ScanList(REPO, digest))
    return info


def test_pushes_queue_once_and_claims_go_oldest_first() -> None:
    state = MetadataState()
    a = put(state, b"a", 2.0)
    b = put(state, b"b", 1.0)
    put(state, b"c", 3.0, scan=None)  # scanning off at that gateway
    put(state, b"a", 9.0)  # pushed again: not queued twice
    assert claim(state, "w1", 10.0, limit=1) == [b]
    assert claim(state, "w2", 10.0) == [a]
    assert claim(state, "w3", 10.0) == []
    info = record(state, a)
    assert (info.state, info.worker, info.attempts, info.lease_until) == ("scanning", "w2", 1, 70.0)


def test_a_lost_lease_is_taken_over_and_the_old_holder_is_ignored() -> None:
    state = MetadataState()
    d = put(state, b"a", 1.0)
    assert claim(state, "w1", 10.0) == [d]
    assert claim(state, "w2", 69.0) == []  # lease still running
    assert claim(state, "w2", 70.0) == [d]  # w1 died: taken over
    late = api.ScanFinish(REPO, d, "w1", 71.0, "done", "", d)
    assert state.execute(late) is False
    assert record(state, d).state == "scanning"
    done = api.ScanFinish(REPO, d, "w2", 72.0, "done", "", d)
    assert state.execute(done) is True
    assert state.execute(done) is True  # a retried command: same answer, no change
    info = record(state, d)
    assert (info.state, info.sbom, info.attempts, info.worker) == ("done", d, 2, "w2")
    assert claim(state, "w3", 1000.0) == []


def test_transient_errors_retry_after_a_delay_then_give_up() -> None:
    state = MetadataState()
    d = put(state, b"a", 1.0)
    assert claim(state, "w", 10.0, attempts=2) == [d]
    state.execute(api.ScanFinish(REPO, d, "w", 11.0, "queued", "cluster unavailable", "", 5.0))
    assert claim(state, "w", 15.0, attempts=2) == []
    assert claim(state, "w", 16.0, attempts=2) == [d]
    assert claim(state, "w", 100.0, attempts=2) == []  # lease ended twice: given up
    info = record(state, d)
    assert info.state == "failed"
    assert info.error.startswith("gave up after 2 attempts")


def test_failed_is_final_until_enqueued_again() -> None:
    state = MetadataState()
    d = put(state, b"a", 1.0)
    claim(state, "w", 2.0)
    state.execute(api.ScanFinish(REPO, d, "w", 3.0, "failed", "not a tar layer"))
    assert (record(state, d).state, record(state, d).error) == ("failed", "not a tar layer")
    assert claim(state, "w", 99.0) == []
    state.execute(api.ScanEnqueue(REPO, d, 100.0))
    assert record(state, d).state == "queued"
    assert claim(state, "w", 101.0) == [d]
    with pytest.raises(ManifestUnknown):
        state.execute(api.ScanEnqueue(REPO, "sha256:" + "0" * 64, 100.0))
    with pytest.raises(RequestInvalid):  # done without the SBOM's digest
        api.decode_command(
            "scan_finish", {"repo": REPO, "digest": d, "worker": "w", "now": 1, "state": "done"}
        )


def test_delete_forgets_and_snapshots_keep_the_queue() -> None:
    state = MetadataState()
    a, b, c = put(state, b"a", 1.0), put(state, b"b", 2.0), put(state, b"c", 3.0)
    claim(state, "w", 5.0, limit=1)
    state.execute(api.ManifestDelete(REPO, c))
    assert [i.digest for i in state.execute(api.ScanList())] == sorted([a, b])
    reloaded = MetadataState()
    reloaded.load(state.dump())
    assert reloaded.execute(api.ScanList()) == state.execute(api.ScanList())
    # The reloaded queue goes on where it was: `a` is leased, `b` is next.
    assert claim(reloaded, "w2", 6.0) == [b]
    assert claim(reloaded, "w2", 65.0) == [a]
    empty = MetadataState()
    assert b"scans" not in empty.dump()  # left out while empty (older code reads it)
