"""`LogEntries`: the Raft log's entries as pysyncobj reads them, with only a tail in RAM.

pysyncobj indexes its journal like a list of `(command, idx, term)` tuples. Holding every
entry since the last snapshot in RAM made the log the largest part of a node's memory
(about 1.7 KB per manifest pushed, until the next compaction: docs/metadata.md, "Memory
per manifest"). Here only the newest entries stay in RAM (at most `tail_entries` and, past
the first, `tail_bytes` of commands; never one not yet written to the file); an older entry
is read back from the log file by its offset when pysyncobj asks for it (a follower
catching up, the replay after a restart, a compaction keeping the entries after a
snapshot). Per entry the index keeps 8 bytes (its offset in an `array`); idx is the first
idx plus the position (Raft appends consecutive indexes, the file scan checks it).

A slice is a lazy view (`EntryView`): iterating it reads the file in batches, indexing or
slicing it reads only what is asked, so `log[i:]` of a long log costs nothing until used.
Everything here runs on pysyncobj's tick thread (the journal's thread).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import overload

Entry = tuple[bytes, int, int]
# Reads the records stored in file bytes [offset, offset + length): their entries.
Reader = Callable[[int, int], list[Entry]]
_READ_BATCH_BYTES = 4 << 20
_READ_BATCH_ENTRIES = 1024


class LogEntries:
    """The entries of a journal (module docstring). Positions count from the oldest kept."""

    def __init__(self, read: Reader, tail_entries: int = 1024, tail_bytes: int = 8 << 20):
        self._read = read
        self._tail_entries = max(1, tail_entries)
        self._tail_bytes = tail_bytes
        self.offsets = array("Q")  # file offset of each entry's record
        self._base = 0  # idx of position 0
        self._tail: deque[Entry] = deque()  # the newest entries
        self._tail_size = 0  # bytes of commands in `_tail`
        # The oldest entry, once read: pysyncobj reads `log[0]` on every `__getEntries`.
        self._head: Entry | None = None

    # -- reads (pysyncobj's list protocol) -----------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> EntryView: ...
    def __getitem__(self, item: int | slice) -> Entry | EntryView:
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                raise ValueError("log slices have no step")
            return EntryView(self, start, max(start, stop))
        pos = item + len(self) if item < 0 else item
        if not 0 <= pos < len(self):
            raise IndexError("log index out of range")
        return self.entry(pos)

    def entry(self, pos: int) -> Entry:
        first = len(self) - len(self._tail)
        if pos >= first:
            return self._tail[pos - first]
        if pos == 0:
            if self._head is None:
                self._head = self._range(0, 1)[0]
            return self._head
        return self._range(pos, pos + 1)[0]

    def idx_at(self, pos: int) -> int:
        return self._base + pos

    def iterate(self, start: int, stop: int) -> Iterator[Entry]:
        """Entries [start, stop), read from the file in batches where not in RAM."""
        first = len(self) - len(self._tail)
        pos = start
        # Batches grow from a few entries: a reader often stops early (pysyncobj takes
        # one append message's worth, 64 KiB, of a follower's missing entries).
        batch = 16
        while pos < min(stop, first):
            end = min(stop, first, pos + batch)
            batch = min(2 * batch, _READ_BATCH_ENTRIES)
            while end - pos > 1 and self.offsets[end] - self.offsets[pos] > _READ_BATCH_BYTES:
                end = pos + (end - pos) // 2
            yield from self._range(pos, end)
            pos = end
        if pos < stop:
            tail = self._tail
            for i in range(pos - first, stop - first):
                yield tail[i]

    def _range(self, start: int, stop: int) -> list[Entry]:
        """Entries [start, stop) of the file (all before the RAM tail, which is never empty
        while the log is not, so `offsets[stop]` exists)."""
        offset = self.offsets[start]
        entries = self._read(offset, self.offsets[stop] - offset)
        if len(entries) != stop - start or entries[0][1] != self._base + start:
            raise RuntimeError(
                f"raft log: the records at offset {offset} are not entries "
                f"{self._base + start}..{self._base + stop - 1}"
            )
        return entries

    # -- changes ---------------------------------------------------------------------------
    def append(self, command: bytes, idx: int, term: int, offset: int) -> None:
        if not self.offsets:
            self._base = idx
            self._head = None
        elif idx != self._base + len(self.offsets):
            raise ValueError(f"raft log: entry {idx} appended after {self._base + len(self) - 1}")
        self.offsets.append(offset)
        self._tail.append((command, idx, term))
        self._tail_size += len(command)

    def start_at(self, offsets: Sequence[int], base: int) -> None:
        """Begin an empty log with entries already on file (not read into RAM): their
        offsets, and the idx of the first."""
        self.offsets = array("Q", offsets)
        self._base = base
        self._head = None

    def evict(self, written: int) -> None:
        """Leave RAM to the oldest tail entries whose records end before file offset
        `written` (written by a sync), down to the tail's bounds; the newest stays."""
        tail, offsets = self._tail, self.offsets
        while len(tail) > 1 and (
            len(tail) > self._tail_entries or self._tail_size > self._tail_bytes
        ):
            pos = len(offsets) - len(tail)
            if offsets[pos + 1] > written:
                break
            self._tail_size -= len(tail.popleft()[0])

    def truncate(self, keep: int, end: int) -> None:
        """Keep the first `keep` entries; `end` is the file offset after the last kept."""
        if keep >= len(self):
            return
        if keep == 0:
            self._head = None
        first = len(self) - len(self._tail)
        del self.offsets[keep:]
        if keep > first:
            while len(self._tail) > keep - first:
                self._tail_size -= len(self._tail.pop()[0])
            return
        self._tail.clear()
        self._tail_size = 0
        if keep:
            # The newest entry always stays in RAM: read it back (its record is intact,
            # appends resume after it).
            offset = self.offsets[keep - 1]
            entry = self._read(offset, end - offset)[0]
            self._tail.append(entry)
            self._tail_size = len(entry[0])

    def drop_prefix(self, count: int, offsets: Sequence[int] | None = None) -> None:
        """Forget the oldest `count` entries (log compaction); `offsets`: the kept
        entries' offsets in a rewritten file."""
        count = min(count, len(self))
        if count:
            self._head = None
        first = len(self) - len(self._tail)
        self.offsets = array("Q", offsets) if offsets is not None else self.offsets[count:]
        self._base += count
        for _ in range(max(0, count - first)):
            self._tail_size -= len(self._tail.popleft()[0])

    def ram_entries(self) -> int:
        """How many entries are held in RAM (the tail)."""
        return len(self._tail)


class EntryView(Sequence[Entry]):
    """Entries [start, stop) of a `LogEntries`, read when used (module docstring)."""

    __slots__ = ("_log", "_start", "_stop")

    def __init__(self, log: LogEntries, start: int, stop: int) -> None:
        self._log, self._start, self._stop = log, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...
    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                return list(self)[item]
            return list(self._log.iterate(self._start + start, self._start + max(start, stop)))
        pos = item + len(self) if item < 0 else item
        if not 0 <= pos < len(self):
            raise IndexError("log view index out of range")
        return self._log.entry(self._start + pos)

    def __iter__(self) -> Iterator[Entry]:
        return self._log.iterate(self._start, self._stop)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (EntryView, list, tuple)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"EntryView({self._start}..{self._stop})"

    __hash__ = None  # type: ignore[assignment]
