"""The activity log's chain (cargohold/audit.py) and its state (node/metadata/audit_log.py):
`verify` catches each kind of tampering, in the in-memory tail and in sealed segments."""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

import pytest

from cargohold import audit
from cargohold.errors import RequestInvalid
from cargohold.metadata_api import AuditHeadInfo
from node.gc import mark
from node.metadata.state import MetadataState

D = "sha256:" + "ab" * 32


def _ev(i: int, action: str = "pull") -> list[Any]:
    return audit.event(
        action,
        time=1000.0 + i,
        actor=f"user{i % 3}",
        actor_kind="user",
        client="10.0.0.1",
        user_agent="docker/27",
        repository="team/app",
        reference=f"v{i}",
        digest=D,
    )


class Log:
    """A state with `n` records, `sealed` of them in segments of `per` (blobs in a dict)."""

    def __init__(self, n: int = 30, sealed: int = 20, per: int = 10) -> None:
        self.st = MetadataState()
        self.st.apply("audit_append", {"events": [_ev(i) for i in range(n)]})
        self.blobs: dict[str, bytes] = {}
        for _ in range(sealed // per):
            log = self.st.audit
            data = audit.segment_bytes(log.tail[:per])
            digest = audit.segment_digest(data)
            self.blobs[digest] = data
            first = log.tail_first
            recipe = {"size": len(data), "chunks": [["cd" * 32, len(data)]]}
            args = {"first": first, "last": first + per - 1, "digest": digest, "recipe": recipe}
            assert self.st.apply("audit_seal", {**args, "now": 5000.0}) == {"sealed": True}

    def head(self) -> AuditHeadInfo:
        return AuditHeadInfo.from_json(self.st.query("audit_head", {}))

    def verify(self, anchor: tuple[int, str] | None = None) -> audit.Report:
        head = self.head()
        return audit.verify(
            head.base_seq,
            head.base_hash,
            head.segments,
            lambda seg: self.blobs[seg.digest],
            list(self.st.audit.tail),
            head.head_seq,
            head.head_hash,
            anchor,
        )

    def rewrite_segment(self, index: int, edit: Any) -> None:
        """Replace the bytes stored for segment `index` (what a disk edit would do)."""
        digest = self.st.audit.segments[index].digest
        lines = audit.segment_lines(self.blobs[digest])
        self.blobs[digest] = audit.segment_bytes(edit(lines))


def _edit_line(line: bytes) -> bytes:
    row = json.loads(line)
    row[9] = "someone/else"  # the repository
    return json.dumps(row, separators=(",", ":")).encode()


def test_an_untouched_chain_verifies() -> None:
    log = Log()
    report = log.verify()
    assert report.ok, report.problems
    assert (report.checked, report.segments, report.head_seq) == (30, 2, 30)
    limited = AuditHeadInfo.from_json(log.st.query("audit_head", {"segments": 1}))
    assert (len(limited.segments), limited.segment_count) == (1, 2)
    assert limited.segments[0] == log.head().segments[0]


# Each kind of tampering, applied to a list of canonical lines.
TAMPERING = {
    "edit": lambda lines: [lines[0], _edit_line(lines[1]), *lines[2:]],
    "remove": lambda lines: [lines[0], *lines[2:]],
    "insert": lambda lines: [lines[0], lines[1], lines[1], *lines[2:]],
    "reorder": lambda lines: [lines[1], lines[0], *lines[2:]],
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_in_memory_is_detected(kind: str) -> None:
    log = Log()
    log.st.audit.tail[:] = TAMPERING[kind](log.st.audit.tail)
    report = log.verify()
    assert not report.ok
    assert any(p.startswith("tail") for p in report.problems), report.problems


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_in_a_sealed_segment_is_detected(kind: str) -> None:
    log = Log()
    log.rewrite_segment(0, TAMPERING[kind])
    report = log.verify()
    assert not report.ok
    assert any(p.startswith("segment 1-10") for p in report.problems), report.problems


def test_edit_with_rehashed_following_records_is_still_caught_at_the_head() -> None:
    """Re-chaining every record after an edit (in memory) does not reach the head."""
    log = Log(n=10, sealed=0)
    tail = log.st.audit.tail
    edited = [json.loads(line) for line in tail]
    edited[3][9] = "other/repo"
    prev = audit.GENESIS
    out = []
    for row in edited:
        row[1] = prev
        line = json.dumps(row, separators=(",", ":")).encode()
        out.append(line)
        prev = audit.line_hash(line)
    tail[:] = out
    report = log.verify()
    assert not report.ok
    assert any("the head is" in p for p in report.problems)


def test_an_anchor_kept_off_the_cluster_catches_a_consistent_rewrite() -> None:
    """Someone who rewrites a record, re-chains everything after it and moves the head in
    the state passes `verify`; not `verify --anchor` with a head exported before."""
    log = Log(n=30, sealed=20)
    anchor = (log.head().head_seq, log.head().head_hash)
    log.st.apply("audit_append", {"events": [_ev(i) for i in range(30, 35)]})
    report = log.verify(anchor)
    assert report.ok and report.anchor_checked, report.problems  # the log grew past it
    tail = log.st.audit.tail
    rows = [json.loads(line) for line in tail]
    rows[2][9] = "other/repo"  # record 23, in memory
    prev = log.st.audit.segments[-1].hash
    out = []
    for row in rows:
        row[1] = prev
        line = json.dumps(row, separators=(",", ":")).encode()
        out.append(line)
        prev = audit.line_hash(line)
    tail[:] = out
    log.st.audit.head_hash = prev  # every node's state rewritten alike
    assert log.verify().ok  # consistent: nothing inside the cluster tells
    report = log.verify(anchor)
    assert not report.ok and not report.anchor_checked
    assert any("rewritten" in p for p in report.problems), report.problems
    assert any("past the head" in p for p in log.verify((99, "0" * 64)).problems)
    # An anchor inside a sealed segment is checked too; one retention forgot cannot be.
    inside = Log(n=30, sealed=20)
    assert inside.verify((10, inside.st.audit.segments[0].hash)).anchor_checked
    assert inside.st.apply("audit_expire", {"before": 1015.0}) == {"expired": 1}
    forgotten = inside.verify((5, "0" * 64))
    assert any("before the retained chain" in p for p in forgotten.problems)


def test_a_removed_or_unreadable_segment_is_reported() -> None:
    log = Log()
    log.blobs.clear()
    report = log.verify()
    assert not report.ok
    assert sum("unreadable" in p for p in report.problems) == 2


def test_seal_checks_the_digest_against_its_own_records() -> None:
    log = Log(n=10, sealed=0)
    data = audit.segment_bytes(log.st.audit.tail[:5])
    recipe = {"size": len(data), "chunks": [["cd" * 32, len(data)]]}
    forged = audit.segment_bytes([_edit_line(log.st.audit.tail[0]), *log.st.audit.tail[1:5]])
    with pytest.raises(RequestInvalid):  # not the records' digest
        log.st.apply(
            "audit_seal",
            {
                "first": 1,
                "last": 5,
                "digest": audit.segment_digest(forged),
                "recipe": recipe,
                "now": 1.0,
            },
        )
    with pytest.raises(RequestInvalid):  # not the oldest records
        log.st.apply(
            "audit_seal",
            {
                "first": 2,
                "last": 6,
                "digest": audit.segment_digest(data),
                "recipe": recipe,
                "now": 1,
            },
        )
    args = {"first": 1, "last": 5, "digest": audit.segment_digest(data), "recipe": recipe}
    assert log.st.apply("audit_seal", {**args, "now": 1.0}) == {"sealed": True}
    assert log.st.apply("audit_seal", {**args, "now": 2.0}) == {"sealed": False}  # a retry
    assert log.head().tail_first == 6


def test_retention_moves_the_base_and_the_rest_still_verifies() -> None:
    log = Log(n=30, sealed=20)
    # Records 1-10 are from t=1000..1009, 11-20 from 1010..1019.
    assert log.st.apply("audit_expire", {"before": 1015.0}) == {"expired": 1}
    head = log.head()
    assert (head.base_seq, len(head.segments)) == (10, 1)
    assert log.verify().ok


def test_events_are_checked() -> None:
    st = MetadataState()
    for bad in ([1.0], [*_ev(1)[:-1], 7], ["t", *_ev(1)[1:]], [*_ev(1)[:5], "", *_ev(1)[6:]]):
        with pytest.raises(RequestInvalid):
            st.apply("audit_append", {"events": [bad]})
    assert st.audit.head_seq == 0


def test_snapshot_v4_roundtrip_and_gc_keeps_segments() -> None:
    log = Log()
    again = MetadataState()
    again.load(log.st.dump())
    assert again.snapshot() == log.st.snapshot()
    assert again.query("audit_head", {}) == log.st.query("audit_head", {})
    assert bytes.fromhex("cd" * 32) in mark(again.snapshot())
    # A state without audit records still writes a snapshot older versions read.
    plain = MetadataState()
    assert pickle.load(io.BytesIO(plain.dump()))["version"] == 2
    assert pickle.load(io.BytesIO(log.st.dump()))["version"] == 4


def test_records_of_write_commands_with_an_actor() -> None:
    st = MetadataState()
    recipe = {"size": 3, "chunks": [["cd" * 32, 3]]}
    actor = {"time": 7.0, "actor": "alice", "actor_kind": "user", "client": "10.0.0.2"}
    m1, m2 = "sha256:" + "01" * 32, "sha256:" + "02" * 32
    for digest in (m1, m2):
        st.apply(
            "manifest_put",
            {
                "repo": "team/app",
                "digest": digest,
                "media_type": "application/x",
                "recipe": recipe,
                "tag": "v1",
                "audit": actor,
            },
        )
    st.apply("tag_delete", {"repo": "team/app", "tag": "v1", "audit": actor})
    st.apply("manifest_delete", {"repo": "team/app", "digest": m1, "audit": actor})
    # Without an actor context (older log entries): no record.
    st.apply("manifest_delete", {"repo": "team/app", "digest": m2})
    hashed = "$2b$04$" + "a" * 53
    st.apply("user_put", {"name": "bob", "password_hash": hashed, "audit": actor})
    st.apply("namespace_put", {"name": "team", "visibility": "public", "audit": actor})
    st.apply("grant_set", {"namespace": "team", "user": "bob", "role": "reader", "audit": actor})
    rows = [audit.decode(line) for line in st.audit.tail]
    got = [(r["action"], r["reference"], r["digest"], r["detail"]) for r in rows]
    assert got == [
        ("push", "v1", m1, ""),
        ("push", "v1", m2, f"moved from {m1}"),
        ("delete", "v1", m2, "tag"),
        ("delete", m1, m1, "manifest"),
        ("admin", "user:bob", "", "created"),
        ("admin", "namespace:team", "", "created public"),
        ("admin", "namespace:team", "", "grant bob reader"),
    ]
    assert {(r["actor"], r["client"], r["time"]) for r in rows} == {("alice", "10.0.0.2", 7.0)}
    # A refused command records nothing.
    with pytest.raises(RequestInvalid):
        st.apply("user_put", {"name": "carol", "audit": actor})
    assert st.audit.head_seq == 7


def test_each_pull_of_a_pull_record_batch_is_a_record() -> None:
    st = MetadataState()
    pulls = [
        ["team/app", D, "v1", 11.0, "robot$ci", "10.0.0.3", "containerd/1.7"],
        ["team/app", D, None, 12.0, None, None, None],
        ["team/app", D, None, 13.0, "bob", "10.0.0.4", "docker/27"],
    ]
    st.apply("pull_record", {"pulls": pulls})
    rows = [audit.decode(line) for line in st.audit.tail]
    got = [(r["action"], r["actor"], r["actor_kind"], r["reference"], r["time"]) for r in rows]
    assert got == [
        ("pull", "robot$ci", "robot", "v1", 11.0),
        ("pull", "", "anonymous", D, 12.0),
        ("pull", "bob", "user", D, 13.0),
    ]
    assert rows[0]["client"] == "10.0.0.3" and rows[0]["user_agent"] == "containerd/1.7"
