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
  While the log cannot grow (`_log_cannot_grow`: the leader's own log is short of space, or
  so many followers' are that no majority is left to store an entry), the leader refuses
  queued commands with `NO_SPACE`.
- `SyncingTransport`: pysyncobj's TCP transport, holding `next_node_idx` messages (the
  AppendEntries acknowledgement) while the journal has unsynced entries. Every such
  acknowledgement also says whether the follower's log is short of space (`low`, a key
  pysyncobj ignores), and the leader's transport keeps the last word of each follower:
  without it, followers whose disks filled before the leader's took every entry the
  leader appended to no commit, and commands waited out `raft_command_timeout` (a 503)
  instead of a prompt 507.
- snapshot transfers restarted on a disconnect (`SyncingTransport`): the pieces of a
  snapshot in flight to a follower are lost with its connection, and the transport
  reconnects at once, so pysyncobj (which drops a transfer only when it finds the node
  disconnected at its next send) could go on after a hole; the follower then installed a
  file it cannot load. The transfer is dropped on the disconnect itself and starts over.
- leadership stamps (`SyncingTransport`, read by `RaftInternals._lease_confirmed_at`):
  every `append_entries` the leader sends carries `stamp` (its monotonic clock when sent);
  a follower that accepts the message (its term is not above the message's, so it has not
  voted in a later term) echoes the latest accepted `[term, stamp]` of that leader in its
  next `next_node_idx`. When a majority (the leader counting with "now") has echoed stamps
  of the leader's current term at or after T, every later-term leader was elected after
  T: one of its voters is among that majority and voted only after accepting the message
  stamped T. The access leases rest on this (node/metadata/access_leases.py). pysyncobj
  ignores keys it does not know in messages.
- read-only accessors (`RaftInternals`) the member needs: the log, the peers, the
  leader's last contact with each follower (a barrier without a log append), the wake-up
  pipe and the tick thread.
- `CheckedSerializer`: pysyncobj's snapshot serializer, but a snapshot received from the
  leader is checked (the member's `_check_received_dump`, docs/raft.md trap 8) and fsynced
  before it replaces the follower's own dump; a file that fails the check is deleted and
  nothing is acknowledged, so the follower keeps its state and the leader, finding it still
  behind at its next append, sends the snapshot again. pysyncobj renamed whatever it had
  received over the dump first and then loaded it, so a damaged transfer left a node that
  could neither load it nor start again. The leader checks its own dump too before it
  starts sending it (`_check_outgoing_dump`): a damaged one is not sent, and the member
  writes a new snapshot instead.
- `ConflictTruncation`, a fix for a follower with a divergent log suffix (below).
- `install_cipher`: pysyncobj builds the Raft port's message cipher with
  `getEncryptor(conf.password)` (in `syncobj` and in `utility` for `TcpUtility`); the
  patched factory builds our AES-256-GCM `TransportCipher` (node/metadata/raft_cipher.py)
  instead of Fernet, from the cluster secret or a `RaftPassword`.
- small messages uncompressed (`install_cipher` too): pysyncobj's `TcpConnection.send`
  compresses every pickled message with zlib (level 3) before sealing it, ~7-10 µs for a
  few hundred bytes that shrink by a few dozen. With an AES-GCM `TransportCipher`, a
  pickle shorter than its `compress_min` is sealed as it is; the receiving side's `zlib`
  (`_TransportZlib`) passes such a pickle through (a protocol-2 pickle starts with 0x80,
  a zlib stream never does) and decompresses the rest. With `fernet` every message is
  compressed as before, so a node of an older release can read it.
- `SizedCompaction`: when to snapshot. pysyncobj's own rule (`logCompactionSplit`) lets a
  member compact only in its slot of a `logCompactionMinTime` period (a 60 s window every
  600 s by default), so under load the log, and the replay after a restart, grew with
  the write rate times ten minutes. Ours starts a snapshot once the member says one is
  due (`_compaction_due`: the log's size, entries or age), in any tick; the handling of
  the serializer's answers and the truncation are pysyncobj's, unchanged.

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
import os
import queue
import struct
import threading
import time
import zlib
from typing import Any

import pysyncobj.pickle as _pickle
import pysyncobj.syncobj as _syncobj
import pysyncobj.tcp_connection as _tcp_connection
import pysyncobj.utility as _utility
from pysyncobj import SyncObj
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.journal import Journal
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.serializer import Serializer
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from cargohold.log import log_event
from node.metadata.raft_cipher import AES_GCM, TransportCipher, encryptor_for

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


class SizedCompaction:
    """Replaces pysyncobj's `__tryLogCompaction`: the same serializer handshake and log
    truncation, but started when `_compaction_due(seconds since the last snapshot)` says so
    instead of in pysyncobj's time slots (see the module docstring)."""

    def _compaction_due(self, since_last: float) -> bool:
        raise NotImplementedError

    def _SyncObj__tryLogCompaction(self) -> None:
        me: Any = self
        now = time.monotonic()
        serializer = me._SyncObj__serializer
        state, serialize_id = serializer.checkSerializing()
        if state == SERIALIZER_STATE.SUCCESS:
            me._SyncObj__lastSerializedTime = now
            me._SyncObj__deleteEntriesTo(serialize_id)
            me._SyncObj__lastSerializedEntry = serialize_id
        if state == SERIALIZER_STATE.FAILED:
            log_event(logger, "raft.snapshot_failed", logging.WARNING)
        if state != SERIALIZER_STATE.NOT_SERIALIZING:
            return
        if not me._SyncObj__forceLogCompaction and not self._compaction_due(
            now - me._SyncObj__lastSerializedTime
        ):
            return
        me._SyncObj__forceLogCompaction = False
        last = me._SyncObj__getEntries(me._SyncObj__raftLastApplied - 1, 2)
        if len(last) < 2 or last[0][1] == me._SyncObj__lastSerializedEntry:
            me._SyncObj__lastSerializedTime = now
            return
        cluster = me._SyncObj__otherNodes | {me._SyncObj__selfNode}
        serializer.serialize((None, last[1], last[0], cluster), last[0][1])


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


# -- the message cipher -------------------------------------------------------------------------
_PICKLE_START = b"\x80"  # pysyncobj pickles with protocol 2: PROTO 0x80 0x02
_tcp_send = TcpConnection.send


class _TransportZlib:
    """`zlib` as pysyncobj's tcp_connection module sees it: `decompress` passes an
    uncompressed pickle through (module docstring)."""

    compress = staticmethod(zlib.compress)

    @staticmethod
    def decompress(data: bytes) -> bytes:
        if data[:1] == _PICKLE_START:
            return data
        return zlib.decompress(data)


def _send(self: Any, message: Any) -> None:
    """`TcpConnection.send`, but with an AES-GCM `TransportCipher` a pickle shorter than
    its `compress_min` is sealed uncompressed (the rest is pysyncobj's, line for line)."""
    encryptor = self.encryptor
    if not isinstance(encryptor, TransportCipher) or encryptor.cipher != AES_GCM:
        _tcp_send(self, message)
        return
    if self.sendRandKey:
        message = (self.sendRandKey, message)
    data = _pickle.dumps(message)
    if len(data) >= encryptor.compress_min:
        data = zlib.compress(data, 3)
    data = encryptor.encrypt_at_time(data, int(_monotonic()))
    self._TcpConnection__writeBuffer += struct.pack("i", len(data)) + data
    self._TcpConnection__trySendBuffer()


def install_cipher() -> None:
    """Make every `SyncObj` and `TcpUtility` of this process seal its messages with a
    `TransportCipher` built from its password (node/metadata/raft_cipher.py), small ones
    uncompressed."""
    _syncobj.getEncryptor = encryptor_for
    _utility.getEncryptor = encryptor_for
    _tcp_connection.zlib = _TransportZlib
    TcpConnection.send = _send


install_cipher()


# -- the received-snapshot check ------------------------------------------------------------------
class CheckedSerializer(Serializer):
    """pysyncobj's `Serializer`, whose `setTransmissionData` (a follower receiving the
    leader's snapshot piece by piece, tick thread) checks and fsyncs the complete file
    before it replaces the dump. The check is the deserializer's owner's
    `_check_received_dump(path) -> bool` (a bound method's `__self__`); without one, or
    without a dump file, pysyncobj's own behaviour is kept."""

    def __init__(
        self,
        fileName: Any,
        transmissionBatchSize: Any,
        tryUseFork: Any,
        serializer: Any,
        deserializer: Any,
        serializeChecker: Any,
    ) -> None:
        super().__init__(
            fileName, transmissionBatchSize, tryUseFork, serializer, deserializer, serializeChecker
        )
        owner = getattr(deserializer, "__self__", None)
        self._check_received: Any = getattr(owner, "_check_received_dump", None)
        self._check_outgoing: Any = getattr(owner, "_check_outgoing_dump", None)

    def getTransmissionData(self, transmissionID: Any) -> Any:
        """The next piece of this node's dump for a follower (leader, tick thread). Before
        the first piece of a transfer the dump is checked (`_check_outgoing_dump(path)`):
        a damaged file is not sent (None: pysyncobj asks again at the next append), so a
        leader whose own dump went bad does not send every follower a copy that the
        follower's check will refuse."""
        dump_path = self._Serializer__fileName
        if (
            dump_path is not None
            and self._check_outgoing is not None
            and self._Serializer__pid == 0
            and transmissionID not in self._Serializer__transmissions
            and not self._check_outgoing(dump_path)
        ):
            return None
        return super().getTransmissionData(transmissionID)

    def setTransmissionData(self, data: Any) -> bool:
        """One piece `(bytes, is_first, is_last)`; True once a complete, checked file has
        replaced the dump (pysyncobj then loads it and acknowledges the install)."""
        dump_path = self._Serializer__fileName
        if data is None or dump_path is None or self._check_received is None:
            return bool(super().setTransmissionData(data))
        piece, is_first, is_last = data
        tmp_path = dump_path + ".1.tmp"  # pysyncobj's name for it
        incoming = self._Serializer__incomingTransmissionFile  # type: ignore[has-type]
        if is_first:
            if incoming is not None:
                incoming.close()
            try:
                incoming = open(tmp_path, "wb")  # kept open across pieces
            except OSError as exc:
                log_event(logger, "raft.snapshot_receive_failed", logging.ERROR, error=repr(exc))
                incoming = None
            self._Serializer__incomingTransmissionFile = incoming
            if incoming is None:
                return False
        elif incoming is None:
            return False  # a piece of a transfer whose start this node never saw
        try:
            incoming.write(piece)
            if is_last:
                incoming.flush()
                os.fsync(incoming.fileno())
        except OSError as exc:
            log_event(logger, "raft.snapshot_receive_failed", logging.ERROR, error=repr(exc))
            incoming.close()
            self._Serializer__incomingTransmissionFile = None
            return False
        if not is_last:
            return False
        incoming.close()
        self._Serializer__incomingTransmissionFile = None
        if not self._check_received(tmp_path):
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            return False
        try:
            os.replace(tmp_path, dump_path)
        except OSError as exc:
            log_event(logger, "raft.snapshot_receive_failed", logging.ERROR, error=repr(exc))
            return False
        return True


def install_serializer() -> None:
    """Make every `SyncObj` of this process build a `CheckedSerializer`."""
    _syncobj.Serializer = CheckedSerializer


install_serializer()


class SyncingTransport(TCPTransport):
    """Holds AppendEntries acknowledgements (`next_node_idx`) until the journal is synced.

    Other messages leave at once; held ones keep their order (the leader acts on the last
    answer it gets)."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._journal: Any = syncObj._SyncObj__raftLog
        self._held: list[tuple[Any, Any]] = []
        self._raft: Any = syncObj
        # Follower id -> its log was short of space at its last acknowledgement.
        self.peer_low: dict[str, bool] = {}
        # Leader: follower id -> the latest [term, stamp] it echoed (module docstring).
        self.peer_echo: dict[str, tuple[int, float]] = {}
        # Follower: leader id -> the latest [term, stamp] of its that this node accepted.
        self._accepted: dict[str, tuple[int, float]] = {}

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries":
                message = dict(message, stamp=time.monotonic())
            elif kind == "next_node_idx":
                message = dict(message, low=self._journal.low, echo=self._accepted.get(node.id))
                if self._held or self._journal.dirty:
                    self._held.append((node, message))
                    return True
        return bool(super().send(node, message))

    def setOnMessageReceivedCallback(self, callback: Any) -> None:
        if callback is None:
            super().setOnMessageReceivedCallback(None)
            return

        def received(node: Any, message: Any) -> None:  # tick thread, before pysyncobj
            if isinstance(message, dict):
                kind = message.get("type")
                if kind == "next_node_idx":
                    low = message.get("low")
                    if low is not None:
                        self.peer_low[node.id] = bool(low)
                    echo = message.get("echo")
                    if echo is not None:
                        self._note_echo(node.id, int(echo[0]), float(echo[1]))
                elif kind == "append_entries" and "stamp" in message:
                    term = int(message.get("term", -1))
                    # pysyncobj accepts it (and answers) only from a term not below ours.
                    if term >= self._raft._SyncObj__raftCurrentTerm:
                        self._accepted[node.id] = (term, float(message["stamp"]))
            callback(node, message)

        super().setOnMessageReceivedCallback(received)

    def setOnNodeDisconnectedCallback(self, callback: Any) -> None:
        if callback is None:
            super().setOnNodeDisconnectedCallback(None)
            return

        def disconnected(node: Any) -> None:  # tick thread
            self._restart_snapshot_transfer(node)
            callback(node)

        super().setOnNodeDisconnectedCallback(disconnected)

    def _restart_snapshot_transfer(self, node: Any) -> None:
        """A snapshot being sent to `node` lost the pieces in flight with the connection:
        send it again from its first piece. pysyncobj drops a transfer only when it next
        finds the node disconnected, and the transport reconnects at once: after a quick
        reconnect the transfer went on from where the lost pieces ended, and the follower
        installed a file with a hole in it (seen at 1 M manifests: 128 KiB short), which
        it cannot load."""
        serializer = self._raft._SyncObj__serializer
        transfer = serializer._Serializer__transmissions.pop(node, None)
        if transfer is None:
            return
        if "file" in transfer:
            transfer["file"].close()
        log_event(
            logger,
            "raft.snapshot_transfer_restarted",
            logging.INFO,
            node=node.id,
            sent_bytes=transfer.get("transmitted", 0),
        )

    def _note_echo(self, node_id: str, term: int, stamp: float) -> None:
        last = self.peer_echo.get(node_id)
        if last is None or (term, stamp) > last:
            self.peer_echo[node_id] = (term, stamp)

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

    def _log_cannot_grow(self) -> bool:
        """Leader: its own log is short of space, or the followers whose last
        acknowledgement said theirs is leave no majority that could store an entry (any
        thread; a follower not heard from yet counts as having room)."""
        me: Any = self
        if me._SyncObj__raftLog.low:
            return True
        transport = me._SyncObj__transport
        if not isinstance(transport, SyncingTransport) or not transport.peer_low:
            return False
        for _ in range(5):
            try:
                ids = [node.id for node in me._SyncObj__otherNodes]
                break
            except RuntimeError:  # resized by the tick thread meanwhile
                continue
        else:
            return False
        low = sum(1 for node_id in ids if transport.peer_low.get(node_id))
        members = len(ids) + 1
        return members - low <= members // 2

    def _checkCommandsToApply(self) -> None:
        me: Any = self
        if me._SyncObj__raftState == _LEADER and self._log_cannot_grow():
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

    def _postpone_election(self) -> None:
        """Tick thread: restart the election timer (after a long snapshot install the
        timer has run out, and an election would depose a healthy leader)."""
        me: Any = self
        me._SyncObj__raftElectionDeadline = time.monotonic() + me._SyncObj__generateRaftTimeout()

    def _member_rank(self) -> tuple[int, int]:
        """This member's position among the sorted member ids, and the member count."""
        me: Any = self
        for _ in range(5):
            try:
                ids = sorted(
                    [node.id for node in me._SyncObj__otherNodes] + [me._SyncObj__selfNode.id]
                )
                break
            except RuntimeError:  # resized by the tick thread meanwhile
                continue
        else:
            return 0, 1
        return ids.index(me._SyncObj__selfNode.id), len(ids)

    def _tick_thread(self) -> threading.Thread | None:
        me: Any = self
        thread: threading.Thread | None = me._SyncObj__thread
        return thread

    def _lease_confirmed_at(self) -> float:
        """Leader only (any thread): the latest time T (time.monotonic) such that a majority,
        this node counting as "now", accepted a message of this leader's current term sent
        at T or later: no later-term leader was elected before T (module docstring).
        -inf when no such majority is known."""
        me: Any = self
        transport = me._SyncObj__transport
        echoes = transport.peer_echo if isinstance(transport, SyncingTransport) else {}
        for _ in range(5):
            try:
                ids = [node.id for node in me._SyncObj__otherNodes]
                heard = dict(echoes)
                break
            except RuntimeError:  # resized by the tick thread meanwhile
                continue
        else:
            return float("-inf")
        term = me._SyncObj__raftCurrentTerm
        stamps = [time.monotonic()]
        for node_id in ids:
            echo = heard.get(node_id)
            if echo is not None and echo[0] == term:
                stamps.append(echo[1])
        needed = (len(ids) + 1) // 2 + 1
        if len(stamps) < needed:
            return float("-inf")
        stamps.sort(reverse=True)
        return stamps[needed - 1]

    def _committed_in_term(self) -> bool:
        """Leader only: its commit index covers an entry of its own term (its no-op), so
        the commit index is the cluster's."""
        me: Any = self
        entries = me._SyncObj__getEntries(me._SyncObj__raftCommitIndex, 1)
        return bool(entries) and entries[0][2] == me._SyncObj__raftCurrentTerm
