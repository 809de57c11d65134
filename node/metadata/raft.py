"""The node's Raft member: pysyncobj wiring, snapshots, and the asyncio bridge to it.

`RaftMember` is a pysyncobj `SyncObj` holding one `MetadataState`. Every mutation is a
`@replicated` call, `_apply(op, args)` or `_apply_batch([(op, args), ...])` (group commit,
below); the event loop reaches them through `await command(op, args)` and reads through
`await query(op, args, linearizable)`. Everything that touches pysyncobj's internals is in
node/metadata/pysyncobj_seam.py; the log itself is node/metadata/journal.py.

Configuration (docs/raft.md is the reasoning; every number comes from NodeConfig):
- our own journal (`RaftJournal`, passed as `journalFile`) AND `fullDumpFile` in
  `<data_dir>/raft/` (a journal without a dump comes back empty after the first
  compaction);
- `appendEntriesUseBatch=False` (a commit costs a round trip, not a 100 ms batch period),
  compaction started by the log's size (`SizedCompaction` in pysyncobj_seam.py replaces
  pysyncobj's time slots: `_compaction_due`), `dynamicMembershipChange=True`;
- `password` = ClusterConfig.secret (pysyncobj unpickles what its port receives: without
  it one packet runs code) and `bindAddress` = NodeConfig.raft_listen, self address =
  raft_advertise, partners = peers;
- custom `serializer`/`deserializer`/`serializeChecker`: our own snapshots. pysyncobj
  calls the serializer on its tick thread with `data[1:]` (the last two applied log entries
  and the member set; `data[0]`, its own pickled attributes, is None with custom hooks),
  so our snapshot file `<data_dir>/raft/state.dump` holds that tuple and the state:
  `CHRAFT2\n`, u64 length, pickle(data[1:] + a check flag), then
  `MetadataState.encode_snapshot`, then a trailer with the length and xxh3_128 of all
  before it (node/metadata/dump_file.py). The
  hook forks (`raft_snapshot_fork`): the child writes and fsyncs `state.dump.writing`
  from its copy-on-write view of the state and exits, so the tick thread pauses only for
  the fork. With the setting off it takes `MetadataState.snapshot()` (a copy of the
  containers, not of the records, ~0.4 s per million manifests with the heap frozen, see
  `_freeze_heap`) and hands it to a background thread that writes it. The checker says
  SERIALIZING meanwhile; then, on the tick thread, it renames the file over `state.dump`,
  fsyncs the directory and says SUCCESS, and only SUCCESS lets pysyncobj truncate the
  journal. (pysyncobj's own rename of its tmp path fails harmlessly because we never
  create that file; with a checker, the checker's answer is all pysyncobj reads.)
- The state exists before `super().__init__()` starts the tick thread (trap 2).

Trap 3 (a kill between "dump renamed" and "journal truncated" makes pysyncobj clear the
journal on restart, dropping entries applied after the dump) is closed here too: the
deserializer finishes the interrupted truncation itself when the journal still holds the
dump's two head entries, so pysyncobj finds a matching head and keeps the rest. A snapshot
that cannot be read sets `fatal_error` and calls `on_fatal` (the node exits) where
pysyncobj would carry on with an empty state.

A snapshot received from the leader is checked (its trailer's length and checksum,
`_check_received_dump`) before it replaces this node's dump (pysyncobj_seam.py
`CheckedSerializer`): a damaged transfer is discarded, logged (`raft.snapshot_rejected`)
and counted (`snapshots_rejected`); the node keeps its state and the leader sends the
snapshot again (docs/raft.md, trap 8). A node's own dump is checked the same way at start,
and one that fails is fatal as before. A leader checks its dump before it starts sending it
to a follower (`_check_outgoing_dump`, once per file): a dump damaged on its disk since it
was written is not sent; the leader logs `raft.own_snapshot_damaged`, counts it
(`own_snapshots_damaged`) and writes a new snapshot, which it then sends.

A healed ex-leader whose uncommitted entries conflict with the new leader's log caught up
never in pysyncobj when the new entries spanned more than one append batch (its replies
reset the leader's walk back); `ConflictTruncation` (pysyncobj_seam.py) drops the
conflicting uncommitted suffix first, as the Raft paper prescribes.

Durability: an entry counts only once it is on stable storage. The leader syncs its log
before every commit computation (it counts itself there), a follower's AppendEntries
acknowledgement waits for the sync of what it acknowledges, and one `fdatasync` covers all
entries appended since the last (pysyncobj_seam.py `DurableTicks`). Term and vote are
synced before any message reflecting them. Snapshots are fsynced, renamed, and the
directory fsynced; a snapshot received from the leader is fsynced before it is
acknowledged. With `raft_fsync = false` only the per-append sync is skipped (README,
"Guarantees").

Full disk: the journal claims its space in extents ahead of use. When no further extent
can be claimed and less than `raft_journal_floor` is left, on the leader or on so many
followers that no majority could store an entry, commands are refused with
`MetadataStorageFull` (the leader refuses forwarded ones too), and a linearizable read on
the leader confirms leadership by a heartbeat round instead of a log append
(`_confirm_leadership`), so reads keep working. A snapshot that cannot be written fails
and is retried after `_DUMP_RETRY` seconds; the journal keeps its entries meanwhile.

Threads: pysyncobj's one tick thread runs Raft, `_apply`, the serializer and every
callback. Nothing here blocks it or makes a sync pysyncobj call from it; callbacks only hand
results to the event loop with `call_soon_threadsafe`. `_lock` serialises the tick thread's
`apply` with the event loop's `query` so a read never sees half a command.

Group commit: `command()` queues; up to `raft_batches_in_flight` log entries are
uncommitted at a time, and the commands that arrive meanwhile go together into the next
entry (`_apply_batch`, at most `raft_batch_max_commands`, a command carrying many chunk
references counting for more), each with its own result. A lone caller still gets its
entry at once; under concurrency Raft's per-entry cost (one
round of pickled, encrypted messages and acks to every follower) is shared, which halved
the leader's CPU per command at 32 callers.

Fail fast: a node connected to no majority of members refuses commands (and so barrier
reads) at once with `Unavailable`, instead of holding them for `raft_command_timeout`.

Outcome unknown: a command that times out (`raft_command_timeout`), or fails with
LEADER_CHANGED / NOT_LEADER / DISCARDED / no leader, raises `Unavailable`; it may still
commit later. Every command is idempotent, so the caller retries.

Linearizable reads: `barrier()` commits a replicated no-op and returns once this node has
applied it; the state read after it reflects every command acknowledged before the read
began. Concurrent readers share one barrier; a reader arriving while a barrier is already
in flight waits for the next one, since the one in flight may order before a write the
reader has already seen acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.config import SERIALIZER_STATE

from cargohold.config import Config
from cargohold.errors import (
    ConfigError,
    MetadataStorageFull,
    RegistryError,
    RequestInvalid,
    Unavailable,
)
from cargohold.log import log_event
from cargohold.memtune import release_memory
from cargohold.metadata_api import AccessFence, Barrier
from node.metadata.access_leases import AccessLeases
from node.metadata.dump_file import DumpWriter, check_dump, head_bytes, read_head
from node.metadata.journal import JournalSpace, RaftJournal, fsync_dir
from node.metadata.pysyncobj_seam import (
    NO_SPACE,
    ConflictTruncation,
    DurableTicks,
    RaftInternals,
    SizedCompaction,
    SyncingTransport,
)
from node.metadata.raft_cipher import AES_GCM, RaftPassword
from node.metadata.state import COMMANDS, QUERIES, MetadataState

logger = logging.getLogger("cargohold.node.raft")

_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
_FAIL_NAMES[NO_SPACE] = "NO_SPACE"
# pysyncobj's node states, as RaftStatus.role names them.
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
# Seconds before a snapshot that failed (a full disk) is tried again.
_DUMP_RETRY = 30.0
# Recent snapshots whose figures the `snapshot` admin role reports.
_SNAPSHOT_HISTORY = 32
# Reads that must reflect every command acknowledged so far, without a barrier's log
# append: answered by the leader only (it applies a command before anyone is told it
# committed; a follower may not have yet). A follower answers Unavailable, and the gateway
# asks the next node. Used by the per-request revocation check (gateway/auth/revision.py).
_LEADER_READS = frozenset({"access_revision", "unlink_revision"})
# prctl(PR_SET_PDEATHSIG), resolved before any fork: a snapshot child must not outlive the
# node (a restarted node would find it still writing into its raft directory).
_PR_SET_PDEATHSIG = 1
try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the child only checks its parent
    _PRCTL = None


@dataclass
class RaftStatus:
    self_address: str
    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    last_applied: int
    log_len: int
    members: list[str] = field(default_factory=list)
    has_quorum: bool = False
    # "follower", "candidate" or "leader".
    role: str = "follower"


class _ResendFilter(logging.Filter):
    """Drops pysyncobj's "truncating already-applied log entries" CRITICAL line, counting it.

    With `appendEntriesUseBatch=False` a leader re-sends entries on out-of-order acks
    (docs/raft.md, trap 4); the follower cuts its log back and re-adds the same entries. Applied
    entries are committed, and committed entries never change in Raft, so what it cuts is
    re-added identical and never re-applied (`lastApplied` does not move back): the line
    is noise, hundreds per minute under load. The count is in Admin.Status.extra.
    """

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("truncating already-applied log entries"):
            _ResendFilter.count += 1
            return False
        return True


_RESEND_FILTER = _ResendFilter()
logging.getLogger("pysyncobj.syncobj").addFilter(_RESEND_FILTER)


def resent_truncations() -> int:
    """How many times this process's follower log was cut back for re-sent entries."""
    return _ResendFilter.count


def raft_utility(
    address: str, secret: str, command: list[str], timeout: float = 10.0, cipher: str = AES_GCM
) -> Any:
    """Run one pysyncobj utility command on a member's Raft port: `["status"]`,
    `["add", raft_addr]`, `["remove", raft_addr]`, `["transfer", raft_addr]`.

    This is how Raft membership changes (one at a time, sent to the leader): start the new
    node with `peers` = the current members, `add` its Raft address, and its own
    `member_join` then commits. Authenticated with the cluster secret, sealed with `cipher`
    (`cluster.raft_cipher`, node/metadata/raft_cipher.py). Blocking: call it
    from a CLI or a thread, never from the event loop or the tick thread.
    """
    from pysyncobj.utility import TcpUtility

    password = RaftPassword(secret, cipher)
    return TcpUtility(password=password, timeout=timeout).executeCommand(address, command)


def _freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach.

    The state is a few huge dicts and sets; a full collection traverses them (about 0.2 s
    per million entries, holding the GIL: the tick thread stops, elections can start) and
    the default thresholds run one every few thousand surviving objects. The state holds
    no reference cycles, so freezing it after each load and snapshot costs nothing and
    leaves the collector only the young objects. Measured at 1M entries: the snapshot
    pause fell from 0.75 s to 0.22 s and the longest GIL hold while encoding from 0.3 s to
    0.06 s. A frozen cycle that later becomes garbage is never collected: the search index
    is one (its orders key on its own methods), so a state that drops it empties it first
    (`SearchIndex.discard`).
    """
    gc.freeze()


def _storage_full(space: JournalSpace) -> MetadataStorageFull:
    return MetadataStorageFull(
        detail={
            "reason": "the metadata log cannot grow",
            "log_room_bytes": space.room,
            "log_claimed_bytes": space.claimed,
        }
    )


def _weight(args: dict[str, Any]) -> int:
    """A command's share of a batch: 1, plus 1 per 64 chunk references it carries, so a
    batch of large recipes stays near a megabyte (large entries stall the tick thread)."""
    refs = 0
    chunks = args.get("chunks")
    if isinstance(chunks, list):
        refs += len(chunks)
    recipe = args.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("chunks"), list):
        refs += len(recipe["chunks"])
    return 1 + refs // 64


class _Slot:
    """One in-flight batch's place in the group-commit window; freed exactly once, when its
    callback arrives or when it timed out (a forwarded command's reply can be lost)."""

    def __init__(self, member: RaftMember, loop: asyncio.AbstractEventLoop) -> None:
        self._member = member
        self._loop = loop
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._member._in_flight -= 1
            self._member._schedule_flush(self._loop)


def _resolve_all(
    futs: list[asyncio.Future[Any]],
    results: list[Any] | None,
    error: int,
    slot: _Slot,
    timer: asyncio.TimerHandle,
) -> None:
    timer.cancel()
    slot.release()
    for i, fut in enumerate(futs):
        if not fut.done():
            ok = error == FAIL_REASON.SUCCESS and results is not None
            fut.set_result((results[i] if ok and results is not None else None, error))


class Pacer:
    """Keeps a snapshot writer busy at most `duty` of the time: after each piece of work,
    `pause` sleeps so long that work / (work + sleep) = duty. A snapshot child that ran flat
    out slowed the node's PUTs although it ran at a lower priority (its memory traffic,
    not its CPU share: docs/raft.md, "Snapshots at 1 M and the PUTs beside them")."""

    def __init__(
        self,
        duty: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._duty = duty
        self._clock = clock
        self._sleep = sleep
        self._mark = clock()

    def pause(self) -> None:
        """After a piece of work: sleep its share, then start timing the next one."""
        if self._duty < 1.0:
            worked = self._clock() - self._mark
            self._sleep(worked * (1.0 - self._duty) / self._duty)
        self._mark = self._clock()


def _child_init(parent: int, nice: int = 0) -> None:
    """In a forked snapshot child: die with the parent, take no signal meant for the node
    (its asyncio wakeup fd is the parent's), leave the collector off (it would touch, and
    so copy, every page of the shared heap), and yield the CPU to the serving processes
    by `nice` (a snapshot at 1 M manifests is seconds of CPU; PUTs meanwhile must not wait
    for it: docs/raft.md)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)
    gc.disable()
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_DFL)


class RaftMember(DurableTicks, ConflictTruncation, SizedCompaction, RaftInternals, SyncObj):
    """One Raft member holding the metadata state; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        state: MetadataState | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        node = cfg.node
        # Everything the tick thread touches exists before SyncObj starts it (trap 2).
        self.state = state if state is not None else MetadataState()
        # Set (tick thread) when this member cannot go on safely, then `on_fatal()` is
        # called there; node/server.py stops the node.
        self.fatal_error: str | None = None
        self._on_fatal = on_fatal
        # Told each command's op and seconds to its outcome (node/metrics.py sets it).
        self.command_observer: Callable[[str, float], None] | None = None
        self._lock = threading.Lock()
        self._command_timeout = node.raft_command_timeout
        self._batch_max = max(1, node.raft_batch_max_commands)
        self._max_in_flight = max(1, node.raft_batches_in_flight)
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future[tuple[Any, int]]]] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._dump_thread: threading.Thread | None = None
        self._dump_pid = 0
        self._dump_pending = False
        self._dump_started = 0.0
        self._dump_ok: bool | None = None
        self._snapshot_fork = node.raft_snapshot_fork and hasattr(os, "fork")
        self._snapshot_compact = node.raft_snapshot_compact
        self._snapshot_compact_version = node.raft_snapshot_compact_version
        self._snapshot_child_timeout = node.raft_snapshot_child_timeout
        self._snapshot_nice = node.raft_snapshot_nice
        self._snapshot_duty = node.raft_snapshot_duty_cycle
        self._compaction_bytes = node.raft_compaction_log_bytes
        self._compaction_entries = node.raft_compaction_min_entries
        self._compaction_time = node.raft_compaction_min_time
        # Written by the tick thread: the recent snapshots' figures (the `snapshot` role).
        self.snapshots_taken = 0
        # Snapshots whose writer failed (a `snapshot` role waiting for one stops at a failure).
        self.snapshots_failed = 0
        # Snapshots received from the leader and discarded by the check (damaged transfers;
        # the metric cargohold_node_raft_snapshots_rejected_total).
        self.snapshots_rejected = 0
        self.last_rejection: dict[str, Any] = {}
        # This node's own dump found damaged before it was sent to a follower (a new one is
        # written; the metric cargohold_node_raft_own_snapshots_damaged_total), and the
        # identity of the file last checked with its verdict (each file is checked once).
        self.own_snapshots_damaged = 0
        self._outgoing_checked: tuple[tuple[int, ...], bool] | None = None
        # Set by `_check_received_dump` for the file `_read_dump` loads next (not checked twice).
        self._received_checked = False
        self.snapshot_history: collections.deque[dict[str, float]] = collections.deque(
            maxlen=_SNAPSHOT_HISTORY
        )
        self.last_snapshot: dict[str, float] = {}
        self._snapshot_load_seconds: float | None = None
        self._dump_superseded = False
        self._dump_retry_at = 0.0
        self._barrier_next: asyncio.Future[None] | None = None
        self._barrier_running = False
        self._barrier_task: asyncio.Task[None] | None = None
        # When (time.monotonic) this node took office as leader, noted on the tick after it
        # did (so never early); None while not the leader. The access fence waits a lease
        # after it (node/metadata/access_leases.py).
        self.leader_since: float | None = None
        self._leading_term: int | None = None
        self.leases = AccessLeases(self, node.access_lease_seconds, node.access_lease_guard_seconds)
        raft_dir = Path(node.data_dir) / "raft"
        raft_dir.mkdir(parents=True, exist_ok=True)
        self._raft_dir = str(raft_dir)
        self.dump_path = str(raft_dir / "state.dump")
        self._dump_writing = self.dump_path + ".writing"
        self._journal = RaftJournal(
            self._raft_dir,
            fsync=node.raft_fsync,
            extent=node.raft_journal_extent,
            floor=node.raft_journal_floor,
        )
        conf = SyncObjConf(
            journalFile=self._journal,
            fullDumpFile=self.dump_path,
            serializer=self._write_dump,
            deserializer=self._read_dump,
            serializeChecker=self._check_dump,
            bindAddress=node.raft_listen,
            password=RaftPassword(
                cfg.cluster.secret, cfg.cluster.raft_cipher, node.raft_compress_min_bytes
            ),
            appendEntriesUseBatch=False,
            appendEntriesPeriod=node.raft_heartbeat_period,
            logCompactionSplit=True,
            logCompactionMinEntries=node.raft_compaction_min_entries,
            logCompactionMinTime=node.raft_compaction_min_time,
            dynamicMembershipChange=True,
            raftMinTimeout=node.raft_min_timeout,
            raftMaxTimeout=node.raft_max_timeout,
            connectionRetryTime=node.raft_connection_retry,
            leaderFallbackTimeout=node.raft_leader_fallback_timeout,
            maxBindRetries=node.raft_bind_retries,
        )
        if not cfg.cluster.secret:
            raise ConfigError("cluster.secret must be set: it authenticates the Raft port")
        super().__init__(
            node.raft_advertise, list(node.peers), conf, transportClass=SyncingTransport
        )
        self.addOnTickCallback(self._wake_if_alone)
        self.addOnTickCallback(self._note_office)
        # Before the poll: the leader's fresh appends reach the disk while followers work.
        self.addOnTickCallback(self._durable_point)

    def _note_office(self) -> None:
        """Tick thread: note when this node became leader (`leader_since`)."""
        term = int(self.raftCurrentTerm) if self._isLeader() else None
        if term != self._leading_term:
            self._leading_term = term
            self.leader_since = time.monotonic() if term is not None else None

    def _wake_if_alone(self) -> None:
        """Tick thread, before it polls: a one-member group commits an entry on the tick
        after appending it, but no follower's ack arrives to end that tick's 50 ms poll;
        poke pysyncobj's own wake-up pipe so a lone node does not wait it out."""
        if self._has_peers() or not self._isLeader():
            return
        last = self._raft_log()[-1]
        if self.raftCommitIndex < last[1] and last[2] == self.raftCurrentTerm:
            self._wake_tick()

    # -- the replicated entry point (tick thread) ----------------------------------------------
    # pysyncobj numbers replicated methods by sorted name: `_apply` stays 0 and
    # `_apply_batch` 1, so journals written before batching replay unchanged.
    @replicated
    def _apply(self, op: str, args: dict[str, Any]) -> Any:
        """Apply one command on every node; errors are returned, never raised."""
        with self._lock:
            return self._apply_one(op, args)

    @replicated
    def _apply_batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Apply several commands, in order, as one log entry; one result each."""
        with self._lock:
            return [self._apply_one(op, args) for op, args in commands]

    def _apply_one(self, op: str, args: dict[str, Any]) -> Any:
        try:
            return self.state.apply(op, args)
        except RegistryError as exc:
            return exc
        except Exception as exc:
            log_event(logger, "raft.apply_failed", logging.ERROR, op=op, error=repr(exc))
            return RequestInvalid(f"command {op} failed: {exc!r}")

    # -- snapshots -------------------------------------------------------------------------
    def _compaction_due(self, since_last: float) -> bool:
        """Tick thread: a snapshot is due once the log holds `raft_compaction_log_bytes`
        bytes or `raft_compaction_min_entries` entries, or `raft_compaction_min_time`
        seconds after the last one. Each member's thresholds are raised by up to a third
        by its rank, so members rarely snapshot at the same moment (trap 3 is handled at
        load anyway; this keeps it rare, as pysyncobj's time slots did)."""
        if time.monotonic() < self._dump_retry_at:
            return False  # the last attempt failed (a full disk): not every tick
        rank, count = self._member_rank()
        stagger = 1.0 + rank / (3.0 * count)
        if self._journal.space().used >= self._compaction_bytes * stagger:
            return True
        if len(self._raft_log()) > self._compaction_entries * stagger:
            return True
        return since_last > self._compaction_time * stagger

    def _write_dump(self, tmp_path: str, raft_data: tuple[Any, ...]) -> None:
        """pysyncobj's serializer hook (tick thread): start writing a snapshot elsewhere.

        With `raft_snapshot_fork` a forked child writes the state as it was at the fork (a
        copy-on-write view: the tick thread goes on applying commands at once; the pause
        is the fork, a copy of the page tables). Otherwise the state's containers are
        copied here (`MetadataState.snapshot`, the one pause) and a background thread
        writes them. `tmp_path` is deliberately left uncreated: pysyncobj's rename of it
        then fails harmlessly; `_check_dump` renames our own file into place once it is
        complete and fsynced.
        """
        head = head_bytes(raft_data)
        index = int(raft_data[0][1])
        # Every call gets an answer from the checker (pysyncobj starts no other snapshot,
        # and sends none to a follower, until it hears SUCCESS or FAILED).
        self._dump_pending = True
        self._dump_ok = None
        self._dump_superseded = False
        self._dump_started = time.monotonic()
        self.last_snapshot = {"started_at": time.time(), "index": index}
        if self._snapshot_fork:
            self._fork_dump(head)
            return
        # No lock: this thread is the only writer, and readers may read meanwhile.
        snap = self.state.snapshot()
        _freeze_heap()
        self.last_snapshot["pause_seconds"] = time.monotonic() - self._dump_started
        self._dump_thread = threading.Thread(
            target=self._dump_worker,
            args=(head, snap, index),
            name="raft-dump",
            daemon=True,
        )
        self._dump_thread.start()

    def _fork_dump(self, head: bytes) -> None:
        """Tick thread: fork a child that writes the snapshot and exits (0: written)."""
        _freeze_heap()  # the child's collector stays off; the parent's skips the old heap
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            log_event(logger, "raft.dump_failed", logging.ERROR, error=repr(exc))
            self._dump_ok = False
            self._dump_retry_at = time.monotonic() + _DUMP_RETRY
            return
        if pid == 0:  # the child: no logging, no locks, no return
            code = 1
            try:
                _child_init(parent, self._snapshot_nice)
                self._write_file(head, self.state.snapshot())
                code = 0
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    os.write(2, f"raft snapshot child: {exc!r}\n".encode())
            finally:
                os._exit(code)
        self._dump_pid = pid
        self.last_snapshot["pause_seconds"] = time.monotonic() - self._dump_started

    def _write_file(self, head: bytes, snap: dict[str, Any]) -> int:
        """Encode `snap` into `state.dump.writing` (with its trailer: node/metadata/dump_file.py)
        and fsync it; its size in bytes."""
        pacer = Pacer(self._snapshot_duty)
        with open(self._dump_writing, "wb") as f:
            writer = DumpWriter(f, head)
            for piece in MetadataState.encode_snapshot(
                snap,
                compact=self._snapshot_compact,
                compact_version=self._snapshot_compact_version,
            ):
                writer.write(piece)
                pacer.pause()
            size = writer.finish()
            f.flush()
            os.fsync(f.fileno())
        return size

    def _dump_worker(self, head: bytes, snap: dict[str, Any], index: int) -> None:
        """Background thread (`raft_snapshot_fork` off): write the snapshot."""
        try:
            self._write_file(head, snap)
        except Exception as exc:
            log_event(logger, "raft.dump_failed", logging.ERROR, error=repr(exc))
            self._dump_ok = False
            self._dump_retry_at = time.monotonic() + _DUMP_RETRY
            with contextlib.suppress(OSError):
                os.unlink(self._dump_writing)  # give the space back now
            return
        self._dump_ok = True

    def _dump_running(self) -> bool:
        """Tick thread: whether the writer (child or thread) is still at work; once it is
        done, `_dump_ok` says whether the file is complete."""
        if self._dump_pid:
            try:
                pid, status = os.waitpid(self._dump_pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self._dump_pid, 1
            if pid == 0:
                if time.monotonic() - self._dump_started <= self._snapshot_child_timeout:
                    return True
                # A forked child of a process with gRPC threads can hang (a lock one of
                # them held at the fork): stop waiting for it, or no snapshot comes again.
                with contextlib.suppress(OSError):
                    os.kill(self._dump_pid, signal.SIGKILL)
                    pid, status = os.waitpid(self._dump_pid, 0)
                log_event(logger, "raft.dump_child_timeout", logging.ERROR, pid=self._dump_pid)
                pid, status = self._dump_pid, 1
            self._dump_pid = 0
            self._dump_ok = os.waitstatus_to_exitcode(status) == 0
            if not self._dump_ok:
                log_event(logger, "raft.dump_failed", logging.ERROR, child_status=status)
                self._dump_retry_at = time.monotonic() + _DUMP_RETRY
            return False
        thread = self._dump_thread
        if thread is not None and thread.is_alive():
            return True
        self._dump_thread = None
        return False

    def _check_dump(self) -> int:
        """pysyncobj's serializeChecker (tick thread): once the writer is done, rename its
        file into place and fsync the directory, then SUCCESS lets pysyncobj truncate the
        journal up to the dump. The rename happens here, on the tick thread, so it cannot
        race a snapshot installed from the leader (which also lands on this thread)."""
        if not self._dump_pending:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if self._dump_running():
            return SERIALIZER_STATE.SERIALIZING
        self._dump_pending = False
        ok = self._dump_ok
        try:
            if not ok or self._dump_superseded:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dump_writing)
                self.snapshots_failed += not ok
                return SERIALIZER_STATE.FAILED
            size = os.path.getsize(self._dump_writing)
            os.replace(self._dump_writing, self.dump_path)
            fsync_dir(self._raft_dir)
        except OSError as exc:
            log_event(logger, "raft.dump_rename_failed", logging.ERROR, error=repr(exc))
            self.snapshots_failed += 1
            return SERIALIZER_STATE.FAILED
        seconds = time.monotonic() - self._dump_started
        self.last_snapshot.update(bytes=size, seconds=seconds)
        self.snapshot_history.append(self.last_snapshot)
        self.snapshots_taken += 1
        log_event(logger, "raft.dump_written", bytes=size, seconds=round(seconds, 3))
        return SERIALIZER_STATE.SUCCESS

    def snapshot_stats(self) -> dict[str, Any]:
        """Snapshots taken, writing now or not, the last load's seconds and the recent
        snapshots (started_at wall time, index, pause_seconds, seconds, bytes)."""
        return {
            "taken": self.snapshots_taken,
            "failed": self.snapshots_failed,
            "rejected": self.snapshots_rejected,
            "own_damaged": self.own_snapshots_damaged,
            "last_rejection": dict(self.last_rejection),
            "writing": self._dump_pending,
            "fork": self._snapshot_fork,
            "load_seconds": self._snapshot_load_seconds,
            "recent": list(self.snapshot_history),
        }

    def _check_received_dump(self, path: str) -> bool:
        """Tick thread (pysyncobj_seam.CheckedSerializer): whether the complete snapshot
        received from the leader at `path` may replace this node's dump and be loaded.

        A damaged file (truncated, a hole, flipped bytes, pieces of two snapshots) fails
        its trailer's length or checksum: it is discarded, logged and counted, and the node
        goes on with its state; the leader finds it still behind at its next append and
        sends the snapshot again. A file from a leader of a version before the trailer
        cannot be verified; it is loaded as before (and a load failure is fatal)."""
        check = check_dump(path)
        if not check.ok:
            self.snapshots_rejected += 1
            self.last_rejection = {"at": time.time(), "reason": check.reason, "bytes": check.size}
            log_event(
                logger,
                "raft.snapshot_rejected",
                logging.WARNING,
                reason=check.reason,
                bytes=check.size,
                rejected=self.snapshots_rejected,
            )
            return False
        if not check.verified:
            log_event(
                logger,
                "raft.snapshot_unverified",
                logging.WARNING,
                bytes=check.size,
                reason="written by a node without snapshot checksums",
            )
        self._received_checked = True
        return True

    def _check_outgoing_dump(self, path: str) -> bool:
        """Tick thread (pysyncobj_seam.CheckedSerializer): whether this node's dump may be
        sent to a follower. Each file (device, inode, size, mtime) is checked once. A file
        that fails (a bad sector, a write to it from outside) is not sent: the failure is
        logged and counted, and a new snapshot is forced even when no command was applied
        since the last one, so the next transfer sends a good file. A file without a
        trailer (written before checksums) cannot be checked and is sent as before."""
        try:
            st = os.stat(path)
        except OSError:
            return True  # pysyncobj's own open fails and is handled there
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._outgoing_checked is not None and self._outgoing_checked[0] == identity:
            return self._outgoing_checked[1]
        check = check_dump(path)
        self._outgoing_checked = (identity, check.ok)
        if check.ok:
            return True
        self.own_snapshots_damaged += 1
        log_event(
            logger,
            "raft.own_snapshot_damaged",
            logging.ERROR,
            reason=check.reason,
            bytes=check.size,
            damaged=self.own_snapshots_damaged,
        )
        self._SyncObj__forceLogCompaction = True
        self._SyncObj__lastSerializedEntry = None  # a snapshot even with nothing new applied
        return False

    def _read_dump(self, path: str) -> tuple[Any, ...]:
        """pysyncobj's deserializer hook (tick thread): load the state, hand back the raft
        head tuple. A dump of ours still being written is now older than this: dropped.
        Our own dump (at start) is checked first; a received one was checked already."""
        self._dump_superseded = self._dump_thread is not None or self._dump_pid != 0
        started = time.monotonic()
        checked, self._received_checked = self._received_checked, False
        try:
            if not checked:
                check = check_dump(path)
                if not check.ok:
                    raise ValueError(f"{path} failed its check: {check.reason}")
            with open(path, "rb") as f:
                # A received snapshot was fsynced before its rename; the rename must be
                # durable before the journal is cleared and the install acknowledged.
                os.fsync(f.fileno())
                fsync_dir(self._raft_dir)
                raft_data = read_head(f)
                # The cyclic collector off while millions of tuples are built: each full
                # collection would traverse the whole growing state (it holds no cycles,
                # and is frozen right after, `_freeze_heap`).
                collecting = gc.isenabled()
                gc.disable()
                try:
                    with self._lock:
                        self.state.load_stream(f)
                finally:
                    if collecting:
                        gc.enable()
        except Exception as exc:
            # pysyncobj would log this and carry on with an empty state: never serve that.
            self.fatal_error = f"cannot load the raft snapshot {path}: {exc!r}"
            log_event(logger, "raft.dump_unreadable", logging.CRITICAL, path=path, error=repr(exc))
            if self._on_fatal is not None:
                self._on_fatal()
            raise
        _freeze_heap()
        # The load's transient objects (the unpickler's stack and memo, argument tuples)
        # left free heap pages behind that glibc keeps (up to `malloc_retain_bytes` here):
        # give them back, so RssAnon after a load is the state's (docs/metadata.md).
        trim_started = time.monotonic()
        release_memory()
        trim_ms = round((time.monotonic() - trim_started) * 1000, 1)
        self._finish_interrupted_compaction(raft_data[1], raft_data[0])
        # Loading took this thread a while: an election timer that ran out meanwhile would
        # depose a healthy leader (a follower installing the leader's snapshot).
        self._postpone_election()
        seconds = time.monotonic() - started
        self._snapshot_load_seconds = seconds
        log_event(
            logger,
            "raft.dump_loaded",
            index=raft_data[0][1],
            seconds=round(seconds, 3),
            trim_ms=trim_ms,
        )
        return tuple(raft_data)

    def _finish_interrupted_compaction(
        self, first: tuple[Any, ...], second: tuple[Any, ...]
    ) -> None:
        """Trap 3: drop journal entries before the dump's head if the kill came between
        the dump's rename and pysyncobj's truncation, so the journal's head matches."""
        journal = self._raft_log()
        if len(journal) < 2:
            return
        if journal[0] == first and journal[1] == second:
            return
        pos = first[1] - journal[0][1]
        if (
            pos > 0
            and pos + 1 < len(journal)
            and journal[pos] == first
            and journal[pos + 1] == second
        ):
            journal.deleteEntriesTo(pos)
            log_event(
                logger, "raft.compaction_finished_after_restart", logging.WARNING, index=first[1]
            )

    # -- the asyncio bridge (event loop thread) --------------------------------------------------
    async def command(self, op: str, args: dict[str, Any]) -> Any:
        """Commit one command and return its result as applied on this node."""
        observe = self.command_observer
        if observe is None or op not in COMMANDS:
            return await self._command(op, args)
        start = time.perf_counter()
        try:
            return await self._command(op, args)
        finally:
            observe(op, time.perf_counter() - start)

    async def _command(self, op: str, args: dict[str, Any]) -> Any:
        if op not in COMMANDS:
            raise RequestInvalid(f"unknown command {op!r}")
        if self.is_leader() and self._log_cannot_grow():
            raise _storage_full(self._journal.space())
        if not self._reaches_quorum():
            # A minority side cannot commit anything: say so now rather than after the
            # command timeout, so the caller moves on to a node that can.
            raise Unavailable(f"raft: {op} refused, this node reaches no majority; retry elsewhere")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, int]] = loop.create_future()
        self._pending.append((op, args, fut))
        self._schedule_flush(loop)
        try:
            result, error = await asyncio.wait_for(fut, self._command_timeout)
        except TimeoutError:
            raise Unavailable(
                f"raft: {op} not committed within {self._command_timeout}s; outcome unknown, retry"
            ) from None
        if error == NO_SPACE:
            raise MetadataStorageFull(
                detail={"reason": f"{op} refused: the leader's metadata log cannot grow"}
            )
        if error != FAIL_REASON.SUCCESS:
            raise Unavailable(
                f"raft: {op} failed ({_FAIL_NAMES.get(error, error)}); outcome unknown, retry"
            )
        if isinstance(result, RegistryError):
            raise result
        return result

    def _reaches_quorum(self) -> bool:
        for _ in range(3):
            with contextlib.suppress(RuntimeError):  # a set the tick thread resized
                return bool(self.hasQuorum)
        return True

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Submit waiting commands, one log entry per batch, while fewer than
        `raft_batches_in_flight` batches are uncommitted (group commit: commands that
        arrive during a round trip share the next entry and its round of messages)."""
        self._flush_scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            size = weight = 0
            for _, args, _ in self._pending:
                weight += _weight(args)
                if size and weight > self._batch_max:
                    break
                size += 1
            group = self._pending[:size]
            del self._pending[:size]
            futs = [fut for _, _, fut in group]
            self._in_flight += 1
            slot = _Slot(self, loop)
            timer = loop.call_later(self._command_timeout, slot.release)

            def on_result(
                result: Any,
                error: int,
                futs: list[Any] = futs,
                single: bool = len(group) == 1,
                slot: _Slot = slot,
                timer: asyncio.TimerHandle = timer,
            ) -> None:  # tick thread
                results = [result] if single else result
                with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                    loop.call_soon_threadsafe(_resolve_all, futs, results, error, slot, timer)

            if len(group) == 1:
                op, args, _ = group[0]
                self._apply(op, args, callback=on_result)
            else:
                self._apply_batch([(op, args) for op, args, _ in group], callback=on_result)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending and not self._flush_scheduled and self._in_flight < self._max_in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)

    async def barrier(self) -> None:
        """Return once a no-op committed after this call started is applied here; with the
        log short of space, once leadership is confirmed without one."""
        if self.is_leader() and self._log_cannot_grow():
            await self._confirm_leadership()
            return
        fut = self._barrier_next
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._barrier_next = loop.create_future()
            if not self._barrier_running:
                self._barrier_running = True
                self._barrier_task = loop.create_task(self._run_barriers())
        await asyncio.shield(fut)

    async def _run_barriers(self) -> None:
        try:
            while self._barrier_next is not None:
                fut, self._barrier_next = self._barrier_next, None
                try:
                    await self.command(Barrier.op, Barrier().to_args())
                except MetadataStorageFull:
                    # The leader's log cannot take the no-op; it confirms reads itself.
                    fut.set_exception(
                        Unavailable("raft: the leader's log is full; read from the leader")
                    )
                    fut.exception()
                except Exception as exc:
                    fut.set_exception(exc)
                    fut.exception()  # waiters re-raise it; never "exception not retrieved"
                else:
                    fut.set_result(None)
        finally:
            self._barrier_running = False

    async def _confirm_leadership(self) -> None:
        """A read barrier without a log append (the log cannot grow)."""
        await self.confirm_leadership(self._command_timeout)

    async def confirm_leadership(self, within: float) -> None:
        """A read point without a log append: on the leader, take the commit index, wait
        until a majority has accepted a message this leader sent after this call began
        (`_lease_confirmed_at`: then no later leader had been elected before the call),
        and for this node to apply up to that commit index. Then the applied state holds
        everything committed (and so acknowledged) before the call began. Unavailable when
        not the leader, or not confirmed within `within` seconds. Used while the log is
        short of space, and by the access leases (node/metadata/access_leases.py)."""
        if not self.is_leader():
            raise Unavailable("raft: not the leader; retry")
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        deadline = loop.time() + within
        term, commit = self.raftCurrentTerm, self.raftCommitIndex
        while not (self._committed_in_term() and self._lease_confirmed_at() >= start):
            if loop.time() > deadline or not self.is_leader():
                raise Unavailable("raft: leadership not confirmed; retry")
            await asyncio.sleep(0.005)
            commit = self.raftCommitIndex
        while self.raftLastApplied < commit:
            if loop.time() > deadline:
                raise Unavailable("raft: read index not applied in time; retry")
            await asyncio.sleep(0.005)
        if self.raftCurrentTerm != term or not self.is_leader():
            raise Unavailable("raft: leadership changed during a read; retry")

    def journal_space(self) -> JournalSpace:
        """The metadata log's claimed, used and free bytes (any thread)."""
        return self._journal.space()

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        """Read the applied state, after a barrier when `linearizable`."""
        if op not in QUERIES:
            raise RequestInvalid(f"unknown query {op!r}")
        if op == AccessFence.op:
            # Everything acknowledged before is applied here (a barrier), then every
            # gateway holding a lease has it or can no longer trust an older revision.
            if not self.is_leader():
                raise Unavailable("raft: access_fence runs on the leader; retry there")
            await self.barrier()
            await self.leases.fence(self._command_timeout)
            return None
        if linearizable:
            await self.barrier()
        elif op in _LEADER_READS and not self.is_leader():
            raise Unavailable(f"raft: {op} is read from the leader; retry there")
        with self._lock:
            return self.state.query(op, args)

    def local_query(self, op: str, args: dict[str, Any]) -> Any:
        """A non-linearizable read of the local state (any thread)."""
        with self._lock:
            return self.state.query(op, args)

    @property
    def state_lock(self) -> threading.Lock:
        """The lock `apply` and `query` hold (background builders of derived indexes take
        it in short slices: node/metadata/search_build.py)."""
        return self._lock

    def state_snapshot(self) -> tuple[dict[str, Any], int]:
        """A consistent copy of the applied state's containers and the index it reflects
        (garbage collection marks from it off the lock; the records inside are immutable)."""
        with self._lock:
            return self.state.snapshot(), int(self.raftLastApplied)

    # -- status ----------------------------------------------------------------------------
    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return leader.id if leader is not None else None

    def status(self) -> RaftStatus:
        """Raft status from pysyncobj's getStatus() (read from the loop thread)."""
        for _ in range(5):
            try:
                raw = self.getStatus()
                others = sorted(node.id for node in self.otherNodes)
                break
            except RuntimeError:  # a dict the tick thread resized while we read it
                continue
        else:
            raise Unavailable("raft status unavailable")
        leader = raw.get("leader")
        self_node = raw["self"]
        return RaftStatus(
            self_address=self_node.id,
            leader=leader.id if leader is not None else None,
            is_leader=raw["state"] == 2,
            term=int(raw["raft_term"]),
            commit_index=int(raw["commit_idx"]),
            last_applied=int(raw["last_applied"]),
            log_len=int(raw["log_len"]),
            members=sorted([self_node.id, *others]),
            has_quorum=bool(raw["has_quorum"]),
            role=_ROLES.get(raw["state"], "follower"),
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def wait_bound(self) -> None:
        """Until the Raft port is bound; ConfigError when `raft_bind_retries` ran out."""
        try:
            await asyncio.to_thread(self.waitBinded)
        except SyncObjException as exc:
            raise ConfigError(f"cannot bind the Raft port: {exc}") from None

    async def close(self) -> None:
        """Stop the tick thread (closes Raft sockets and the journal) and wait for it."""
        self.destroy()
        await asyncio.to_thread(self._join_tick_thread)
        pid, self._dump_pid = self._dump_pid, 0
        if pid:  # a snapshot child still writing: its file is never renamed into place
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                await asyncio.to_thread(os.waitpid, pid, 0)

    def _join_tick_thread(self) -> None:
        thread = self._tick_thread()
        if thread is not None:
            thread.join(timeout=10)
