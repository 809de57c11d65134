"""The Raft log and the term/vote record on stable storage (pysyncobj's journal, replaced).

`RaftJournal` implements pysyncobj's `Journal` interface over two files in `<data_dir>/raft/`:

- `log`: an 8-byte header, then records appended one after another. A record is
  `u32 body length, u32 crc32 of the body, body = u32 gen, u64 idx, u64 term, command`.
  The file is grown only by `os.posix_fallocate` in whole extents (`raft_journal_extent`),
  claimed ahead of use: a full disk is an `OSError` when claiming, never a SIGBUS. A claimed
  extent is also filled with zeroes (by a background thread, while half an extent is still
  free): overwriting written blocks changes no file metadata, so the `fdatasync` after an
  append is a data flush only, not a filesystem journal commit that would also flush every
  other file's pending writes (ext4 records the first write into a fallocated block in its
  journal). Appends
  go to a buffer; `sync()` writes the buffer and a trailing end marker with one `pwrite`
  and makes them durable with one `fdatasync` (group commit: one sync covers every entry
  appended since the last). Loading scans records until the end marker, a zero length, a
  bad checksum, a gap in `idx` or a lower `gen`: a torn tail is cut there. `gen` rises on
  every open and every truncation, so records left behind a truncation never come back.
  Dropping a prefix (log compaction) rewrites the remaining records to `log.new`, syncs
  it, renames it over `log` and syncs the directory; if that fails (a full disk) the old
  file stays and the dropped prefix is skipped again at the next start.
- `term`: two fixed 512-byte slots, each `magic, seq, term, commit index, voted-for, crc`.
  A write goes to the slot not holding the newest record, in place, then `fdatasync`:
  the file never changes size, so recording a term or a vote needs no free space, and a
  torn write leaves the other slot intact. `set_term` returns only once it is durable.

In RAM the journal keeps each entry's offset (8 bytes) and only the newest entries
themselves (`_TAIL_ENTRIES`, `_TAIL_BYTES`, never one not yet written): pysyncobj's reads
of older ones (a follower catching up, the replay after a restart, the entries a compaction
keeps) read the file back, so the log between two snapshots costs the node almost no memory
(node/metadata/log_entries.py).

Journals written by pysyncobj's own `FileJournal` (`journal`, `journal.meta`) are read
once, rewritten into these files, and removed (`migrate_pysyncobj_journal`).

`fsync=False` (config `raft_fsync`) skips the per-append `fdatasync` only: entries still
reach the page cache before they count. Term/vote, compaction rewrites and migration stay
synced. See README "Guarantees" for what each setting survives.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import pickle
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from pysyncobj.journal import Journal

from cargohold.log import log_event
from node.metadata.log_entries import LogEntries

logger = logging.getLogger("cargohold.node.raft")

LOG_NAME = "log"
TERM_NAME = "term"
_LOG_MAGIC = b"CHLOG1\n\0"
_HEADER = len(_LOG_MAGIC)
_REC = struct.Struct("<II")  # body length, crc32(body)
_BODY = struct.Struct("<IQQ")  # gen, idx, term
_END_IDX = 0  # a record with idx 0 (never a real Raft index) marks the end of the log
_MAX_RECORD = 1 << 30
_SLACK = 1 << 20  # claim granule when compaction rewrites the log
# Entries kept in RAM: the newest, up to this many and (past the newest) this many bytes of
# commands; older ones are read back from the file (node/metadata/log_entries.py).
_TAIL_ENTRIES = 1024
_TAIL_BYTES = 8 << 20

_TERM_MAGIC = b"CHTERM1\0"
_SLOT = 512
_SLOT_HEAD = struct.Struct("<8sQQQH")  # magic, seq, term, commit index, vote length
_NO_VOTE = 0xFFFF


def fsync_dir(path: str) -> None:
    """Make a rename or a file creation in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalSpace(NamedTuple):
    """What the log holds and has claimed on disk (bytes); `low`: the last extent could not
    be claimed and less than the floor is left, so new commands are refused."""

    claimed: int
    used: int
    room: int
    low: bool


def _extend(fd: int, start: int, size: int) -> None:
    """Claim [start, start+size) for real and write zeroes over it (module docstring)."""
    os.posix_fallocate(fd, start, size)
    zeros = bytes(min(size, 1 << 20))
    pos, end = start, start + size
    while pos < end:
        pos += os.pwrite(fd, zeros[: end - pos], pos)


def _record(gen: int, idx: int, term: int, command: bytes) -> bytes:
    body = _BODY.pack(gen, idx, term) + command
    return _REC.pack(len(body), zlib.crc32(body)) + body


class ScannedLog(NamedTuple):
    entries: list[tuple[bytes, int, int]]
    offsets: list[int]
    end: int  # offset after the last valid record
    gen: int  # the highest gen seen
    clean: bool  # ended at an end marker or zeroes, not at a torn or stale record


def scan_log(data: bytes, keep: int | None = None) -> ScannedLog:
    """Parse a log file's bytes into its valid prefix (`entries`: only the last `keep`
    when given; `offsets`: every entry's).

    Stops at the end marker or at the first record that is incomplete, fails its checksum,
    breaks the idx sequence or has a lower gen than the one before."""
    if data[:_HEADER] != _LOG_MAGIC:
        raise ValueError("not a cargohold raft log (bad header)")
    kept: deque[tuple[bytes, int, int]] = deque(maxlen=keep)
    offsets: list[int] = []
    last_idx = None
    pos, gen, size, clean = _HEADER, 0, len(data), True
    while pos + _REC.size + _BODY.size <= size:
        length, crc = _REC.unpack_from(data, pos)
        if length == 0 and crc == 0:
            break
        clean = False
        if length < _BODY.size or length > _MAX_RECORD or pos + _REC.size + length > size:
            break
        body = data[pos + _REC.size : pos + _REC.size + length]
        if zlib.crc32(body) != crc:
            break
        rgen, idx, term = _BODY.unpack_from(body)
        if rgen < gen or (last_idx is not None and idx not in (_END_IDX, last_idx + 1)):
            break
        if idx == _END_IDX:
            clean = True
            break
        clean = True
        gen = rgen
        last_idx = idx
        kept.append((body[_BODY.size :], idx, term))
        offsets.append(pos)
        pos += _REC.size + length
    return ScannedLog(list(kept), offsets, pos, gen, clean)


def read_records(data: bytes) -> list[tuple[bytes, int, int]]:
    """The entries of consecutive whole records, checked (a read back of written ones)."""
    out = []
    pos = 0
    while pos < len(data):
        length, crc = _REC.unpack_from(data, pos)
        body = data[pos + _REC.size : pos + _REC.size + length]
        if len(body) != length or length < _BODY.size or zlib.crc32(body) != crc:
            raise OSError(f"raft log record at +{pos} unreadable")
        _, idx, term = _BODY.unpack_from(body)
        out.append((body[_BODY.size :], idx, term))
        pos += _REC.size + length
    return out


class TermStore:
    """currentTerm, votedFor and the commit index in two in-place slots (see module doc)."""

    def __init__(self, path: str, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        created = not os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created or os.fstat(self._fd).st_size < 2 * _SLOT:
            os.posix_fallocate(self._fd, 0, 2 * _SLOT)
            os.fsync(self._fd)
            fsync_dir(os.path.dirname(path) or ".")
        self.seq, self.term, self.commit, self.vote = 0, 0, 1, None
        for slot in range(2):
            rec = self._read_slot(slot)
            if rec is not None and rec[0] > self.seq:
                self.seq, self.term, self.commit, self.vote = rec

    def _read_slot(self, slot: int) -> tuple[int, int, int, str | None] | None:
        raw = os.pread(self._fd, _SLOT, slot * _SLOT)
        if len(raw) < _SLOT:
            return None
        magic, seq, term, commit, vlen = _SLOT_HEAD.unpack_from(raw)
        if magic != _TERM_MAGIC:
            return None
        vote_end = _SLOT_HEAD.size + (0 if vlen == _NO_VOTE else vlen)
        if vote_end + 4 > _SLOT:
            return None
        (crc,) = struct.unpack_from("<I", raw, vote_end)
        if zlib.crc32(raw[:vote_end]) != crc:
            return None
        vote = None if vlen == _NO_VOTE else raw[_SLOT_HEAD.size : vote_end].decode()
        return seq, term, commit, vote

    def store(self, term: int, vote: str | None, commit: int) -> None:
        """Write a new record into the older slot; durable on return (always synced: an
        unsynced record could be the only intact one after a torn write of the other)."""
        vote_raw = b"" if vote is None else vote.encode()
        if len(vote_raw) > _SLOT - _SLOT_HEAD.size - 4:
            raise ValueError("node id too long for the term record")
        seq = self.seq + 1
        head = _SLOT_HEAD.pack(
            _TERM_MAGIC, seq, term, commit, _NO_VOTE if vote is None else len(vote_raw)
        )
        raw = head + vote_raw
        raw += struct.pack("<I", zlib.crc32(raw))
        os.pwrite(self._fd, raw.ljust(_SLOT, b"\0"), (seq % 2) * _SLOT)
        if self._fsync:
            os.fdatasync(self._fd)
        self.seq, self.term, self.vote, self.commit = seq, term, vote, commit

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def migrate_pysyncobj_journal(raft_dir: str) -> int | None:
    """Rewrite a journal of pysyncobj's `FileJournal` format into ours, once.

    Reads `journal` (records `u32 size, u64 idx, u64 term, command, u32 size` after a
    40-byte header holding the end offset) and `journal.meta` (a pickled dict), writes
    `log` and `term` durably, then removes the old files. Returns the entries migrated, or
    None when there was nothing to migrate."""
    old = os.path.join(raft_dir, "journal")
    new = os.path.join(raft_dir, LOG_NAME)
    if os.path.exists(new) or not os.path.exists(old):
        return None
    with open(old, "rb") as f:
        data = f.read()
    if not data.startswith(b"PYSYNCOBJ"):
        raise ValueError(f"{old} is not a pysyncobj journal")
    (end,) = struct.unpack_from("<I", data, 36)
    entries: list[tuple[bytes, int, int]] = []
    pos = 40
    while pos < min(end, len(data)):
        (size,) = struct.unpack_from("<I", data, pos)
        body = data[pos + 4 : pos + 4 + size]
        idx, term = struct.unpack_from("<QQ", body)
        entries.append((body[16:], idx, term))
        pos += size + 8
    meta: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, EOFError, pickle.UnpicklingError):
        with open(old + ".meta", "rb") as f:
            meta = pickle.loads(f.read())
    tmp = new + ".new"
    with open(tmp, "wb") as f:
        f.write(_LOG_MAGIC)
        for command, idx, term in entries:
            f.write(_record(1, idx, term, command))
        f.write(_record(1, _END_IDX, 0, b""))
        f.flush()
        os.fsync(f.fileno())
    terms = TermStore(os.path.join(raft_dir, TERM_NAME))
    terms.store(
        int(meta.get("currentTerm", 0)),
        meta.get("votedForNodeId"),
        int(meta.get("raftCommitIndex", 1)),
    )
    terms.close()
    os.replace(tmp, new)
    fsync_dir(raft_dir)
    for name in ("journal", "journal.meta", "journal.meta.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(raft_dir, name))
    fsync_dir(raft_dir)
    log_event(logger, "raft.journal_migrated", entries=len(entries), source=old)
    return len(entries)


class RaftJournal(Journal):
    """pysyncobj's journal interface on `log` + `term` (see the module docstring).

    Every method runs on pysyncobj's tick thread except `space()` and `dirty` reads."""

    def __init__(
        self,
        raft_dir: str,
        fsync: bool = True,
        extent: int = 16 * 1024 * 1024,
        floor: int = 1024 * 1024,
    ) -> None:
        self._dir = raft_dir
        self._path = os.path.join(raft_dir, LOG_NAME)
        self._fsync = fsync
        self._extent = max(64 * 1024, extent)
        self._floor = min(floor, self._extent // 2)
        os.makedirs(raft_dir, exist_ok=True)
        migrate_pysyncobj_journal(raft_dir)
        self._terms = TermStore(os.path.join(raft_dir, TERM_NAME), fsync=True)
        self._commit_saved = self._terms.commit
        if not os.path.exists(self._path):
            self._create_empty(self._path)
        self._fd = os.open(self._path, os.O_RDWR)
        with open(self._path, "rb") as f:
            data = f.read()
        # Only a tail of the entries stays in RAM (node/metadata/log_entries.py).
        scanned = scan_log(data, keep=_TAIL_ENTRIES)
        del data
        self._entries = LogEntries(self._read_records, _TAIL_ENTRIES, _TAIL_BYTES)
        self._end = scanned.end
        first = len(scanned.offsets) - len(scanned.entries)
        if scanned.offsets:
            self._entries.start_at(scanned.offsets[:first], scanned.entries[0][1] - first)
        for (command, idx, term), offset in zip(
            scanned.entries, scanned.offsets[first:], strict=True
        ):
            self._entries.append(command, idx, term, offset)
        self._allocated = os.fstat(self._fd).st_size
        self._gen = scanned.gen + 1
        self._commit = self._terms.commit
        self._written = self._end  # file bytes up to here hold the records of `_entries`
        self._pending = bytearray()  # records after `_written`, not yet written
        self._marker_due = True
        self._claim_failed_at = 0.0
        self._claim_error: str | None = None
        self._claimer: threading.Thread | None = None
        self._claim_lock = threading.Lock()
        self._file_epoch = 0  # rises when `log` is replaced by a rewrite
        self.sync_failures = 0
        if not scanned.clean:
            log_event(
                logger,
                "raft.journal_tail_cut",
                logging.WARNING,
                entries=len(self._entries),
                offset=self._end,
            )

    def _create_empty(self, path: str) -> None:
        tmp = path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _extend(fd, 0, self._extent)
            os.pwrite(fd, _LOG_MAGIC, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(self._dir)

    # -- pysyncobj's Journal interface -----------------------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        self._entries.append(command, idx, term, self._end)
        rec = _record(self._gen, idx, term, bytes(command))
        self._pending += rec
        self._end += len(rec)

    def clear(self) -> None:
        self._truncate(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom < len(self._entries):
            self._truncate(max(0, entryFrom))

    def deleteEntriesTo(self, entryTo: int) -> None:
        if entryTo <= 0:
            return
        entryTo = min(entryTo, len(self._entries))
        try:
            offsets = self._rewrite(self._entries[entryTo:])
        except OSError as exc:
            # The old file stays valid; its dropped prefix is skipped at the next start.
            log_event(logger, "raft.journal_compaction_failed", logging.WARNING, error=repr(exc))
            self._entries.drop_prefix(entryTo)
            return
        self._entries.drop_prefix(entryTo, offsets)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def ram_entries(self) -> int:
        """How many entries are held in RAM (the newest; the others are read back)."""
        return self._entries.ram_entries()

    def _read_records(self, offset: int, length: int) -> list[tuple[bytes, int, int]]:
        """The entries of the written records in file bytes [offset, offset + length)."""
        return read_records(os.pread(self._fd, length, offset))

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._wait_claimer()
        with contextlib.suppress(OSError):
            self.sync()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._terms.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._commit = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        last = self._entries[-1][1] if len(self._entries) else 1
        return max(1, min(self._terms.commit, last))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft: currentTerm and votedFor are durable before any message reflecting them.
        vote = None if votedForNodeId is None else str(votedForNodeId)
        self._terms.store(term, vote, self._commit)

    def getCurrentTerm(self) -> int:
        return self._terms.term

    def getVotedForNodeId(self) -> str | None:
        return self._terms.vote

    def onOneSecondTimer(self) -> None:
        if self._claim_error is not None:
            self._claim_ahead()  # space may be back: without it no append would retry
        commit = self._commit
        if commit == self._commit_saved:
            return
        try:
            self._terms.store(self._terms.term, self._terms.vote, commit)
            self._commit_saved = commit
        except OSError as exc:
            log_event(logger, "raft.term_write_failed", logging.WARNING, error=repr(exc))

    # -- durability ------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Entries appended (or a truncation made) since the last successful sync."""
        return bool(self._pending) or self._marker_due

    def sync(self) -> bool:
        """Write everything appended since the last sync and make it durable (one
        `fdatasync`). False when it could not (no space could be claimed, an I/O error):
        nothing reflecting those entries may be sent then; a later call retries."""
        if not self._pending and not self._marker_due:
            return True
        marker = _record(self._gen, _END_IDX, 0, b"")
        try:
            self._claim(self._end + len(marker))
            os.pwrite(self._fd, bytes(self._pending) + marker, self._written)
            if self._fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            self.sync_failures += 1
            if self.sync_failures == 1 or self.sync_failures % 100 == 0:
                log_event(
                    logger,
                    "raft.journal_sync_failed",
                    logging.ERROR,
                    error=repr(exc),
                    failures=self.sync_failures,
                )
            return False
        self._written = self._end
        self._pending.clear()
        self._marker_due = False
        self._entries.evict(self._written)
        if self.sync_failures:
            log_event(logger, "raft.journal_sync_recovered", failures=self.sync_failures)
            self.sync_failures = 0
        self._claim_ahead()
        return True

    def synced_index(self) -> int:
        """The Raft index of the last entry written by a successful sync (0: none)."""
        k = bisect.bisect_left(self._entries.offsets, self._written)
        return self._entries.idx_at(k - 1) if k else 0

    def space(self) -> JournalSpace:
        room = self._allocated - self._end
        low = self._claim_error is not None and room < self._floor
        return JournalSpace(self._allocated, self._end, room, low)

    @property
    def low(self) -> bool:
        """No further extent could be claimed and less than the floor is left."""
        return self.space().low

    def _claim(self, needed: int) -> None:
        """Make the file's claimed size cover `needed` bytes (whole extents), now: the
        appends outran the claim ahead (or it failed)."""
        if needed <= self._allocated:
            return
        self._wait_claimer()
        if needed <= self._allocated:
            return
        size = self._allocated
        while size < needed:
            size += self._extent
        try:
            _extend(self._fd, self._allocated, size - self._allocated)
        except OSError as exc:
            self._note_claim_failure(exc)
            raise
        self._claimed(size)

    def _claimed(self, size: int) -> None:
        self._allocated = size
        if self._claim_error is not None:
            log_event(logger, "raft.journal_space_back", claimed=size)
            self._claim_error = None

    def _claim_ahead(self) -> None:
        """Claim the next extent in the background while half of one is still free, so
        appends continue for a while when the disk fills; retried at most once a second
        after a failure."""
        if self._allocated - self._end >= self._extent // 2:
            return
        if time.monotonic() - self._claim_failed_at < 1.0:
            return
        if self._claimer is not None and self._claimer.is_alive():
            return
        self._claimer = threading.Thread(
            target=self._claim_in_background,
            args=(self._fd, self._allocated, self._file_epoch),
            name="raft-log-claim",
            daemon=True,
        )
        self._claimer.start()

    def _claim_in_background(self, fd: int, start: int, epoch: int) -> None:
        """Claim thread: the region past `_allocated` is written by nobody else until
        it is published here (the tick thread waits for this thread before it claims or
        replaces the file itself)."""
        try:
            _extend(fd, start, self._extent)
            if self._fsync:
                os.fdatasync(fd)
        except OSError as exc:
            with self._claim_lock:
                self._note_claim_failure(exc)
            return
        with self._claim_lock:
            if self._file_epoch == epoch and self._allocated == start:
                self._claimed(start + self._extent)

    def _wait_claimer(self) -> None:
        claimer = self._claimer
        if claimer is not None:
            claimer.join()
            self._claimer = None

    def _note_claim_failure(self, exc: OSError) -> None:
        self._claim_failed_at = time.monotonic()
        if self._claim_error is None:
            log_event(
                logger,
                "raft.journal_space_low",
                logging.WARNING,
                error=repr(exc),
                room=self._allocated - self._end,
            )
        self._claim_error = repr(exc)

    def _truncate(self, keep: int) -> None:
        """Keep the first `keep` entries; later records on disk become unreachable."""
        offsets = self._entries.offsets
        new_end = offsets[keep] if keep < len(offsets) else self._end
        self._entries.truncate(keep, new_end)
        if new_end >= self._written:
            del self._pending[new_end - self._written :]
        else:
            self._pending.clear()
            self._written = new_end
            self._gen += 1
        self._end = new_end
        self._marker_due = True

    def _rewrite(self, entries: Iterable[tuple[bytes, int, int]]) -> list[int]:
        """Write `entries` to a new file, sync it, rename it over `log`, sync the dir;
        their offsets in it."""
        self._wait_claimer()
        tmp = self._path + ".new"
        gen = self._gen + 1
        body = bytearray(_LOG_MAGIC)
        offsets = []
        for command, idx, term in entries:
            offsets.append(len(body))
            body += _record(gen, idx, term, bytes(command))
        end = len(body)
        body += _record(gen, _END_IDX, 0, b"")
        # Claimed (and zero-filled) here, on the Raft thread: what the kept entries need
        # plus some slack; the next extent is claimed in the background right after (a
        # whole extent written and synced here stalled every compaction).
        step = min(self._extent, _SLACK)
        size = step * (len(body) // step + 2)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _extend(fd, 0, size)
            os.pwrite(fd, bytes(body), 0)
            os.fsync(fd)
            os.replace(tmp, self._path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            # Unsynced, a power cut may bring the old file back: still valid (its dropped
            # prefix is skipped at the next start).
            fsync_dir(self._dir)
        os.close(self._fd)
        self._fd = fd
        self._file_epoch += 1
        self._end = self._written = end
        self._allocated = size
        self._gen = gen
        self._pending.clear()
        self._marker_due = False
        self._claim_ahead()
        return offsets
