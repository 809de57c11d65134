"""The activity log's records and hash chain (docs/security.md "Activity log").

A record is one canonical line: the compact JSON array

    [seq, prev, time, actor, actor_kind, client, user_agent, action,
     repository, reference, digest, result, detail]

(ASCII only, no spaces), where `prev` is the hex sha256 of the previous record's line
(`GENESIS` before the first) and `seq` counts from 1. A record's hash is the sha256 of its
line, so each record commits to the whole history before it: editing, removing,
inserting or reordering any record breaks the chain at that point, up to the head
(seq, hash) the replicated state holds. `event` is a record without `seq`/`prev`: what a
gateway (or a command's actor context) hands to the state, which numbers and chains it.

Sealed segments are the lines of consecutive records, each ended by "\\n", stored as a
content-addressed blob (`sha256:` of those bytes). `verify` re-hashes segments and the
in-memory tail and checks the chain from the retained base up to the head.

Owned here: the encoding, the hashing, the JSON (dict) form of a record, and `verify`.
The state (node/metadata/state.py) stores; gateways record (gateway/activity.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
# Actions a record may carry (others may be added; the chain does not depend on them).
ACTIONS = (
    "push",
    "pull",
    "delete",
    "login",
    "denied",
    "admin",
    "gc",
    "retention",
    "policy",
    "restore",
    "purge",
)
ACTOR_KINDS = ("user", "robot", "anonymous", "admin", "system")
# Longest text field the state accepts (a gateway truncates user agents first).
MAX_FIELD = 1024
FIELDS = (
    "time",
    "actor",
    "actor_kind",
    "client",
    "user_agent",
    "action",
    "repository",
    "reference",
    "digest",
    "result",
    "detail",
)
_TEXT_FIELDS = FIELDS[1:]


class AuditEventInvalid(ValueError):
    """An event whose shape the state refuses (the caller maps it to RequestInvalid)."""


def event(
    action: str,
    *,
    time: float,
    actor: str = "",
    actor_kind: str = "anonymous",
    client: str = "",
    user_agent: str = "",
    repository: str = "",
    reference: str = "",
    digest: str = "",
    result: str = "ok",
    detail: str = "",
) -> list[Any]:
    """One event as it travels in `audit_append` (the FIELDS, in order)."""
    return [
        round(float(time), 6),
        actor,
        actor_kind,
        client,
        user_agent[:256],
        action,
        repository,
        reference,
        digest,
        result,
        detail[:MAX_FIELD],
    ]


def check_event(raw: Any) -> list[Any]:
    """The event as the state will chain it; AuditEventInvalid when malformed."""
    if not isinstance(raw, list) or len(raw) != len(FIELDS):
        raise AuditEventInvalid(f"an audit event is a list of {len(FIELDS)} fields")
    when = raw[0]
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise AuditEventInvalid("audit event time must be a number")
    for name, value in zip(_TEXT_FIELDS, raw[1:], strict=True):
        if not isinstance(value, str) or len(value) > MAX_FIELD:
            raise AuditEventInvalid(f"audit event field {name} must be a string")
    if not raw[5]:
        raise AuditEventInvalid("audit event needs an action")
    return [float(when), *raw[1:]]


def encode(seq: int, prev: str, ev: list[Any]) -> bytes:
    """The canonical line of record `seq` chained after `prev` (hex)."""
    return json.dumps([seq, prev, *ev], separators=(",", ":"), ensure_ascii=True).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def decode(line: bytes | str) -> dict[str, Any]:
    """A canonical line as a JSON object (plus its `hash`); ValueError when malformed."""
    raw = line.encode() if isinstance(line, str) else line
    row = json.loads(raw)
    if not isinstance(row, list) or len(row) != 2 + len(FIELDS):
        raise ValueError("not an audit record line")
    out: dict[str, Any] = {"seq": row[0], "prev": row[1]}
    out.update(zip(FIELDS, row[2:], strict=True))
    out["hash"] = line_hash(raw)
    return out


def segment_bytes(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def segment_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def segment_lines(data: bytes) -> list[bytes]:
    if data and not data.endswith(b"\n"):
        raise ValueError("segment does not end with a newline")
    return data.split(b"\n")[:-1] if data else []


# -- verification --------------------------------------------------------------------------
@dataclass
class Report:
    """What `verify` found: `ok` when the whole retained chain checks out."""

    head_seq: int
    head_hash: str
    checked: int = 0
    segments: int = 0
    problems: list[str] = field(default_factory=list)
    # An anchor was given and the chain passes through it.
    anchor_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checked": self.checked,
            "segments": self.segments,
            "problems": self.problems,
            "anchor_checked": self.anchor_checked,
        }


class _Chain:
    def __init__(
        self, report: Report, seq: int, prev: str, anchor: tuple[int, str] | None = None
    ) -> None:
        self.report = report
        self.seq = seq
        self.prev = prev
        self.anchor = anchor
        # The hash this chain has at the anchor's seq, once re-hashed there.
        self.at_anchor: str | None = prev if anchor is not None and anchor[0] == seq else None

    def feed(self, line: bytes, where: str) -> None:
        try:
            row = json.loads(line)
            seq, prev = row[0], row[1]
            if not isinstance(row, list) or len(row) != 2 + len(FIELDS):
                raise ValueError
        except (ValueError, TypeError, IndexError, KeyError):
            self.report.problems.append(f"{where}: unreadable record after seq {self.seq}")
            self.prev = line_hash(line)
            self.seq += 1
            return
        if seq != self.seq + 1:
            self.report.problems.append(
                f"{where}: seq {seq} follows seq {self.seq} (record removed, inserted or moved)"
            )
        if prev != self.prev:
            self.report.problems.append(
                f"{where}: record {seq} does not chain to the record before it "
                "(edited, removed, inserted or reordered)"
            )
        self.seq = seq if isinstance(seq, int) else self.seq + 1
        self.prev = line_hash(line)
        self.report.checked += 1
        if self.anchor is not None and self.seq == self.anchor[0]:
            self.at_anchor = self.prev

    def check_anchor(self, base_seq: int) -> None:
        """Does the re-hashed chain pass through the anchor (a head recorded earlier,
        outside the cluster)? Each hash covers every record before it, so a match proves
        that nothing up to the anchor was rewritten since."""
        if self.anchor is None:
            return
        seq, want = self.anchor
        problems = self.report.problems
        if seq < base_seq:
            problems.append(
                f"anchor seq {seq}: before the retained chain (base seq {base_seq}), cannot "
                "be checked; anchor more often than audit.retention_days"
            )
        elif seq > self.seq:
            problems.append(f"anchor seq {seq}: past the head (seq {self.seq}): records removed")
        elif self.at_anchor is None:
            problems.append(f"anchor seq {seq}: not re-hashed (an unreadable segment holds it)")
        elif self.at_anchor != want:
            problems.append(
                f"anchor seq {seq}: the chain's hash there is {self.at_anchor[:16]}, the anchor "
                f"says {want[:16]}: the log up to it was rewritten"
            )
        else:
            self.report.anchor_checked = True


@dataclass(frozen=True)
class SegmentInfo:
    """A sealed segment as the state records it."""

    first: int
    last: int
    prev: str
    hash: str
    digest: str
    size: int
    recipe: dict[str, Any]
    sealed_at: float
    last_time: float

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "prev": self.prev,
            "hash": self.hash,
            "digest": self.digest,
            "size": self.size,
            "recipe": self.recipe,
            "sealed_at": self.sealed_at,
            "last_time": self.last_time,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SegmentInfo:
        return cls(
            int(raw["first"]),
            int(raw["last"]),
            str(raw["prev"]),
            str(raw["hash"]),
            str(raw["digest"]),
            int(raw["size"]),
            dict(raw["recipe"]),
            float(raw["sealed_at"]),
            float(raw["last_time"]),
        )


def verify(
    base_seq: int,
    base_hash: str,
    segments: list[SegmentInfo],
    read_segment: Callable[[SegmentInfo], bytes],
    tail: Iterable[bytes],
    head_seq: int,
    head_hash: str,
    anchor: tuple[int, str] | None = None,
) -> Report:
    """Check the chain: retained base -> every sealed segment (re-read and re-hashed) ->
    the in-memory tail -> the head the state holds; and, given an `anchor` (seq, hash) kept
    outside the cluster (`cargohold admin audit export --anchor`), that the chain passes
    through it."""
    report = Report(head_seq, head_hash)
    chain = _Chain(report, base_seq, base_hash, anchor)
    for seg in segments:
        where = f"segment {seg.first}-{seg.last} ({seg.digest[:19]})"
        if seg.first != chain.seq + 1 or seg.prev != chain.prev:
            report.problems.append(f"{where}: does not continue the chain at seq {chain.seq}")
            chain.seq, chain.prev = seg.first - 1, seg.prev
        try:
            data = read_segment(seg)
        except Exception as exc:  # any unreadable segment is a finding
            report.problems.append(f"{where}: unreadable ({type(exc).__name__}: {exc})")
            chain.seq, chain.prev = seg.last, seg.hash
            continue
        report.segments += 1
        if segment_digest(data) != seg.digest:
            report.problems.append(f"{where}: content does not match its digest (rewritten)")
        try:
            lines = segment_lines(data)
        except ValueError:
            report.problems.append(f"{where}: truncated")
            lines = data.split(b"\n")
        for line in lines:
            chain.feed(line, where)
        if chain.seq != seg.last or chain.prev != seg.hash:
            report.problems.append(f"{where}: ends at seq {chain.seq}, not at its sealed end")
            chain.seq, chain.prev = seg.last, seg.hash
    for line in tail:
        chain.feed(line, "tail")
    chain.check_anchor(base_seq)
    if chain.seq != head_seq or chain.prev != head_hash:
        report.problems.append(
            f"tail: ends at seq {chain.seq} hash {chain.prev[:16]}, the head is "
            f"seq {head_seq} hash {head_hash[:16]}"
        )
    return report


# A blob's push, pull or delete record says so in its `detail`, with the blob's size:
# "blob 1234 bytes" (a manifest's records never start with "blob").
_BLOB_DETAIL = re.compile(r"^blob (\d+) bytes$")


def blob_detail(size: int) -> str:
    """The `detail` of a blob record."""
    return f"blob {size} bytes"


def blob_size(record: dict[str, Any]) -> int | None:
    """The blob's size when `record` is a blob's push, pull or delete; else None."""
    match = _BLOB_DETAIL.match(record.get("detail") or "")
    return int(match.group(1)) if match else None


# A delete record's `detail`: "tag" for a tag deleted by name (the manifest stays),
# "manifest" or "manifest; tags a,b" for a manifest deleted by digest (with the tags on it).
TAG_DELETED = "tag"
_MANIFEST_DELETED = "manifest"


def manifest_deleted_detail(tags: list[str]) -> str:
    """The `detail` of a manifest's delete record, naming the tags that went with it."""
    return _MANIFEST_DELETED + (f"; tags {','.join(sorted(tags))}" if tags else "")


def deleted(record: dict[str, Any]) -> str | None:
    """What a delete record removed: "tag" or "manifest"; None for a blob's delete (and
    for any other record)."""
    if record.get("action") != "delete":
        return None
    detail = record.get("detail") or ""
    if detail == TAG_DELETED:
        return "tag"
    if detail == _MANIFEST_DELETED or detail.startswith(_MANIFEST_DELETED + ";"):
        return "manifest"
    return None


# A restore record's `detail`: "from the trash", then "; tags a,b" with the tags it
# brought back, then "; forced" when it was forced.
_RESTORED = "from the trash"


def restore_detail(tags: list[str], forced: bool) -> str:
    """The `detail` of a restore record."""
    detail = _RESTORED + (f"; tags {','.join(tags)}" if tags else "")
    return detail + ("; forced" if forced else "")


def restored_tags(record: dict[str, Any]) -> list[str]:
    """The tags a restore record brought back (none for another record)."""
    if record.get("action") != "restore":
        return []
    for part in (record.get("detail") or "").split("; "):
        if part.startswith("tags "):
            return [t for t in part[len("tags ") :].split(",") if t]
    return []


def matches(
    record: dict[str, Any],
    *,
    repo: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> bool:
    """The query filters of `cargohold admin audit` (repo: the name or a prefix ending /)."""
    if repo is not None:
        name = record["repository"]
        if name != repo and not (repo.endswith("/") and name.startswith(repo)):
            return False
    if actor is not None and record["actor"] != actor:
        return False
    if action is not None and record["action"] != action:
        return False
    if since is not None and record["time"] < since:
        return False
    return until is None or record["time"] < until


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for data in chunks:
        yield from segment_lines(data)
