"""The metadata state machine: applies the typed commands and answers the typed queries of
cargohold/metadata_api.py (the catalogue: docs/metadata.md).

The whole state, as it sits in RAM on every node and in every snapshot::

    blobs      {digest: Recipe(size, packed)}     every committed blob (and manifest bytes);
                                                  packed = the chunk list as one bytes
                                                  object, 40 B per chunk: 32 B raw sha256
                                                  id || u64 big-endian length (_CHUNK)
    links      {repo: {digest, ...}}              blobs readable through a repository
    manifests  {repo: {digest: Manifest}}         manifests present in a repository
                 Manifest(media_type, size, recipe, subject, artifact_type,
                          annotations_json, blobs, children)
    tags       {repo: {tag: digest}}              only digests present in manifests[repo]
    referrers  {repo: {subject: {digest, ...}}}   manifests of repo whose `subject` is it
    uploads    {upload_id: OpenUpload(repo, size, packed, last_request, touched_at)
                         | ClosedUpload(repo, digest, closed_at)      by blob_commit
                         | CancelledUpload(repo|None, closed_at)}
    members    {node_id: Member(grpc, raft, "active"|"draining"|"removed")}
    users      {name: User(password_hash, disabled, admin)}   registry users (bcrypt only)
    namespaces {prefix: Namespace(visibility, grants)}        grants: sorted (user, role)
    blob_bytes int                                sum of the sizes in `blobs`

A repository exists while it has a linked blob or a manifest (no empty containers). An
upload id absent from `uploads` is "new". Unlinking only removes `links`; only `gc_prune`
(garbage collection) forgets recipes. `apply` is deterministic (`now` comes from the
caller), validates before it mutates, and is idempotent as docs/metadata.md says.
Snapshots are a stream of pickled plain-tuple rows (the layout of every earlier version);
the sorted catalogue, the sorted tag lists and the `status` counters are derived and never
snapshotted. This module holds no lock: `node/metadata/raft.py` serialises `apply` and `query`.
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
from typing import Any, BinaryIO, NamedTuple

from cargohold import metadata_api as api
from cargohold.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    RangeInvalid,
    RecipeConflict,
    RequestInvalid,
    SizeInvalid,
    TagImmutable,
)
from cargohold.lifecycle_rules import rule_for_tag

_CHUNK = struct.Struct(">32sQ")
_SNAPSHOT_VERSION = 3
_SNAPSHOT_BATCH = 4096
# Version 2 snapshots end after `members`; version 3 adds the access sections.
_SECTIONS_V2 = ("blobs", "links", "manifests", "tags", "referrers", "uploads", "members")
_SECTIONS = (*_SECTIONS_V2, "users", "namespaces")

OPEN, CLOSED, CANCELLED = "open", "closed", "cancelled"
MEMBER_STATES = api.MEMBER_STATES
COMMANDS = api.COMMANDS
QUERIES = api.QUERIES

_intern = sys.intern


# -- records -------------------------------------------------------------------------------
class Recipe(NamedTuple):
    size: int
    packed: bytes  # the chunk list, _CHUNK.size bytes per chunk


class Manifest(NamedTuple):
    media_type: str
    size: int
    recipe: Recipe
    subject: str | None
    artifact_type: str | None
    annotations_json: str | None
    blobs: tuple[str, ...]
    children: tuple[str, ...]


class OpenUpload(NamedTuple):
    repo: str
    size: int
    packed: bytes
    last_request: str | None
    touched_at: float


class ClosedUpload(NamedTuple):
    repo: str
    digest: str
    closed_at: float


class CancelledUpload(NamedTuple):
    repo: str | None
    closed_at: float


Upload = OpenUpload | ClosedUpload | CancelledUpload


class Member(NamedTuple):
    grpc: str
    raft: str
    state: str


class User(NamedTuple):
    password_hash: str
    disabled: bool
    admin: bool


class Namespace(NamedTuple):
    visibility: str
    grants: tuple[tuple[str, str], ...]  # (user, role), sorted by user


def _upload_state(record: Upload) -> str:
    if isinstance(record, OpenUpload):
        return OPEN
    return CLOSED if isinstance(record, ClosedUpload) else CANCELLED


def _last_touched(record: Upload) -> float:
    return record.touched_at if isinstance(record, OpenUpload) else record.closed_at


# -- snapshot rows: plain tuples, the layout every version wrote ----------------------------
def _recipe_row(recipe: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(recipe)


def _manifest_row(m: tuple[Any, ...]) -> tuple[Any, ...]:
    return (m[0], m[1], tuple(m[2]), *m[3:])


def _upload_row(record: tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(record, OpenUpload):
        return (OPEN, *record)
    if isinstance(record, ClosedUpload):
        return (CLOSED, *record)
    if isinstance(record, CancelledUpload):
        return (CANCELLED, record.repo, None, record.closed_at)
    return tuple(record)  # already a row (a version-1 snapshot)


def _manifest_from_row(row: tuple[Any, ...]) -> Manifest:
    return Manifest(row[0], row[1], Recipe._make(row[2]), *row[3:])


def _upload_from_row(row: tuple[Any, ...]) -> Upload:
    kind = row[0]
    if kind == OPEN:
        return OpenUpload._make(row[1:])
    if kind == CLOSED:
        return ClosedUpload._make(row[1:])
    if kind == CANCELLED:
        return CancelledUpload(row[1], row[3])
    raise ValueError(f"unknown upload record {row!r:.80}")


# -- chunk lists -----------------------------------------------------------------------------
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


def _pack_recipe(recipe: api.Recipe) -> Recipe:
    size = recipe["size"]
    packed, total = _pack_chunks(recipe.get("chunks"))
    if total != size:
        raise SizeInvalid(f"recipe chunks sum to {total}, size says {size}")
    return Recipe(size, packed)


def unpack_chunks(packed: bytes) -> list[list[Any]]:
    """Packed chunk list -> [[hex, length], ...] (the catalogue's JSON form)."""
    return [[chunk_id.hex(), length] for chunk_id, length in _CHUNK.iter_unpack(packed)]


def recipe_json(recipe: Recipe) -> api.Recipe:
    return {"size": recipe.size, "chunks": unpack_chunks(recipe.packed)}


def _page(items: list[str], n: int | None, last: str | None) -> api.Page:
    """Byte-ordered page after `last` (exclusive) of at most `n` items.

    Python orders str by code point, which is UTF-8 byte order.
    """
    if n == 0:
        return api.Page([], False)
    start = bisect_right(items, last) if last else 0
    if n is None:
        return api.Page(items[start:], False)
    return api.Page(items[start : start + n], start + n < len(items))


def _flatten(name: str, section: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of one snapshot section: one row per innermost entry, records as tuples."""
    if name == "blobs":
        for digest, recipe in section.items():
            yield digest, _recipe_row(recipe)
    elif name == "uploads":
        for upload, record in section.items():
            yield upload, _upload_row(record)
    elif name in ("members", "users"):
        for key, record in section.items():
            yield key, tuple(record)
    elif name == "namespaces":
        for prefix, ns in section.items():
            yield prefix, ns.visibility, tuple(ns.grants)
    elif name == "links":
        for repo, linked in section.items():
            for digest in linked:
                yield repo, digest
    elif name == "referrers":
        for repo, by_subject in section.items():
            for subject, digests in by_subject.items():
                for digest in digests:
                    yield repo, subject, digest
    elif name == "manifests":
        for repo, entries in section.items():
            for digest, m in entries.items():
                yield repo, digest, _manifest_row(m)
    else:  # tags: {repo: {tag: digest}}
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
        self.uploads: dict[str, Upload] = {}
        self.members: dict[str, Member] = {}
        self.users: dict[str, User] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.blob_bytes = 0
        # Query caches, rebuilt on demand and dropped when what they order changes.
        self._catalog: list[str] | None = None
        self._tag_order: dict[str, list[str]] = {}
        # Counts behind the `status` query (an Admin.Status health probe must stay O(1)).
        self._repo_count = self._manifest_count = self._open_uploads = 0
        # Dispatch by request type: one handler per op of the catalogue.
        self._handlers: dict[type[api.Request[Any]], Callable[[Any], Any]] = {
            api.Barrier: self._barrier,
            api.UploadAppend: self._upload_append,
            api.UploadCancel: self._upload_cancel,
            api.BlobCommit: self._blob_commit,
            api.BlobMount: self._blob_mount,
            api.BlobUnlink: self._blob_unlink,
            api.ManifestPut: self._manifest_put,
            api.TagDelete: self._tag_delete,
            api.ManifestDelete: self._manifest_delete,
            api.MemberJoin: self._member_join,
            api.MemberSetState: self._member_set_state,
            api.ExpireUploads: self._expire_uploads,
            api.GcPrune: self._gc_prune,
            api.UserPut: self._user_put,
            api.NamespacePut: self._namespace_put,
            api.GrantSet: self._grant_set,
            api.AccessList: self._access_list,
            api.TagGet: self._tag_get,
            api.ManifestGet: self._manifest_get,
            api.BlobGet: self._blob_get,
            api.BlobRecipe: self._blob_recipe,
            api.UploadGet: self._upload_get,
            api.TagsList: self._tags_list,
            api.Catalog: self._catalog_page,
            api.Referrers: self._referrers,
            api.Members: self._members,
            api.Status: self._status,
        }

    # -- entry points ------------------------------------------------------------------------
    def execute(self, request: api.Request[api.R]) -> api.R:
        """Apply a typed command or answer a typed query; a cargohold.errors type (state
        unchanged) on refusal."""
        result: api.R = self._handlers[type(request)](request)
        return result

    def apply(self, op: str, args: dict[str, Any]) -> Any:
        """Apply one command as it travels and sits in the Raft log; its JSON result."""
        command = api.decode_command(op, args)
        return command.encode_result(self.execute(command))

    def query(self, op: str, args: dict[str, Any]) -> Any:
        """Answer one query as it travels; its JSON result."""
        request = api.decode_query(op, args)
        return request.encode_result(self.execute(request))

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
            "users": self.users.copy(),
            "namespaces": self.namespaces.copy(),
        }

    @staticmethod
    def encode_snapshot(snap: dict[str, Any], batch: int = _SNAPSHOT_BATCH) -> Iterator[bytes]:
        """A `snapshot()` as a stream of pickles (protocol 5, no compression): a header, then
        per section its flattened rows in batches and a None. Each batch is one short C call
        (nested containers are flattened so no row is large), so a thread encoding a large
        state lets the others run in between."""
        # Without users or namespaces the snapshot is written as version 2, which earlier
        # versions read too (a cluster that never used registry users can still roll back).
        access = snap.get("users") or snap.get("namespaces")
        version, names = (_SNAPSHOT_VERSION, _SECTIONS) if access else (2, _SECTIONS_V2)
        yield pickle.dumps({"version": version, "blob_bytes": snap["blob_bytes"]}, protocol=5)
        for name in names:
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
        version = header.get("version") if isinstance(header, dict) else None
        if version not in (2, _SNAPSHOT_VERSION):
            raise ValueError(f"unknown metadata snapshot header {header!r:.80}")
        names = _SECTIONS_V2 if version == 2 else _SECTIONS
        sections = {name: _batches(stream) for name in names}
        sections.update({name: iter(()) for name in _SECTIONS if name not in names})
        self._load_rows(int(header["blob_bytes"]), sections)

    def _load_v1(self, snap: dict[str, Any]) -> None:
        """Version 1 snapshots (one pickle of the whole state) are still read."""
        self._load_rows(
            int(snap["blob_bytes"]),
            {
                name: iter([list(_flatten(name, snap.get(name, {})))] if name in snap else [])
                for name in _SECTIONS
            },
        )

    def _load_rows(self, blob_bytes: int, sections: dict[str, Iterator[list[Any]]]) -> None:
        blobs: dict[str, Recipe] = {}
        links: dict[str, set[str]] = {}
        manifests: dict[str, dict[str, Manifest]] = {}
        tags: dict[str, dict[str, str]] = {}
        referrers: dict[str, dict[str, set[str]]] = {}
        uploads: dict[str, Upload] = {}
        members: dict[str, Member] = {}
        users: dict[str, User] = {}
        namespaces: dict[str, Namespace] = {}
        # Sections are consumed in order: a stream holds them one after the other.
        for name in _SECTIONS:
            for chunk in sections[name]:
                if name == "blobs":
                    blobs.update((_intern(d), Recipe._make(r)) for d, r in chunk)
                elif name == "links":
                    for repo, d in chunk:
                        links.setdefault(_intern(repo), set()).add(_intern(d))
                elif name == "manifests":
                    for repo, d, m in chunk:
                        manifests.setdefault(_intern(repo), {})[_intern(d)] = _manifest_from_row(m)
                elif name == "tags":
                    for repo, t, d in chunk:
                        tags.setdefault(_intern(repo), {})[_intern(t)] = _intern(d)
                elif name == "referrers":
                    for repo, subject, d in chunk:
                        referrers.setdefault(_intern(repo), {}).setdefault(
                            _intern(subject), set()
                        ).add(_intern(d))
                elif name == "uploads":
                    uploads.update((u, _upload_from_row(row)) for u, row in chunk)
                elif name == "members":
                    members.update((i, Member._make(m)) for i, m in chunk)
                elif name == "users":
                    users.update((u, User._make(r)) for u, r in chunk)
                else:
                    namespaces.update(
                        (p, Namespace(v, tuple(tuple(g) for g in grants))) for p, v, grants in chunk
                    )
        self.blobs, self.links, self.manifests, self.tags = blobs, links, manifests, tags
        self.referrers, self.uploads, self.members = referrers, uploads, members
        self.users, self.namespaces = users, namespaces
        self.blob_bytes = blob_bytes
        self._catalog = None
        self._tag_order = {}
        self._recount()

    def _recount(self) -> None:
        self._repo_count = len(self.links.keys() | self.manifests.keys())
        self._manifest_count = sum(len(m) for m in self.manifests.values())
        self._open_uploads = sum(1 for u in self.uploads.values() if isinstance(u, OpenUpload))

    # -- shared mutations ----------------------------------------------------------------------
    def _repo_exists(self, repo: str) -> bool:
        return repo in self.links or repo in self.manifests

    def _repo_added(self) -> None:
        self._catalog = None
        self._repo_count += 1

    def _repo_removed(self) -> None:
        self._catalog = None
        self._repo_count -= 1

    def _set_upload(self, upload: str, record: Upload) -> None:
        old = self.uploads.get(upload)
        self._open_uploads += isinstance(record, OpenUpload) - isinstance(old, OpenUpload)
        self.uploads[upload] = record

    def _add_blob(self, digest: str, recipe: Recipe) -> None:
        if digest not in self.blobs:
            self.blobs[digest] = recipe
            self.blob_bytes += recipe.size

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
    def _barrier(self, req: api.Barrier) -> None:
        return None

    def _upload_append(self, req: api.UploadAppend) -> int:
        upload, repo = req.upload, req.repo
        packed, added = _pack_chunks(req.chunks)
        record = self.uploads.get(upload)
        if record is None:
            size, old_packed = 0, b""
        else:
            if not isinstance(record, OpenUpload) or record.repo != repo:
                raise BlobUploadUnknown(f"upload {upload} is {_upload_state(record)}")
            size, old_packed = record.size, record.packed
            if req.request is not None and req.request == record.last_request:
                return size
        if req.offset != size:
            raise RangeInvalid(f"size={size}", detail={"size": size})
        size += added
        self._set_upload(upload, OpenUpload(repo, size, old_packed + packed, req.request, req.now))
        return size

    def _upload_cancel(self, req: api.UploadCancel) -> None:
        upload = req.upload
        record = self.uploads.get(upload)
        if isinstance(record, ClosedUpload):
            raise BlobUploadUnknown(f"upload {upload} is closed")
        if isinstance(record, CancelledUpload):
            return None
        self._set_upload(upload, CancelledUpload(record.repo if record else None, req.now))
        return None

    def _check_recipe(self, digest: str, recipe: Recipe) -> None:
        """The first recipe recorded for a digest stays: a different one is refused."""
        recorded = self.blobs.get(digest)
        if recorded is not None and recorded != recipe:
            raise RecipeConflict(f"{digest} is recorded with another chunk list")

    def _blob_commit(self, req: api.BlobCommit) -> None:
        repo, digest, upload = req.repo, req.digest, req.upload
        recipe = _pack_recipe(req.recipe)
        self._check_recipe(digest, recipe)
        if upload is not None:
            record = self.uploads.get(upload)
            if record is not None:
                if isinstance(record, CancelledUpload) or record.repo != repo:
                    raise BlobUploadUnknown(f"upload {upload} is {_upload_state(record)}")
                if isinstance(record, ClosedUpload) and record.digest != digest:
                    raise BlobUploadUnknown(f"upload {upload} was committed as another blob")
                # What this session appended is the start of what it commits, unless it
                # adopts the digest's recorded recipe (the gateway verified both).
                if (
                    isinstance(record, OpenUpload)
                    and self.blobs.get(digest) != recipe
                    and not (record.size <= recipe.size and recipe.packed.startswith(record.packed))
                ):
                    raise SizeInvalid(f"upload {upload}: the recipe does not extend its chunks")
            if record is None or isinstance(record, OpenUpload):
                self._set_upload(upload, ClosedUpload(repo, digest, req.now))
        self._add_blob(digest, recipe)
        self._link(repo, digest)
        return None

    def _blob_mount(self, req: api.BlobMount) -> bool:
        repo, digest, source = req.repo, req.digest, req.source
        if digest in self.links.get(repo, ()):
            return True
        # Mounting needs a source repository the caller may read: without `from`, a blob
        # known elsewhere must not leak into this repository.
        if source is None or digest not in self.links.get(source, ()):
            return False
        self._link(repo, digest)
        return True

    def _blob_unlink(self, req: api.BlobUnlink) -> None:
        repo, digest = req.repo, req.digest
        if digest not in self.links.get(repo, ()):
            raise BlobUnknown(f"blob {digest} unknown in {repo}")
        self._unlink(repo, digest)
        return None

    def _manifest_put(self, req: api.ManifestPut) -> None:
        repo, digest, subject, tag = req.repo, req.digest, req.subject, req.tag
        recipe = _pack_recipe(req.recipe)
        self._check_recipe(digest, recipe)
        linked = self.links.get(repo, ())
        missing = sorted(b for b in req.blobs if b not in linked)
        present = self.manifests.get(repo, {})
        missing += sorted(m for m in req.manifests if m not in present and m != digest)
        if missing:
            shown = ",".join(missing[:8]) + (",..." if len(missing) > 8 else "")
            raise ManifestBlobUnknown(f"missing={shown}", detail={"missing": missing})
        annotations_json = (
            json.dumps(req.annotations, sort_keys=True, separators=(",", ":"))
            if req.annotations
            else None
        )
        record = Manifest(
            req.media_type,
            recipe.size,
            recipe,
            subject,
            req.artifact_type,
            annotations_json,
            req.blobs,
            req.manifests,
        )
        if tag is not None and req.immutable:
            current = self.tags.get(repo, {}).get(tag)
            if current is not None and current != digest:
                _refuse_immutable(repo, tag, req.immutable)
        old = present.get(digest)
        if repo not in self.manifests:
            if repo not in self.links:
                self._repo_added()
            self.manifests[repo] = present = {}
        present[digest] = record
        self._manifest_count += old is None
        if old is not None and old.subject is not None and old.subject != subject:
            self._drop_referrer(repo, old.subject, digest)
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

    def _tag_delete(self, req: api.TagDelete) -> None:
        repo, tag = req.repo, req.tag
        tags = self.tags.get(repo)
        if not tags or tag not in tags:
            raise ManifestUnknown(f"tag {tag} unknown in {repo}")
        if req.immutable:
            _refuse_immutable(repo, tag, req.immutable)
        del tags[tag]
        self._tag_order.pop(repo, None)
        if not tags:
            del self.tags[repo]
        return None

    def _manifest_delete(self, req: api.ManifestDelete) -> None:
        repo, digest = req.repo, req.digest
        present = self.manifests.get(repo)
        if not present or digest not in present:
            raise ManifestUnknown(f"manifest {digest} unknown in {repo}")
        if req.immutable:
            for tag, target in self.tags.get(repo, {}).items():
                if target == digest:
                    _refuse_immutable(repo, tag, req.immutable)
        record = present.pop(digest)
        self._manifest_count -= 1
        tags = self.tags.get(repo)
        if tags:
            for tag in [t for t, d in tags.items() if d == digest]:
                del tags[tag]
                self._tag_order.pop(repo, None)
            if not tags:
                del self.tags[repo]
        if record.subject is not None:
            self._drop_referrer(repo, record.subject, digest)
        if not present:
            del self.manifests[repo]
            if repo not in self.links:
                self._repo_removed()
        # The manifest bytes were linked as a blob by manifest_put: gone with the manifest.
        self._unlink(repo, digest)
        return None

    def _member_join(self, req: api.MemberJoin) -> None:
        old = self.members.get(req.node_id)
        # A restart re-joins: addresses may change, an operator's draining/removal stays.
        state = old.state if old is not None else "active"
        self.members[req.node_id] = Member(req.grpc, req.raft, state)
        return None

    def _member_set_state(self, req: api.MemberSetState) -> None:
        old = self.members.get(req.node_id)
        if old is None:
            raise NotFound(f"member {req.node_id} unknown")
        self.members[req.node_id] = old._replace(state=req.state)
        return None

    def _expire_uploads(self, req: api.ExpireUploads) -> int:
        cutoff = req.now - req.older_than
        stale = [u for u, record in self.uploads.items() if _last_touched(record) < cutoff]
        for upload in stale:
            self._open_uploads -= isinstance(self.uploads.pop(upload), OpenUpload)
        return len(stale)

    def _gc_prune(self, req: api.GcPrune) -> int:
        # Only here does `blobs` shrink: a recipe no repository links (GC chose it a grace
        # period ago; a link made since keeps it). Manifests hold their own recipe.
        linked: set[str] = set()
        for digests in self.links.values():
            linked |= digests
        pruned = 0
        for digest in req.blobs:
            recipe = self.blobs.get(digest)
            if recipe is None or digest in linked:
                continue
            del self.blobs[digest]
            self.blob_bytes -= recipe.size
            pruned += 1
        return pruned

    def _user_put(self, req: api.UserPut) -> None:
        old = self.users.get(req.name)
        if old is None:
            if req.password_hash is None:
                raise RequestInvalid(f"new user {req.name!r} needs a password hash")
            old = User(req.password_hash, False, False)
        self.users[req.name] = User(
            req.password_hash if req.password_hash is not None else old.password_hash,
            req.disabled if req.disabled is not None else old.disabled,
            req.admin if req.admin is not None else old.admin,
        )

    def _namespace_put(self, req: api.NamespacePut) -> None:
        old = self.namespaces.get(req.name)
        self.namespaces[req.name] = Namespace(req.visibility, old.grants if old else ())

    def _grant_set(self, req: api.GrantSet) -> None:
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            raise NotFound(f"no namespace {req.namespace!r}")
        if req.user not in self.users:
            raise NotFound(f"no user {req.user!r}")
        grants = dict(ns.grants)
        if req.role is None:
            grants.pop(req.user, None)
        else:
            grants[req.user] = req.role
        self.namespaces[req.namespace] = ns._replace(grants=tuple(sorted(grants.items())))

    # -- queries --------------------------------------------------------------------------------
    def _access_list(self, req: api.AccessList) -> api.AccessData:
        return api.AccessData(
            [
                api.UserInfo(name, u.password_hash, u.disabled, u.admin)
                for name, u in sorted(self.users.items())
            ],
            [
                api.NamespaceInfo(name, ns.visibility, dict(ns.grants))
                for name, ns in sorted(self.namespaces.items())
            ],
        )

    @staticmethod
    def _manifest_info(digest: str, record: Manifest) -> api.ManifestInfo:
        return api.ManifestInfo(
            digest=digest,
            media_type=record.media_type,
            size=record.size,
            recipe=recipe_json(record.recipe),
            subject=record.subject,
            artifact_type=record.artifact_type,
            annotations=json.loads(record.annotations_json) if record.annotations_json else None,
        )

    def _tag_get(self, req: api.TagGet) -> api.ManifestInfo:
        repo, tag = req.repo, req.tag
        if not self._repo_exists(repo):
            raise NameUnknown(f"repository {repo} unknown")
        digest = self.tags.get(repo, {}).get(tag)
        if digest is None:
            raise ManifestUnknown(f"tag {tag} unknown in {repo}")
        return self._manifest_info(digest, self.manifests[repo][digest])

    def _manifest_get(self, req: api.ManifestGet) -> api.ManifestInfo:
        record = self.manifests.get(req.repo, {}).get(req.digest)
        if record is None:
            raise ManifestUnknown(f"manifest {req.digest} unknown in {req.repo}")
        return self._manifest_info(req.digest, record)

    def _blob_get(self, req: api.BlobGet) -> api.Recipe:
        if req.digest not in self.links.get(req.repo, ()):
            raise BlobUnknown(f"blob {req.digest} unknown in {req.repo}")
        return recipe_json(self.blobs[req.digest])

    def _blob_recipe(self, req: api.BlobRecipe) -> api.Recipe:
        recipe = self.blobs.get(req.digest)
        if recipe is None:
            raise BlobUnknown(f"blob {req.digest} unknown")
        return recipe_json(recipe)

    def _upload_get(self, req: api.UploadGet) -> api.UploadInfo:
        record = self.uploads.get(req.upload)
        if record is None:
            return api.UploadInfo("new")
        if not isinstance(record, OpenUpload):
            raise BlobUploadUnknown(f"upload {req.upload} is {_upload_state(record)}")
        return api.UploadInfo(
            OPEN, record.repo, record.size, unpack_chunks(record.packed), record.last_request
        )

    def _tags_list(self, req: api.TagsList) -> api.Page:
        repo = req.repo
        if not self._repo_exists(repo):
            raise NameUnknown(f"repository {repo} unknown")
        order = self._tag_order.get(repo)
        if order is None:
            order = self._tag_order[repo] = sorted(self.tags.get(repo, ()))
        return _page(order, req.n, req.last)

    def _catalog_page(self, req: api.Catalog) -> api.Page:
        catalog = self._catalog
        if catalog is None:
            catalog = self._catalog = sorted(self.links.keys() | self.manifests.keys())
        return _page(catalog, req.n, req.last)

    def _referrers(self, req: api.Referrers) -> list[api.Descriptor]:
        wanted = req.artifact_type
        digests = sorted(self.referrers.get(req.repo, {}).get(req.digest, ()))
        present = self.manifests.get(req.repo, {})
        out = []
        for digest in digests:
            record = present[digest]
            if wanted is not None and record.artifact_type != wanted:
                continue
            descriptor: api.Descriptor = {
                "mediaType": record.media_type,
                "digest": digest,
                "size": record.size,
            }
            if record.artifact_type is not None:
                descriptor["artifactType"] = record.artifact_type
            if record.annotations_json:
                descriptor["annotations"] = json.loads(record.annotations_json)
            out.append(descriptor)
        return out

    def _members(self, req: api.Members) -> list[api.MemberInfo]:
        return [
            api.MemberInfo(node_id, m.grpc, m.raft, m.state)
            for node_id, m in sorted(self.members.items())
        ]

    def _status(self, req: api.Status) -> api.MetadataStatus:
        return api.MetadataStatus(
            repos=self._repo_count,
            blobs=len(self.blobs),
            manifests=self._manifest_count,
            uploads=self._open_uploads,
            blob_bytes=self.blob_bytes,
        )


def _refuse_immutable(repo: str, tag: str, rules: tuple[str, ...]) -> None:
    """TagImmutable when one of the repository's immutable rules matches `tag`."""
    rule = rule_for_tag(rules, tag)
    if rule is not None:
        raise TagImmutable(
            f"tag {tag} of {repo} is immutable (rule {rule})",
            detail={"repository": repo, "tag": tag, "rule": rule},
        )


def _batches(stream: BinaryIO) -> Iterator[list[Any]]:
    """The batches of one snapshot section, up to its closing None."""
    while (chunk := pickle.load(stream)) is not None:
        yield chunk
