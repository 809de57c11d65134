"""ConflictTruncation (node/metadata/pysyncobj_seam.py) on a stand-in for pysyncobj's private
log state: the follower-side rule without processes or network namespaces, so it runs in the
unit phase too. The real-process regression test is test_raft_durability_rejoin.py.
"""

from __future__ import annotations

from typing import Any

from node.metadata.pysyncobj_seam import ConflictTruncation


class FakeConf:
    dynamicMembershipChange = True


class FakeFollower(ConflictTruncation):
    """The pysyncobj attributes the mixin reads, over a list log of (command, index, term)."""

    def __init__(self, terms: list[int], commit: int, term: int) -> None:
        self.log = [(f"cmd{i}".encode(), i, t) for i, t in enumerate(terms, start=1)]
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__raftCommitIndex = commit
        self._SyncObj__conf = FakeConf()
        self.reverted: list[Any] = []

    def _SyncObj__getEntries(self, from_idx: int) -> list[tuple[bytes, int, int]]:
        return [e for e in self.log if e[1] >= from_idx]

    def _SyncObj__deleteEntriesFrom(self, from_idx: int) -> None:
        self.log = [e for e in self.log if e[1] < from_idx]

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> Any:
        return "change" if command == b"cmd5" else None

    def _SyncObj__doChangeCluster(self, request: Any, reverse: bool = False) -> None:
        self.reverted.append((request, reverse))


def append(prev_idx: int, prev_term: int, term: int) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 3,
        "prevLogIdx": prev_idx,
        "prevLogTerm": prev_term,
        "entries": [],
    }


def test_conflicting_uncommitted_suffix_is_dropped_with_its_membership_changes() -> None:
    # Entries 4..6 were appended in term 1 by a cut-off leader and never committed.
    follower = FakeFollower([1, 1, 1, 1, 1, 1], commit=3, term=3)
    follower._drop_conflicting_suffix(append(prev_idx=4, prev_term=2, term=3))
    assert [e[1] for e in follower.log] == [1, 2, 3]
    assert follower.reverted == [("change", True)]


def test_matching_or_missing_prev_entry_changes_nothing() -> None:
    follower = FakeFollower([1, 1, 2, 2], commit=2, term=2)
    follower._drop_conflicting_suffix(append(prev_idx=4, prev_term=2, term=2))  # matches
    follower._drop_conflicting_suffix(append(prev_idx=9, prev_term=2, term=2))  # beyond log
    assert len(follower.log) == 4 and follower.reverted == []


def test_stale_leader_and_committed_entries_are_never_truncated() -> None:
    follower = FakeFollower([1, 1, 1, 1], commit=2, term=5)
    follower._drop_conflicting_suffix(append(prev_idx=3, prev_term=4, term=4))  # older term
    assert len(follower.log) == 4
    follower._drop_conflicting_suffix(append(prev_idx=2, prev_term=4, term=5))  # committed
    assert len(follower.log) == 4
