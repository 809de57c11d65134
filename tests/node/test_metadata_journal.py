"""The Raft journal (node/metadata/journal.py): torn tails, truncations, compaction, the
term/vote record (also through pysyncobj's vote path), and the migration of journals in
pysyncobj's own format."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from node.metadata.journal import LOG_NAME, TERM_NAME, RaftJournal, TermStore, scan_log
from node.metadata.pysyncobj_seam import install_journal

EXTENT = 64 * 1024


def entries(n: int, start: int = 1, term: int = 1, size: int = 40) -> list[tuple[bytes, int, int]]:
    return [(bytes([i % 251]) * size + str(i).encode(), start + i, term) for i in range(n)]


def open_journal(path: Path, **kw: Any) -> RaftJournal:
    return RaftJournal(str(path), extent=EXTENT, floor=4096, **kw)


def write(path: Path, items: list[tuple[bytes, int, int]]) -> RaftJournal:
    j = open_journal(path)
    for e in items:
        j.add(*e)
    assert j.sync()
    return j


def test_entries_survive_reopen(tmp_path: Path) -> None:
    items = entries(50)
    write(tmp_path, items)._destroy()
    j = open_journal(tmp_path)
    assert list(j[:]) == items
    assert j.getRaftCommitIndex() == 1


def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    """A journal cut in the middle of its last record starts clean on the prefix."""
    items = entries(20)
    j = write(tmp_path, items)
    j._destroy()
    log = tmp_path / LOG_NAME
    data = log.read_bytes()
    last = scan_log(data).offsets[-1]
    # What a power cut mid-write leaves: the last record half there, the rest zeroes.
    torn = data[: last + 17] + b"\0" * (len(data) - last - 17)
    log.write_bytes(torn)
    j = open_journal(tmp_path)
    assert list(j[:]) == items[:-1]
    more = entries(5, start=20, term=2)
    for e in more:
        j.add(*e)
    assert j.sync()
    j._destroy()
    assert list(open_journal(tmp_path)[:]) == items[:-1] + more


def test_corrupt_record_cuts_the_log_there(tmp_path: Path) -> None:
    items = entries(10)
    write(tmp_path, items)._destroy()
    log = tmp_path / LOG_NAME
    data = bytearray(log.read_bytes())
    data[scan_log(bytes(data)).offsets[6] + 30] ^= 0xFF
    log.write_bytes(bytes(data))
    assert list(open_journal(tmp_path)[:]) == items[:6]


def test_truncated_entries_never_come_back(tmp_path: Path) -> None:
    """Entries deleted from the end, then re-added with the same sizes: the stale records
    behind them on disk are not read back (gen rises on every truncation)."""
    items = entries(10)
    j = write(tmp_path, items)
    j.deleteEntriesFrom(5)
    replaced = [(b"x" * len(c), idx, 2) for c, idx, _ in items[5:7]]
    for e in replaced:
        j.add(*e)
    assert j.sync()
    j._destroy()
    assert list(open_journal(tmp_path)[:]) == items[:5] + replaced


def test_truncation_alone_is_durable(tmp_path: Path) -> None:
    j = write(tmp_path, entries(10))
    j.deleteEntriesFrom(3)
    assert j.dirty
    assert j.sync()
    j._destroy()
    assert len(open_journal(tmp_path)) == 3


def test_clear_then_add(tmp_path: Path) -> None:
    j = write(tmp_path, entries(10))
    j.clear()
    head = entries(2, start=500, term=3)
    for e in head:
        j.add(*e)
    assert j.sync()
    j._destroy()
    assert list(open_journal(tmp_path)[:]) == head


def test_compaction_rewrites_and_renames(tmp_path: Path) -> None:
    items = entries(30)
    j = write(tmp_path, items)
    j.deleteEntriesTo(25)
    assert list(j[:]) == items[25:]
    more = entries(3, start=31)
    for e in more:
        j.add(*e)
    assert j.sync()
    j._destroy()
    assert list(open_journal(tmp_path)[:]) == items[25:] + more
    assert not (tmp_path / (LOG_NAME + ".new")).exists()


def test_space_is_claimed_in_extents(tmp_path: Path) -> None:
    """The file is never sparse: every byte of its size is allocated before use."""
    j = write(tmp_path, entries(3000, size=100))  # ~400 KiB: several extents
    st = os.stat(tmp_path / LOG_NAME)
    assert st.st_size % EXTENT == 0
    assert st.st_blocks * 512 >= st.st_size
    space = j.space()
    assert space.claimed == st.st_size and space.room >= 0 and not space.low


def test_unsynced_appends_are_pending_until_sync(tmp_path: Path) -> None:
    j = write(tmp_path, entries(3))
    j.add(b"late", 4, 1)
    assert j.dirty
    # A process killed before the sync left nothing of it on disk.
    assert len(scan_log((tmp_path / LOG_NAME).read_bytes()).entries) == 3
    assert j.sync() and not j.dirty
    assert len(scan_log((tmp_path / LOG_NAME).read_bytes()).entries) == 4


def test_term_store_keeps_the_newest_intact_slot(tmp_path: Path) -> None:
    path = str(tmp_path / TERM_NAME)
    t = TermStore(path)
    t.store(4, "n2:7100", 10)
    t.store(5, None, 12)
    t.close()
    t = TermStore(path)
    assert (t.term, t.vote, t.commit) == (5, None, 12)
    t.close()
    # Tear the newest slot (seq 2 lives in slot 0): the previous record is read.
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff\xff")
    t = TermStore(path)
    assert (t.term, t.vote, t.commit) == (4, "n2:7100", 10)
    assert os.path.getsize(path) == 1024


class Recorder(Transport):  # type: ignore[misc]
    """A transport that delivers nothing and records what pysyncobj sends."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def tryGetReady(self) -> None:
        pass

    @property
    def ready(self) -> bool:
        return True

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append((node.id, message))
        return True

    def addNode(self, node: Any) -> None:
        pass

    def dropNode(self, node: Any) -> None:
        pass

    def destroy(self) -> None:
        pass


def voter(raft_dir: Path) -> SyncObj:
    install_journal()
    conf = SyncObjConf(journalFile=RaftJournal(str(raft_dir), extent=EXTENT), autoTick=False)
    return SyncObj("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], conf, transportClass=Recorder)


def request_vote(obj: SyncObj, candidate: str, term: int) -> list[dict[str, Any]]:
    transport = obj._SyncObj__transport
    transport.sent.clear()
    obj._SyncObj__onMessageReceived(
        TCPNode(candidate),
        {"type": "request_vote", "term": term, "last_log_index": 1, "last_log_term": 0},
    )
    return [m for _, m in transport.sent if m["type"] == "response_vote"]


def test_a_node_cut_right_after_voting_does_not_vote_again(tmp_path: Path) -> None:
    """pysyncobj's own vote path on our journal: the vote is on disk when it is sent, so a
    copy of the directory taken at that instant (what a power cut leaves; every write is
    fdatasync'ed first) refuses a second candidate in the same term."""
    first = voter(tmp_path / "raft")
    assert request_vote(first, "127.0.0.1:2", 5) == [{"type": "response_vote", "term": 5}]
    shutil.copytree(tmp_path / "raft", tmp_path / "after-cut")  # no close, no flush
    again = voter(tmp_path / "after-cut")
    assert again.raftCurrentTerm == 5
    assert request_vote(again, "127.0.0.1:3", 5) == []
    # A later term is a new election: it votes again.
    assert request_vote(again, "127.0.0.1:3", 6) == [{"type": "response_vote", "term": 6}]


# -- journals written by pysyncobj's FileJournal ----------------------------------------------
def old_journal(raft_dir: Path, items: list[tuple[bytes, int, int]]) -> None:
    raft_dir.mkdir(parents=True, exist_ok=True)
    old = FileJournal(str(raft_dir / "journal"))
    for e in items:
        old.add(*e)
    old.setRaftCommitIndex(items[-1][1])
    old.setCurrentTerm(7, "127.0.0.1:2")
    old._destroy()


def test_old_pysyncobj_journal_is_migrated(tmp_path: Path) -> None:
    items = entries(200)
    old_journal(tmp_path, items)
    j = open_journal(tmp_path)
    assert list(j[:]) == items
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:2")
    assert j.getRaftCommitIndex() == items[-1][1]
    assert not (tmp_path / "journal").exists() and not (tmp_path / "journal.meta").exists()
    j._destroy()
    assert list(open_journal(tmp_path)[:]) == items


def test_interrupted_migration_runs_again(tmp_path: Path) -> None:
    """A kill before `log` was renamed into place leaves the old journal: migrated again."""
    items = entries(5)
    old_journal(tmp_path, items)
    (tmp_path / (LOG_NAME + ".new")).write_bytes(b"half")
    assert list(open_journal(tmp_path)[:]) == items


def test_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOG_NAME).write_bytes(b"garbage" + struct.pack("<Q", 1))
    with pytest.raises(ValueError, match="not a cargohold raft log"):
        open_journal(tmp_path)


def test_only_a_tail_of_the_entries_stays_in_ram(tmp_path: Path) -> None:
    """Older entries are read back from the file: same entries, bounded RAM."""
    j = RaftJournal(str(tmp_path), fsync=False)
    big = [(f"cmd{i}".encode() * 50, i + 1, 1 + i // 700) for i in range(3000)]
    for command, idx, term in big:
        j.add(command, idx, term)
        if idx % 100 == 0:
            j.sync()
    j.sync()
    assert len(j) == 3000 and j.ram_entries() <= 1024
    assert j[0] == big[0] and j[-1] == big[-1] and j[1500] == big[1500]
    assert list(j[10:20]) == big[10:20]
    assert j[2990:] == big[2990:]
    assert list(j[:]) == big
    view = j[5:]
    assert len(view) == 2995 and view[0] == big[5] and view[-1] == big[-1]
    assert view[:3] == big[5:8]
    # Truncation below the RAM tail keeps the newest kept entry readable; appends go on.
    j.deleteEntriesFrom(1000)
    assert len(j) == 1000 and j[-1] == big[999]
    j.add(b"new", 1001, 9)
    j.sync()
    assert j[-1] == (b"new", 1001, 9) and j[999] == big[999]
    # Compaction rewrites the file from the kept entries, read back where needed.
    j.deleteEntriesTo(400)
    assert len(j) == 601 and j[0] == big[400] and j[599] == big[999]
    j._destroy()
    again = RaftJournal(str(tmp_path), fsync=False)
    assert list(again[:]) == [*big[400:1000], (b"new", 1001, 9)]
    assert again.ram_entries() <= 1024
    again._destroy()
