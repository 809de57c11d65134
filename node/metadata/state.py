"""The metadata state machine: every command and query of protos/README.md's catalogue.

The whole state, as it sits in RAM on every node and in every snapshot::

    blobs      {digest: recipe}                   every committed blob (and manifest bytes)
                 recipe = (size, packed)          packed = chunk list as one bytes object,
                                                  40 B per chunk: 32 B raw sha256 id ||
                                                  u64 big-endian length (_CHUNK below)
    links      {repo: {digest, ...}}              blobs readable through a repository
    manifests  {repo: {digest: manifest}}         manifests present in a repository
                 manifest = (media_type, size, recipe, subject|None, artifact_type|None,
                             annotations_json|None, (blob digest, ...), (child digest, ...))
    tags       {repo: {tag: digest}}              only digests present in manifests[repo]
    referrers  {repo: {subject: {digest, ...}}}   manifests of repo whose `subject` is it
    uploads    {upload_id: upload}                sessions seen by a command
                 ("open",      repo, size, packed, last_request|None, touched_at)
                 ("closed",    repo, digest, closed_at)      by blob_commit of `digest`
                 ("cancelled", repo|None, None, cancelled_at)
    members    {node_id: (grpc_addr, raft_addr, "active"|"draining"|"removed")}
    blob_bytes int                                sum of the sizes in `blobs`

A repository exists while it has a linked blob or a manifest (`links`/`manifests` hold no
empty containers). An upload id absent from `uploads` is "new": the gateway signs ids,
so opening a session costs no command. Repeated strings (repos, digests, tags, media
types) are interned; records are tuples; chunk ids are bytes. `blobs` is never shrunk
here: unlinking only removes `links`, and the recipe stays for garbage collection to judge.

Determinism: `apply` depends only on the state and its arguments (`now` comes from the
caller), validates before it mutates, and never iterates a set where order could leak
into the state. Results that list set members are sorted.

Idempotency: applying a command twice has the effect of once and, where the catalogue
promises it, the same result. `upload_append` remembers the last `request` id of a
session, so a retried append returns the session's size instead of `RangeInvalid`.
Deletes (`tag_delete`, `manifest_delete`, `blob_unlink`) answer the "unknown" error when
repeated: the effect is the same, the caller sees that the thing is gone.

Snapshots: `snapshot()` copies the containers (not the records) in one go; `encode_snapshot`
turns that copy into a stream of pickles (protocol 5, no compression) in batches, so a
background thread can write a large state while the tick thread keeps applying;
`load_stream`/`load` read it back and re-intern the strings. `dump()`/`load()` are the
same as bytes.

Derived and never snapshotted: the sorted catalogue and each repository's sorted tag list
(query caches, dropped when what they order changes) and the counters behind `status`
(kept by the commands, recounted on load), so paging and health probes stay cheap.

Thread safety: the Raft tick thread applies commands while the event loop runs queries;
`node/metadata/raft.py` serialises both with one lock. This module holds no lock itself.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, BinaryIO

from cargohold.digests import parse_digest
from cargohold.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    PaginationInvalid,
    RangeInvalid,
    RequestInvalid,
    SizeInvalid,
)
from cargohold.names import validate_name, validate_tag

_CHUNK = struct.Struct(">32sQ")
_SNAPSHOT_VERSION = 2
_SNAPSHOT_BATCH = 4096
_SECTIONS = ("blobs", "links", "manifests", "tags", "referrers", "uploads", "members")

OPEN, CLOSED, CANCELLED = "open", "closed", "cancelled"
MEMBER_STATES = ("active", "draining", "removed")

Recipe = tuple[int, bytes]
Manifest = tuple[
    str, int, Recipe, str | None, str | None, str | None, tuple[str, ...], tuple[str, ...]
]

COMMANDS = frozenset(
    {
        "barrier",
        "upload_append",
        "upload_cancel",
        "blob_commit",
        "blob_mount",
        "blob_unlink",
        "manifest_put",
        "tag_delete",
        "manifest_delete",
        "member_join",
        "member_set_state",
        "expire_uploads",
    }
)
QUERIES = frozenset(
    {
        "tag_get",
        "manifest_get",
        "blob_get",
        "upload_get",
        "tags_list",
        "catalog",
        "referrers",
        "members",
        "status",
    }
)

_intern = sys.intern


# -- argument parsing (every failure is a caller bug: RequestInvalid) ----------------------
def _field(
    args: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False
) -> Any:
    value = args.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RequestInvalid(f"argument {key!r} missing or of the wrong type")
    return value


def _repo(args: dict[str, Any], key: str = "repo") -> str:
    return _intern(validate_name(_field(args, key, str)))


def _digest(args: dict[str, Any], key: str = "digest") -> str:
    value = _field(args, key, str)
    parse_digest(value)
    return _intern(value)


def _digests(args: dict[str, Any], key: str) -> tuple[str, ...]:
    values = _field(args, key, list, optional=True) or []
    out = []
    for value in values:
        if not isinstance(value, str):
            raise RequestInvalid(f"argument {key!r} must list digests")
        parse_digest(value)
        out.append(_intern(value))
    return tuple(dict.fromkeys(out))


def _number(args: dict[str, Any], key: str) -> float:
    return float(_field(args, key, (int, float)))


def _pack_chunks(chunks: Any) -> tuple[bytes, int]:
    """[[hex, len], ...] -> (packed bytes, total length)."""
    if not isinstance(chunks, list):
        raise RequestInvalid("chunks must be a list of [hex, length]")
    parts = []
    total = 0
    for item in chunks:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], str)
            or len(item[0]) != 64
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or item[1] < 0
        ):
            raise RequestInvalid("chunks must be a list of [64-hex id, length >= 0]")
        try:
            chunk_id = bytes.fromhex(item[0])
        except ValueError as exc:
            raise RequestInvalid("chunk id is not hex") from exc
        parts.append(_CHUNK.pack(chunk_id, item[1]))
        total += item[1]
    return b"".join(parts), total


def _recipe(args: dict[str, Any], key: str = "recipe") -> Recipe:
    raw = _field(args, key, dict)
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestInvalid("recipe size must be an int >= 0")
    packed, total = _pack_chunks(raw.get("chunks"))
    if total != size:
        raise SizeInvalid(f"recipe chunks sum to {total}, size says {size}")
    return size, packed


def unpack_chunks(packed: bytes) -> list[list[Any]]:
    """Packed chunk list -> [[hex, length], ...] (the catalogue's JSON form)."""
    return [[chunk_id.hex(), length] for chunk_id, length in _CHUNK.iter_unpack(packed)]


def recipe_json(recipe: Recipe) -> dict[str, Any]:
    return {"size": recipe[0], "chunks": unpack_chunks(recipe[1])}


def _page(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Byte-ordered page after `last` (exclusive) of at most `n` items, and whether more follow.

    Python orders str by code point, which is UTF-8 byte order.
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise PaginationInvalid(f"n must be an int >= 0, got {n!r}")
    if last is not None and not isinstance(last, str):
        raise RequestInvalid("last must be a string")
    if n == 0:
        return [], False
    start = bisect_right(items, last) if last else 0
    if n is None:
        return items[start:], False
    return items[start : start + n], start + n < len(items)


def _flatten(name: str, section: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of one snapshot section: one row per innermost entry."""
    if name in ("blobs", "uploads", "members"):
        yield from section.items()
    elif name == "links":
        for repo, linked in section.items():
            for digest in linked:
                yield repo, digest
    elif name == "referrers":
        for repo, by_subject in section.items():
            for subject, digests in by_subject.items():
                for digest in digests:
                    yield repo, subject, digest
    else:  # manifests, tags: {repo: {key: value}}
        for repo, entries in section.items():
            for key, value in entries.items():
                yield repo, key, value


class MetadataState:
    """The replicated metadata: deterministic `apply` of commands, `query` of reads."""

    def __init__(self) -> None:
        self.blobs: dict[str, Recipe] = {}
        self.links: dict[str, set[str]] = {}
        self.manifests: dict[str, dict[str, Manifest]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.referrers: dict[str, dict[str, set[str]]] = {}
        self.uploads: dict[str, tuple[Any, ...]] = {}
        self.members: dict[str, tuple[str, str, str]] = {}
        self.blob_bytes = 0
        # Query caches, rebuilt on demand and dropped when what they order changes.
        self._catalog: list[str] | None = None
        self._tag_order: dict[str, list[str]] = {}
        # Counts behind the `status` query (an Admin.Status health probe must stay O(1)).
        self._repo_count = self._manifest_count = self._open_uploads = 0
        self._commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            op: getattr(self, f"_cmd_{op}") for op in COMMANDS
        }
        self._queries: dict[str, Callable[[dict[str, Any]], Any]] = {
            op: getattr(self, f"_q_{op}") for op in QUERIES
        }

    # -- entry points ------------------------------------------------------------------------
    def apply(self, op: str, args: dict[str, Any]) -> Any:
        """Apply one command; raises a cargohold.errors type (state unchanged) on refusal."""
        handler = self._commands.get(op)
        if handler is None:
            raise RequestInvalid(f"unknown command {op!r}")
        if not isinstance(args, dict):
            raise RequestInvalid("command arguments must be a JSON object")
        return handler(args)

    def query(self, op: str, args: dict[str, Any]) -> Any:
        handler = self._queries.get(op)
        if handler is None:
            raise RequestInvalid(f"unknown query {op!r}")
        if not isinstance(args, dict):
            raise RequestInvalid("query arguments must be a JSON object")
        return handler(args)

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every container, sharing the immutable records inside.

        Cheap next to pickling (it copies hash tables, not tuples, strings or bytes), so the
        Raft tick thread takes it and a background thread encodes it while commands go on.
        """
        return {
            "blob_bytes": self.blob_bytes,
            "blobs": self.blobs.copy(),
            "links": {repo: linked.copy() for repo, linked in self.links.items()},
            "manifests": {repo: present.copy() for repo, present in self.manifests.items()},
            "tags": {repo: tags.copy() for repo, tags in self.tags.items()},
            "referrers": {
                repo: {subject: digests.copy() for subject, digests in by.items()}
                for repo, by in self.referrers.items()
            },
            "uploads": self.uploads.copy(),
            "members": self.members.copy(),
        }

    @staticmethod
    def encode_snapshot(snap: dict[str, Any], batch: int = _SNAPSHOT_BATCH) -> Iterator[bytes]:
        """A `snapshot()` as a stream of pickles (protocol 5, no compression): a header, then
        per section its flattened rows in batches and a None. Each batch is one short C call
        (nested containers are flattened so no row is large), so a thread encoding a large
        state lets the others run in between."""
        yield pickle.dumps(
            {"version": _SNAPSHOT_VERSION, "blob_bytes": snap["blob_bytes"]}, protocol=5
        )
        for name in _SECTIONS:
            rows = _flatten(name, snap[name])
            while chunk := list(islice(rows, batch)):
                yield pickle.dumps(chunk, protocol=5)
            yield pickle.dumps(None, protocol=5)

    def dump(self) -> bytes:
        """The whole state as bytes (`encode_snapshot` of a `snapshot`)."""
        return b"".join(self.encode_snapshot(self.snapshot()))

    def load(self, data: bytes) -> None:
        """Replace the whole state with a `dump`."""
        self.load_stream(io.BytesIO(data))

    def load_stream(self, stream: BinaryIO) -> None:
        """Replace the whole state with an encoded snapshot read from `stream`.

        Batches pickle strings separately: they are interned again so that a digest or repo
        name is one object in RAM, as it was before the snapshot."""
        header = pickle.load(stream)
        if isinstance(header, dict) and header.get("version") == 1:
            self._load_v1(header)
            return
        if not isinstance(header, dict) or header.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unknown metadata snapshot header {header!r:.80}")
        blobs: dict[str, Recipe] = {}
        links: dict[str, set[str]] = {}
        manifests: dict[str, dict[str, Manifest]] = {}
        tags: dict[str, dict[str, str]] = {}
        referrers: dict[str, dict[str, set[str]]] = {}
        uploads: dict[str, tuple[Any, ...]] = {}
        members: dict[str, tuple[str, str, str]] = {}
        for name in _SECTIONS:
            while (chunk := pickle.load(stream)) is not None:
                if name == "blobs":
                    blobs.update((_intern(d), r) for d, r in chunk)
                elif name == "links":
                    for repo, d in chunk:
                        links.setdefault(_intern(repo), set()).add(_intern(d))
                elif name == "manifests":
                    for repo, d, m in chunk:
                        manifests.setdefault(_intern(repo), {})[_intern(d)] = m
                elif name == "tags":
                    for repo, t, d in chunk:
                        tags.setdefault(_intern(repo), {})[_intern(t)] = _intern(d)
                elif name == "referrers":
                    for repo, subject, d in chunk:
                        referrers.setdefault(_intern(repo), {}).setdefault(
                            _intern(subject), set()
                        ).add(_intern(d))
                elif name == "uploads":
                    uploads.update(chunk)
                else:
                    members.update(chunk)
        self.blobs, self.links, self.manifests, self.tags = blobs, links, manifests, tags
        self.referrers, self.uploads, self.members = referrers, uploads, members
        self.blob_bytes = int(header["blob_bytes"])
        self._catalog = None
        self._tag_order = {}
        self._recount()

    def _load_v1(self, snap: dict[str, Any]) -> None:
        """Version 1 snapshots (one pickle of the whole state) are still read."""
        for name in _SECTIONS:
            setattr(self, name, snap[name])
        self.blob_bytes = int(snap["blob_bytes"])
        self._catalog = None
        self._tag_order = {}
        self._recount()

    def _recount(self) -> None:
        self._repo_count = len(self.links.keys() | self.manifests.keys())
        self._manifest_count = sum(len(m) for m in self.manifests.values())
        self._open_uploads = sum(1 for u in self.uploads.values() if u[0] == OPEN)

    # -- shared mutations ----------------------------------------------------------------------
    def _repo_exists(self, repo: str) -> bool:
        return repo in self.links or repo in self.manifests

    def _repo_added(self) -> None:
        self._catalog = None
        self._repo_count += 1

    def _repo_removed(self) -> None:
        self._catalog = None
        self._repo_count -= 1

    def _set_upload(self, upload: str, record: tuple[Any, ...]) -> None:
        old = self.uploads.get(upload)
        self._open_uploads += (record[0] == OPEN) - (old is not None and old[0] == OPEN)
        self.uploads[upload] = record

    def _add_blob(self, digest: str, recipe: Recipe) -> None:
        if digest not in self.blobs:
            self.blobs[digest] = recipe
            self.blob_bytes += recipe[0]

    def _link(self, repo: str, digest: str) -> None:
        linked = self.links.get(repo)
        if linked is None:
            if repo not in self.manifests:
                self._repo_added()
            linked = self.links[repo] = set()
        linked.add(digest)

    def _unlink(self, repo: str, digest: str) -> None:
        linked = self.links.get(repo)
        if linked is None or digest not in linked:
            return
        linked.discard(digest)
        if not linked:
            del self.links[repo]
            if repo not in self.manifests:
                self._repo_removed()

    # -- commands ------------------------------------------------------------------------------
    def _cmd_barrier(self, args: dict[str, Any]) -> None:
        return None

    def _cmd_upload_append(self, args: dict[str, Any]) -> dict[str, int]:
        upload = _field(args, "upload", str)
        repo = _repo(args)
        offset = _field(args, "offset", int)
        request = _field(args, "request", str, optional=True)
        now = _number(args, "now")
        packed, added = _pack_chunks(args.get("chunks", []))
        record = self.uploads.get(upload)
        if record is None:
            size, old_packed = 0, b""
        else:
            if record[0] != OPEN or record[1] != repo:
                raise BlobUploadUnknown(f"upload {upload} is {record[0]}")
            size, old_packed = record[2], record[3]
            if request is not None and request == record[4]:
                return {"size": size}
        if offset != size:
            raise RangeInvalid(f"size={size}", detail={"size": size})
        size += added
        self._set_upload(upload, (OPEN, repo, size, old_packed + packed, request, now))
        return {"size": size}

    def _cmd_upload_cancel(self, args: dict[str, Any]) -> None:
        upload = _field(args, "upload", str)
        now = _number(args, "now")
        record = self.uploads.get(upload)
        if record is not None:
            if record[0] == CLOSED:
                raise BlobUploadUnknown(f"upload {upload} is closed")
            if record[0] == CANCELLED:
                return None
        repo = record[1] if record is not None else None
        self._set_upload(upload, (CANCELLED, repo, None, now))
        return None

    def _cmd_blob_commit(self, args: dict[str, Any]) -> None:
        repo = _repo(args)
        digest = _digest(args)
        recipe = _recipe(args)
        upload = _field(args, "upload", str, optional=True)
        now = _number(args, "now")
        if upload is not None:
            record = self.uploads.get(upload)
            if record is not None:
                if record[0] == CANCELLED or record[1] != repo:
                    raise BlobUploadUnknown(f"upload {upload} is {record[0]}")
                if record[0] == CLOSED and record[2] != digest:
                    raise BlobUploadUnknown(f"upload {upload} was committed as another blob")
            if record is None or record[0] == OPEN:
                self._set_upload(upload, (CLOSED, repo, digest, now))
        self._add_blob(digest, recipe)
        self._link(repo, digest)
        return None

    def _cmd_blob_mount(self, args: dict[str, Any]) -> dict[str, bool]:
        repo = _repo(args)
        digest = _digest(args)
        source = _field(args, "from", str, optional=True)
        if digest in self.links.get(repo, ()):
            return {"mounted": True}
        # Mounting needs a source repository the caller may read: without `from`, a blob
        # known elsewhere must not leak into this repository.
        if source is None or digest not in self.links.get(source, ()):
            return {"mounted": False}
        self._link(repo, digest)
        return {"mounted": True}

    def _cmd_blob_unlink(self, args: dict[str, Any]) -> None:
        repo = _repo(args)
        digest = _digest(args)
        if digest not in self.links.get(repo, ()):
            raise BlobUnknown(f"blob {digest} unknown in {repo}")
        self._unlink(repo, digest)
        return None

    def _cmd_manifest_put(self, args: dict[str, Any]) -> None:
        repo = _repo(args)
        digest = _digest(args)
        media_type = _intern(_field(args, "media_type", str))
        recipe = _recipe(args)
        blobs = _digests(args, "blobs")
        children = _digests(args, "manifests")
        subject = _digest(args, "subject") if args.get("subject") is not None else None
        artifact_type = _field(args, "artifact_type", str, optional=True)
        annotations = _field(args, "annotations", dict, optional=True)
        tag = _field(args, "tag", str, optional=True)
        if tag is not None:
            tag = _intern(validate_tag(tag))
        linked = self.links.get(repo, ())
        missing = sorted(b for b in blobs if b not in linked)
        present = self.manifests.get(repo, {})
        missing += sorted(m for m in children if m not in present and m != digest)
        if missing:
            shown = ",".join(missing[:8]) + (",..." if len(missing) > 8 else "")
            raise ManifestBlobUnknown(f"missing={shown}", detail={"missing": missing})
        annotations_json = (
            json.dumps(annotations, sort_keys=True, separators=(",", ":")) if annotations else None
        )
        record: Manifest = (
            media_type,
            recipe[0],
            recipe,
            subject,
            _intern(artifact_type) if artifact_type else None,
            annotations_json,
            blobs,
            children,
        )
        old = present.get(digest)
        if repo not in self.manifests:
            if repo not in self.links:
                self._repo_added()
            self.manifests[repo] = present = {}
        present[digest] = record
        self._manifest_count += old is None
        if old is not None and old[3] is not None and old[3] != subject:
            self._drop_referrer(repo, old[3], digest)
        if subject is not None:
            self.referrers.setdefault(repo, {}).setdefault(subject, set()).add(digest)
        self._add_blob(digest, recipe)
        self._link(repo, digest)
        if tag is not None:
            tags = self.tags.setdefault(repo, {})
            if tag not in tags:
                self._tag_order.pop(repo, None)
            tags[tag] = digest
        return None

    def _drop_referrer(self, repo: str, subject: str, digest: str) -> None:
        by_subject = self.referrers.get(repo)
        if not by_subject or subject not in by_subject:
            return
        by_subject[subject].discard(digest)
        if not by_subject[subject]:
            del by_subject[subject]
            if not by_subject:
                del self.referrers[repo]

    def _cmd_tag_delete(self, args: dict[str, Any]) -> None:
        repo = _repo(args)
        tag = _field(args, "tag", str)
        tags = self.tags.get(repo)
        if not tags or tag not in tags:
            raise ManifestUnknown(f"tag {tag} unknown in {repo}")
        del tags[tag]
        self._tag_order.pop(repo, None)
        if not tags:
            del self.tags[repo]
        return None

    def _cmd_manifest_delete(self, args: dict[str, Any]) -> None:
        repo = _repo(args)
        digest = _digest(args)
        present = self.manifests.get(repo)
        if not present or digest not in present:
            raise ManifestUnknown(f"manifest {digest} unknown in {repo}")
        record = present.pop(digest)
        self._manifest_count -= 1
        tags = self.tags.get(repo)
        if tags:
            for tag in [t for t, d in tags.items() if d == digest]:
                del tags[tag]
                self._tag_order.pop(repo, None)
            if not tags:
                del self.tags[repo]
        if record[3] is not None:
            self._drop_referrer(repo, record[3], digest)
        if not present:
            del self.manifests[repo]
            if repo not in self.links:
                self._repo_removed()
        # The manifest bytes were linked as a blob by manifest_put: gone with the manifest.
        self._unlink(repo, digest)
        return None

    def _cmd_member_join(self, args: dict[str, Any]) -> None:
        node_id = _intern(_field(args, "id", str))
        grpc_addr = _field(args, "grpc", str)
        raft_addr = _field(args, "raft", str)
        old = self.members.get(node_id)
        # A restart re-joins: addresses may change, an operator's draining/removal stays.
        state = old[2] if old is not None else "active"
        self.members[node_id] = (grpc_addr, raft_addr, state)
        return None

    def _cmd_member_set_state(self, args: dict[str, Any]) -> None:
        node_id = _field(args, "id", str)
        state = _field(args, "state", str)
        if state not in MEMBER_STATES:
            raise RequestInvalid(f"member state must be one of {MEMBER_STATES}")
        old = self.members.get(node_id)
        if old is None:
            raise NotFound(f"member {node_id} unknown")
        self.members[node_id] = (old[0], old[1], state)
        return None

    def _cmd_expire_uploads(self, args: dict[str, Any]) -> dict[str, int]:
        now = _number(args, "now")
        older_than = _number(args, "older_than")
        cutoff = now - older_than
        # Every record keeps its last-touched time as its last field.
        stale = [u for u, record in self.uploads.items() if record[-1] < cutoff]
        for upload in stale:
            self._open_uploads -= self.uploads.pop(upload)[0] == OPEN
        return {"expired": len(stale)}

    # -- queries --------------------------------------------------------------------------------
    def _manifest_json(self, digest: str, record: Manifest) -> dict[str, Any]:
        return {
            "digest": digest,
            "media_type": record[0],
            "size": record[1],
            "recipe": recipe_json(record[2]),
            "subject": record[3],
            "artifact_type": record[4],
            "annotations": json.loads(record[5]) if record[5] else None,
        }

    def _q_tag_get(self, args: dict[str, Any]) -> dict[str, Any]:
        repo = _field(args, "repo", str)
        tag = _field(args, "tag", str)
        if not self._repo_exists(repo):
            raise NameUnknown(f"repository {repo} unknown")
        digest = self.tags.get(repo, {}).get(tag)
        if digest is None:
            raise ManifestUnknown(f"tag {tag} unknown in {repo}")
        return self._manifest_json(digest, self.manifests[repo][digest])

    def _q_manifest_get(self, args: dict[str, Any]) -> dict[str, Any]:
        repo = _field(args, "repo", str)
        digest = _field(args, "digest", str)
        record = self.manifests.get(repo, {}).get(digest)
        if record is None:
            raise ManifestUnknown(f"manifest {digest} unknown in {repo}")
        return self._manifest_json(digest, record)

    def _q_blob_get(self, args: dict[str, Any]) -> dict[str, Any]:
        repo = _field(args, "repo", str)
        digest = _field(args, "digest", str)
        if digest not in self.links.get(repo, ()):
            raise BlobUnknown(f"blob {digest} unknown in {repo}")
        return recipe_json(self.blobs[digest])

    def _q_upload_get(self, args: dict[str, Any]) -> dict[str, Any]:
        upload = _field(args, "upload", str)
        record = self.uploads.get(upload)
        if record is None:
            return {"state": "new"}
        if record[0] != OPEN:
            raise BlobUploadUnknown(f"upload {upload} is {record[0]}")
        return {
            "state": OPEN,
            "repo": record[1],
            "size": record[2],
            "chunks": unpack_chunks(record[3]),
            "request": record[4],
        }

    def _q_tags_list(self, args: dict[str, Any]) -> dict[str, Any]:
        repo = _field(args, "repo", str)
        if not self._repo_exists(repo):
            raise NameUnknown(f"repository {repo} unknown")
        order = self._tag_order.get(repo)
        if order is None:
            order = self._tag_order[repo] = sorted(self.tags.get(repo, ()))
        tags, more = _page(order, args.get("n"), args.get("last"))
        return {"tags": tags, "more": more}

    def _q_catalog(self, args: dict[str, Any]) -> dict[str, Any]:
        catalog = self._catalog
        if catalog is None:
            catalog = self._catalog = sorted(self.links.keys() | self.manifests.keys())
        repos, more = _page(catalog, args.get("n"), args.get("last"))
        return {"repositories": repos, "more": more}

    def _q_referrers(self, args: dict[str, Any]) -> dict[str, Any]:
        repo = _field(args, "repo", str)
        subject = _field(args, "digest", str)
        wanted = _field(args, "artifact_type", str, optional=True)
        digests = sorted(self.referrers.get(repo, {}).get(subject, ()))
        present = self.manifests.get(repo, {})
        out = []
        for digest in digests:
            record = present[digest]
            if wanted is not None and record[4] != wanted:
                continue
            descriptor: dict[str, Any] = {
                "mediaType": record[0],
                "digest": digest,
                "size": record[1],
            }
            if record[4] is not None:
                descriptor["artifactType"] = record[4]
            if record[5]:
                descriptor["annotations"] = json.loads(record[5])
            out.append(descriptor)
        return {"manifests": out}

    def _q_members(self, args: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"id": node_id, "grpc": m[0], "raft": m[1], "state": m[2]}
            for node_id, m in sorted(self.members.items())
        ]

    def _q_status(self, args: dict[str, Any]) -> dict[str, int]:
        return {
            "repos": self._repo_count,
            "blobs": len(self.blobs),
            "manifests": self._manifest_count,
            "uploads": self._open_uploads,
            "blob_bytes": self.blob_bytes,
        }
