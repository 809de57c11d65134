"""A fix for pysyncobj 0.3.17: a follower with a divergent log suffix never catches up.

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

`ConflictTruncation` is a mixin placed before `SyncObj` in a member class's bases; it reaches
pysyncobj's private (name-mangled) attributes, pinned by `pysyncobj==0.3.17`.
"""

from __future__ import annotations

import logging
from typing import Any

from pysyncobj import SyncObj

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
