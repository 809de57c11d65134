"""Everything that reaches into pysyncobj 0.3.17's internals, in one place.

pysyncobj keeps its Raft state in name-mangled private attributes (`_SyncObj__...`); this
module is the only one that touches them (pinned by `pysyncobj==0.3.17`). It provides:

- `install_journal`: pysyncobj builds its journal with `createJournal(conf.journalFile)`;
  the patched factory passes a ready `Journal` object (node/metadata/journal.py) through.
- `DurableTicks`, a mixin for the member class (before `SyncObj` in its bases):
  every tick first makes the log durable (`journal.sync()`), so the leader never counts its
  own unsynced entries toward a commit (pysyncobj computes the commit index at the start of
  a tick, counting itself), and again after the poll that handled the messages, so a
  follower's AppendEntries acknowledgements, held meanwhile by `SyncingTransport`, leave
  only once what they acknowledge is on disk. One sync covers every entry appended since
  the last (group commit). A leader whose log cannot be made durable does not tick (no
  commit, no heartbeat) until it can; a follower that cannot sync acknowledges only up to
  what is on disk.
  While the log is short of space, the leader refuses queued commands with `NO_SPACE`.
- `SyncingTransport`: pysyncobj's TCP transport, holding `next_node_idx` messages (the
  AppendEntries acknowledgement) while the journal has unsynced entries.
- read-only accessors (`RaftInternals`) the member needs: the log, the peers, the
  leader's last contact with each follower (a barrier without a log append), the wake-up
  pipe and the tick thread.
- `ConflictTruncation`, a fix for a follower with a divergent log suffix (below).

ConflictTruncation: a follower with a divergent log suffix never catches up in 0.3.17.
The case: a leader cut off from its peers (a partition) appends a few commands it can never
commit; the majority elects a new leader and commits more than one append batch
(`appendEntriesBatchSizeBytes`, 64 KiB) of entries. After the partition heals, the old
leader is a follower whose last entries conflict with the new leader's log.

Upstream behaviour, with `appendEntriesUseBatch=False` (our configuration): the leader sends
the whole gap in several `append_entries` messages in one go, moving its `nextIndex` for the
follower optimistically to the end. The follower answers the first message with "term
mismatch at prevLogIdx P: retry from P" and every later message (whose prevLogIdx it lacks)
with "retry from my last index + 1". The leader applies the answers in order, so the last
one wins and `nextIndex` goes back to where it was; the walk back towards the matching
prefix never progresses. The follower stays stuck for ever: it keeps its vote, answers
heartbeats, but applies nothing and every linearizable read through it times out. Seen in
tests/cluster/test_chaos_partition.py and reproduced by test_raft_durability_rejoin.py.

The fix follows the Raft paper (§5.3, AppendEntries step 3): when the current leader's
`prevLogIdx` entry conflicts with ours, delete that entry and everything after it before
pysyncobj handles the message. Those entries are not committed (a committed entry is in
every later leader's log, at the same index and term), so dropping them is safe; membership
changes among them are rolled back as pysyncobj does for a truncation. pysyncobj then finds
no entry at `prevLogIdx` and answers "retry from P": every answer now names the same or a
smaller index, so the walk back converges.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pysyncobj.syncobj as _syncobj
from pysyncobj import SyncObj
from pysyncobj.journal import Journal
from pysyncobj.transport import TCPTransport

from cargohold.log import log_event

logger = logging.getLogger("cargohold.node.raft")


class ConflictTruncation:
    """Drop a conflicting log suffix before pysyncobj handles `append_entries`."""

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "append_entries":
            self._drop_conflicting_suffix(message)
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _drop_conflicting_suffix(self, message: dict[str, Any]) -> None:
        if "prevLogIdx" not in message or message.get("transmission") not in (None, "finish"):
            return
        me: Any = self
        if message.get("term", -1) < me._SyncObj__raftCurrentTerm:
            return  # a stale leader: pysyncobj ignores the message
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        entries = me._SyncObj__getEntries(prev_idx)
        if not entries or entries[0][2] == prev_term:
            return
        if prev_idx <= me._SyncObj__raftCommitIndex:
            # A committed entry conflicting with the leader's log would be a Raft safety
            # violation; never drop it here, leave the message to pysyncobj.
            log_event(
                logger,
                "raft.committed_entry_conflicts",
                logging.CRITICAL,
                index=prev_idx,
                commit_index=me._SyncObj__raftCommitIndex,
            )
            return
        if me._SyncObj__conf.dynamicMembershipChange:
            for entry in reversed(entries):
                change = me._SyncObj__parseChangeClusterRequest(entry[0])
                if change is not None:
                    me._SyncObj__doChangeCluster(change, reverse=True)
        me._SyncObj__deleteEntriesFrom(prev_idx)
        log_event(
            logger,
            "raft.conflicting_suffix_dropped",
            logging.WARNING,
            from_index=prev_idx,
            entries=len(entries),
        )


# -- the journal seam ---------------------------------------------------------------------------
# A FAIL_REASON code of our own (pysyncobj's are 0..9): the leader's log is short of space.
NO_SPACE = 100
_create_journal = _syncobj.createJournal


def _journal_factory(journal_file: Any = None) -> Any:
    if isinstance(journal_file, Journal):
        return journal_file
    return _create_journal(journal_file)


def install_journal() -> None:
    """Let `SyncObjConf(journalFile=<a Journal object>)` use that object as the Raft log."""
    _syncobj.createJournal = _journal_factory


install_journal()


class SyncingTransport(TCPTransport):
    """Holds AppendEntries acknowledgements (`next_node_idx`) until the journal is synced.

    Other messages leave at once; held ones keep their order (the leader acts on the last
    answer it gets)."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._journal: Any = syncObj._SyncObj__raftLog
        self._held: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        if (
            isinstance(message, dict)
            and message.get("type") == "next_node_idx"
            and (self._held or self._journal.dirty)
        ):
            self._held.append((node, message))
            return True
        return bool(super().send(node, message))

    def release(self, synced: bool) -> None:
        """Send what was held. When the journal could not be synced (no space), an
        acknowledgement claims no more than what is on disk: the leader keeps hearing from
        this follower (its leadership and reads depend on that) but does not count
        entries it could not store."""
        held, self._held = self._held, []
        if not synced:
            limit = self._journal.synced_index() + 1
            held = [
                (node, dict(message, next_node_idx=min(message["next_node_idx"], limit)))
                if message.get("success")
                else (node, message)
                for node, message in held
            ]
        for node, message in held:
            super().send(node, message)


class DurableTicks:
    """Sync points around every pysyncobj tick; see the module docstring."""

    def _onTick(self, timeToWait: float = 0.0) -> None:
        me: Any = self
        if not self._durable_point() and me._SyncObj__raftState == _LEADER:
            # Our own entries are not on disk: counting ourselves toward a commit would
            # lie. Stay silent (no commit, no heartbeat) until the log can be synced.
            time.sleep(timeToWait or 0.05)
            return
        SyncObj._onTick(self, timeToWait)
        self._durable_point()

    def _durable_point(self) -> bool:
        me: Any = self
        synced = bool(me._SyncObj__raftLog.sync())
        transport = me._SyncObj__transport
        if isinstance(transport, SyncingTransport):
            transport.release(synced)
        return synced

    def _checkCommandsToApply(self) -> None:
        me: Any = self
        if me._SyncObj__raftState == _LEADER and me._SyncObj__raftLog.low:
            commands = me._SyncObj__commandsQueue
            while True:
                try:
                    _, callback = commands.get_nowait()
                except queue.Empty:
                    break
                me._SyncObj__callErrCallback(NO_SPACE, callback)
            return
        SyncObj._checkCommandsToApply(self)


_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class RaftInternals:
    """Read-only views of pysyncobj state a member needs (see the module docstring)."""

    def _raft_log(self) -> Any:
        me: Any = self
        return me._SyncObj__raftLog

    def _has_peers(self) -> bool:
        me: Any = self
        return bool(me._SyncObj__otherNodes)

    def _wake_tick(self) -> None:
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    def _tick_thread(self) -> threading.Thread | None:
        me: Any = self
        thread: threading.Thread | None = me._SyncObj__thread
        return thread

    def _majority_heard_since(self, since: float) -> bool:
        """Leader only: a majority (counting this node) answered after `since`
        (time.monotonic), so no other leader can have been elected before then."""
        me: Any = self
        for _ in range(5):
            try:
                others = list(me._SyncObj__otherNodes)
                heard = dict(me._SyncObj__lastResponseTime)
                break
            except RuntimeError:  # resized by the tick thread meanwhile
                continue
        else:
            return False
        count = 1 + sum(1 for node in others if heard.get(node, 0.0) > since)
        return count > (len(others) + 1) / 2

    def _committed_in_term(self) -> bool:
        """Leader only: its commit index covers an entry of its own term (its no-op), so
        the commit index is the cluster's."""
        me: Any = self
        entries = me._SyncObj__getEntries(me._SyncObj__raftCommitIndex, 1)
        return bool(entries) and entries[0][2] == me._SyncObj__raftCurrentTerm
