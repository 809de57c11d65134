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
                                                  in the order they were opened or closed;
                                                  only the newest `CLOSED_UPLOADS_KEPT`
                                                  closed or cancelled ones are kept
    members    {node_id: Member(grpc, raft, "active"|"draining"|"removed")}
    users      {name: User(password_hash, disabled, admin)}   registry users (bcrypt only)
    namespaces {prefix: Namespace(visibility, grants)}        grants: sorted (principal,
                                                  role); principal: a user name or
                                                  `group:<group>`
    pushed     {repo: {digest: time}}             last `manifest_put` of each manifest
    tag_pushed {repo: {tag: time}}                last `manifest_put` that set each tag
    pulled     {repo: {digest: time}}             last pull (`pull_record`, batched by gateways)
    groups     {name: Group(members)}             sorted user names
    robots     {name: Robot(secret_hash, expires_at, permissions, description, created_at)}
                                                  permissions: sorted (namespace, actions)
    audit      AuditLog                           the activity log's chain: retained base,
                                                  sealed segments, in-memory tail, head
                                                  (node/metadata/audit_log.py)
    quotas     {prefix: limit}                    storage quotas (node/metadata/quotas.py;
                                                  their deduplicated usage is derived)
    trash      Trash(manifests, tags)             deleted manifests and tags kept restorable
                                                  (node/metadata/trash.py draws it)
    scans      ScanBook: {repo: {digest: ScanRecord}}     the SBOM scanner's queue and
                                                  results (node/metadata/scans.py draws it)
    trust      {prefix: Trust(keys, require_signature)}   signature keys (name, PEM) and
                                                  pull policy of a namespace
    image_info {digest: str}                      what search indexes of a manifest beyond
                                                  its record: compact JSON {"platforms",
                                                  "labels"} from the config blob or index
                                                  body (`manifest_put` `info`, or later
                                                  `image_info_backfill`; "{}" = looked at,
                                                  nothing to index); kept while `blobs`
                                                  holds the manifest's bytes
    webhooks   WebhookBook                        webhook endpoints, their cursors and dead
                                                  letters, the delivery lease
                                                  (node/metadata/webhooks.py)
    vuln_policy {prefix: VulnPolicy(block_severity, allowlist, unscanned)}  the
                                                  vulnerability pull policy of a namespace
    vulndb     VulnDb(generation, digest, imported_at, source, stats_json) | None   the
                                                  current vulnerability database: its
                                                  index is the blob `digest` (in `blobs`,
                                                  linked nowhere, never pruned while current)
    blob_bytes int                                sum of the sizes in `blobs`

Times come from the command (`now` of manifest_put: old log entries without it record none;
an event's own time for pulls), so replay is deterministic; they go with their manifest/tag.

A repository exists while it has a linked blob or a manifest (no empty containers). An
upload id absent from `uploads` is "new". Unlinking only removes `links`; only `gc_prune`
(garbage collection) forgets recipes. `apply` is deterministic (`now` comes from the
caller), validates before it mutates, and is idempotent as docs/metadata.md says.
Snapshots are a stream of pickled plain-tuple rows (the layout of every earlier version),
or of pieces of the containers in the compact versions 5 and 6 (`_encode_compact`); the
sorted catalogue, the sorted tag lists, the search index (node/metadata/search_index.py)
and the `status` counters are derived and never snapshotted. This module holds no lock:
`node/metadata/raft.py` serialises `apply` and `query`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import pickle
import secrets
import sys
from collections.abc import Callable, Iterator
from itertools import chain, islice
from typing import Any, BinaryIO, NamedTuple

from cargohold import metadata_api as api
from cargohold.audit import TAG_DELETED, blob_detail, manifest_deleted_detail, restore_detail
from cargohold.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    Conflict,
    ManifestBlobUnknown,
    ManifestBytesNotStored,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    RangeInvalid,
    RecipeConflict,
    RequestInvalid,
    SizeInvalid,
    TagImmutable,
    Unavailable,
)
from cargohold.lifecycle_rules import rule_for_tag
from cargohold.search import SearchPage
from node.metadata.audit_log import AuditLog, segment_info
from node.metadata.quotas import QuotaBook
from node.metadata.records import CHUNK as _CHUNK
from node.metadata.records import REDUCERS as _RECORD_REDUCERS
from node.metadata.records import SNAPSHOT_GLOBALS as _RECORD_GLOBALS
from node.metadata.records import (
    AnyRecipe,
    Manifest,
    OneChunk,
    Recipe,
    flat_manifests,
    make_recipe,
    manifests_from_flat,
    recipe_from_row,
)
from node.metadata.scans import ScanBook
from node.metadata.scans import rows as _scan_rows
from node.metadata.search_index import SearchIndex
from node.metadata.sorted_names import SortedNames
from node.metadata.webhooks import DeadLetter as WebhookDeadLetter
from node.metadata.webhooks import WebhookBook

__all__ = ["Manifest", "MetadataState", "OneChunk", "Recipe"]
from node.metadata.trash import Trash, TrashedManifest, TrashedTag, held_blobs
from node.metadata.trash import manifest_rows as _trash_manifest_rows
from node.metadata.trash import tag_rows as _trash_tag_rows

_SNAPSHOT_VERSION = 4
# The commands that change what `access_list` answers (they move `access_revision`).
_ACCESS_COMMANDS = api.ACCESS_CHANGES
_SNAPSHOT_BATCH = 4096
# Version 2 snapshots end after `members`; version 3 adds the access sections. Version 4
# headers list their sections by name ("sections"): a later section is appended to
# `_SECTIONS` (with its rows' loader) without another version.
_SECTIONS_V2 = ("blobs", "links", "manifests", "tags", "referrers", "uploads", "members")
_SECTIONS_V3 = (*_SECTIONS_V2, "users", "namespaces")
_TIME_SECTIONS = ("pushed", "tag_pushed", "pulled")
_ACCESS_V4_SECTIONS = ("groups", "robots")
# The activity log (rows: audit_log.AuditLog.rows).
_AUDIT_SECTIONS = ("audit",)
# Namespace storage limits (node/metadata/quotas.py); their usage is derived.
_QUOTA_SECTIONS = ("quotas",)
# The trash (node/metadata/trash.py).
_TRASH_SECTIONS = ("trash", "trash_tags")
# Signature keys and pull policy per namespace (docs/security.md "Signed images"), the
# vulnerability policy and database (docs/supply-chain.md).
_TRUST_SECTIONS = ("trust",)
# Platforms and config labels of manifests, for search (docs/search.md).
_INFO_SECTIONS = ("image_info",)


# Webhook endpoints, cursors, dead letters and the delivery lease (node/metadata/webhooks.py).
_WEBHOOK_SECTIONS = ("webhooks",)
# The SBOM scanner's queue (node/metadata/scans.py).
_SCAN_SECTIONS = ("scans",)
# The vulnerability policy and database (docs/supply-chain.md).
_VULN_SECTIONS = ("vuln_policy", "vulndb")
_V4_ONLY = (
    *_TIME_SECTIONS,
    *_ACCESS_V4_SECTIONS,
    *_QUOTA_SECTIONS,
    *_AUDIT_SECTIONS,
    *_TRASH_SECTIONS,
    *_TRUST_SECTIONS,
    *_INFO_SECTIONS,
    *_WEBHOOK_SECTIONS,
    *_SCAN_SECTIONS,
    *_VULN_SECTIONS,
)
_SECTIONS = (
    *_SECTIONS_V3,
    *_TIME_SECTIONS,
    *_ACCESS_V4_SECTIONS,
    *_QUOTA_SECTIONS,
    *_AUDIT_SECTIONS,
    *_TRASH_SECTIONS,
    *_TRUST_SECTIONS,
    *_INFO_SECTIONS,
    *_WEBHOOK_SECTIONS,
    *_SCAN_SECTIONS,
    *_VULN_SECTIONS,
)
# Sections left out of a version 4 snapshot while empty, so code older than them reads it.
_OPTIONAL_V4 = frozenset(
    {
        *_QUOTA_SECTIONS,
        *_TRASH_SECTIONS,
        *_TRUST_SECTIONS,
        *_INFO_SECTIONS,
        *_WEBHOOK_SECTIONS,
        *_SCAN_SECTIONS,
        *_VULN_SECTIONS,
    }
)
# The compact formats (versions 5 and 6): the sections of version 4, but the big containers
# are written as pieces of themselves, records and all, through one pickler whose memo
# spans the whole file, so each string is written once and loads as one shared object.
# Version 6 (the newest, written by default) leaves no per-record object alive until the
# load ends: manifests go as one flat list per piece, `image_info` as dict pieces, the
# other row sections as flat lists of rows (`_encode_compact`).
SNAPSHOT_COMPACT_V5 = 5
SNAPSHOT_COMPACT = 6
COMPACT_VERSIONS = (SNAPSHOT_COMPACT_V5, SNAPSHOT_COMPACT)
# {key: record} sections, written as dicts of at most a batch of entries.
_FLAT_PARTS = frozenset({"blobs", "uploads"})
_FLAT_PARTS_V6 = frozenset({*_FLAT_PARTS, "image_info"})
# {repo: container} sections, written as lists of (repo, piece of its container)
# (version 6: `manifests` pieces as `records.flat_manifests` lists).
_REPO_PARTS = frozenset({"links", "manifests", "tags", "referrers", *_TIME_SECTIONS})

OPEN, CLOSED, CANCELLED = "open", "closed", "cancelled"
# Closed and cancelled upload sessions kept: the newest ones; an older one is forgotten and
# its id is "new" again. Nothing needs them to deduplicate a retry: a `blob_commit` retried
# after an unknown outcome finds its session closed by itself and succeeds, or, once the
# record is gone, succeeds as a monolithic commit of the same recipe; a retried cancel
# records a cancel again. They keep the protocol's answers for a session just completed:
# `upload_get` (GET of the upload URL) answers BlobUploadUnknown, and a commit of another
# digest or an append on it is refused. Kept for `upload_expire_after` (24 h) before, a
# fast import left one per pushed blob (~230 B each, a fifth of the state: issue 20). A
# constant, not a setting: every node must forget the same ones (in closing order, which
# `uploads`' order keeps in snapshots). 4,096 are ~1 MB, seconds of closes at the
# measured push rates, longer than a client takes from its PUT to a status GET.
CLOSED_UPLOADS_KEPT = 4096
MEMBER_STATES = api.MEMBER_STATES
COMMANDS = api.COMMANDS
QUERIES = api.QUERIES

_intern = sys.intern


# -- records -------------------------------------------------------------------------------
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
    grants: tuple[tuple[str, str], ...]  # (user or group:<group>, role), sorted


class Trust(NamedTuple):
    keys: tuple[tuple[str, str], ...]  # (key name, PEM), sorted by name
    require_signature: bool


class VulnPolicy(NamedTuple):
    block_severity: str  # api.BLOCK_SEVERITIES
    allowlist: tuple[str, ...]  # advisory ids or aliases, sorted
    unscanned: str  # allow | deny


class VulnDb(NamedTuple):
    generation: int
    digest: str
    imported_at: float
    source: str
    stats_json: str


class Group(NamedTuple):
    members: tuple[str, ...]  # user names, sorted


class Robot(NamedTuple):
    secret_hash: str
    expires_at: float | None
    permissions: tuple[tuple[str, tuple[str, ...]], ...]  # (namespace, actions), sorted
    description: str
    created_at: float


_NO_VULN_POLICY = VulnPolicy("none", (), "allow")


def _upload_state(record: Upload) -> str:
    if isinstance(record, OpenUpload):
        return OPEN
    return CLOSED if isinstance(record, ClosedUpload) else CANCELLED


def _last_touched(record: Upload) -> float:
    return record.touched_at if isinstance(record, OpenUpload) else record.closed_at


# -- snapshot rows: plain tuples, the layout every version wrote ----------------------------
def _recipe_row(recipe: Any, digest: str) -> tuple[Any, ...]:
    return recipe.row(digest) if isinstance(recipe, (Recipe, OneChunk)) else tuple(recipe)


def _manifest_row(m: Any, digest: str) -> tuple[Any, ...]:
    if isinstance(m, Manifest):
        return m.row(digest)
    return (m[0], m[1], _recipe_row(m[2], digest), *m[3:])


def _upload_row(record: tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(record, OpenUpload):
        return (OPEN, *record)
    if isinstance(record, ClosedUpload):
        return (CLOSED, *record)
    if isinstance(record, CancelledUpload):
        return (CANCELLED, record.repo, None, record.closed_at)
    return tuple(record)  # already a row (a version-1 snapshot)


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


def _pack_recipe(recipe: api.Recipe, digest: str) -> AnyRecipe:
    size = recipe["size"]
    packed, total = _pack_chunks(recipe.get("chunks"))
    if total != size:
        raise SizeInvalid(f"recipe chunks sum to {total}, size says {size}")
    return make_recipe(packed, digest)


def unpack_chunks(packed: bytes) -> list[list[Any]]:
    """Packed chunk list -> [[hex, length], ...] (the catalogue's JSON form)."""
    return [[chunk_id.hex(), length] for chunk_id, length in _CHUNK.iter_unpack(packed)]


def recipe_json(recipe: AnyRecipe, digest: str) -> api.Recipe:
    return {"size": recipe.size, "chunks": unpack_chunks(recipe.chunks_for(digest))}


def _flatten(name: str, section: Any) -> Iterator[tuple[Any, ...]]:
    """The rows of one snapshot section: one row per innermost entry, records as tuples."""
    if name in ("audit", "webhooks"):
        yield from section.rows()
    elif name == "blobs":
        for digest, recipe in section.items():
            yield digest, _recipe_row(recipe, digest)
    elif name == "uploads":
        for upload, record in section.items():
            yield upload, _upload_row(record)
    elif name in ("members", "users", "groups", "robots"):
        for key, record in section.items():
            yield key, tuple(record)
    elif name == "namespaces":
        for prefix, ns in section.items():
            yield prefix, ns.visibility, tuple(ns.grants)
    elif name in ("quotas", "image_info"):
        yield from section.items()
    elif name == "trust":
        for prefix, record in section.items():
            yield prefix, tuple(record.keys), record.require_signature
    elif name == "vuln_policy":
        for prefix, record in section.items():
            yield prefix, *record
    elif name == "vulndb":
        yield from section  # one row, or none
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
                yield repo, digest, _manifest_row(m, digest)
    elif name == "trash":
        for repo, digest, m, deleted_at in _trash_manifest_rows(section):
            yield repo, digest, _manifest_row(m, digest), deleted_at
    elif name == "trash_tags":
        yield from _trash_tag_rows(section)
    elif name == "scans":
        yield from _scan_rows(section)
    else:  # tags {repo: {tag: digest}}, pushed/tag_pushed/pulled {repo: {key: time}}
        for repo, entries in section.items():
            for key, value in entries.items():
                yield repo, key, value


class MetadataState:
    """The replicated metadata: deterministic `apply` of commands, `query` of reads."""

    def __init__(self) -> None:
        self.blobs: dict[str, AnyRecipe] = {}
        self.links: dict[str, set[str]] = {}
        self.manifests: dict[str, dict[str, Manifest]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.referrers: dict[str, dict[str, set[str]]] = {}
        self.uploads: dict[str, Upload] = {}
        # The ids of the closed and cancelled records in `uploads`, oldest closed first
        # (trimmed to `CLOSED_UPLOADS_KEPT`); derived from `uploads`' order at load.
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.members: dict[str, Member] = {}
        self.users: dict[str, User] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.groups: dict[str, Group] = {}
        self.robots: dict[str, Robot] = {}
        self.audit = AuditLog()
        self.webhooks = WebhookBook()
        self.trust: dict[str, Trust] = {}
        self.vuln_policy: dict[str, VulnPolicy] = {}
        self.vulndb: VulnDb | None = None
        self.pushed: dict[str, dict[str, float]] = {}
        self.tag_pushed: dict[str, dict[str, float]] = {}
        self.pulled: dict[str, dict[str, float]] = {}
        self.quotas = QuotaBook()
        self.trash = Trash()
        self.image_info: dict[str, str] = {}
        self.scans = ScanBook()
        self.blob_bytes = 0
        # Listing orders, built by the first page that needs one and then kept up to date
        # by the commands (node/metadata/sorted_names.py): the catalogue, and the tags of
        # each repository listed since the state was loaded.
        self._catalog: SortedNames | None = None
        self._tag_order: dict[str, SortedNames] = {}
        # The search index, kept up to date likewise. A node builds it in the background
        # (node/metadata/search_build.py: `search_inline` False, `search_build_begin`); a
        # bare state (tests, benches) builds it at its first search.
        self._search: SearchIndex | None = None
        self.search_inline = True
        # Called (under the state's lock) when a snapshot load dropped the index.
        self.on_search_dropped: Callable[[], None] | None = None
        # Counts behind the `status` query (an Admin.Status health probe must stay O(1)).
        self._repo_count = self._manifest_count = 0
        # The access directory's revision (`access_revision`): this process's random epoch
        # and how many access changes (users, namespaces, grants, groups, robots) it has
        # applied or loaded. Never persisted nor replicated: two nodes' revisions are not
        # comparable, only "the same as before" is meaningful (gateway/auth/revision.py).
        self._access_epoch = secrets.token_hex(8)
        self._access_changes = 0
        # The same for removed blob links and manifests (`unlink_revision`, api.UNLINKS):
        # what a gateway confirmed at one stays true while it does (gateway/manifest_cache.py).
        self._unlinks = 0
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
            api.PullRecord: self._pull_record,
            api.UserPut: self._user_put,
            api.NamespacePut: self._namespace_put,
            api.GrantSet: self._grant_set,
            api.GroupPut: self._group_put,
            api.GroupDelete: self._group_delete,
            api.GroupMemberSet: self._group_member_set,
            api.GroupGrantSet: self._group_grant_set,
            api.RobotPut: self._robot_put,
            api.RobotDelete: self._robot_delete,
            api.AuditAppend: self._audit_append,
            api.AuditSeal: self._audit_seal,
            api.AuditExpire: self._audit_expire,
            api.AuditHead: self._audit_head,
            api.AuditTail: self._audit_tail,
            api.QuotaSet: self._quota_set,
            api.QuotaList: self._quota_list,
            api.TrashRestore: self._trash_restore,
            api.TrashPurge: self._trash_purge,
            api.TrashList: self._trash_list,
            api.TrustKeyPut: self._trust_key_put,
            api.PullPolicyPut: self._pull_policy_put,
            api.VulnPolicyPut: self._vuln_policy_put,
            api.VulndbPut: self._vulndb_put,
            api.VulndbGet: self._vulndb_get,
            api.ArtifactsList: self._artifacts_list,
            api.ImageInfoMissing: self._image_info_missing,
            api.ImageInfoBackfill: self._image_info_backfill,
            api.AccessList: self._access_list,
            api.TrustList: self._trust_list,
            api.WebhookPut: self._webhook_put,
            api.WebhookRemove: self._webhook_remove,
            api.WebhookLease: self._webhook_lease,
            api.WebhookAdvance: self._webhook_advance,
            api.WebhookRetry: self._webhook_retry,
            api.WebhookList: self._webhook_list,
            api.WebhookDeadLetters: self._webhook_dead_letters,
            api.ReplicationLease: self._replication_lease,
            api.ReplicationReport: self._replication_report,
            api.ReplicationRun: self._replication_run,
            api.ReplicationRetry: self._replication_retry,
            api.ReplicationList: self._replication_list,
            api.JobLease: self._job_lease,
            api.ScanClaim: self._scan_claim,
            api.ScanFinish: self._scan_finish,
            api.ScanEnqueue: self._scan_enqueue,
            api.ScanList: self._scan_list,
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
            api.Search: self._search_page,
            api.AccessRevision: self._access_revision,
            api.UnlinkRevision: self._unlink_revision,
            # Answered by the Raft member itself (access leases); a lone state has none.
            api.AccessFence: lambda req: None,
        }
        for kind in _ACCESS_COMMANDS:
            self._handlers[kind] = self._counting(self._handlers[kind], "_access_changes")
        for kind in api.UNLINKS:
            self._handlers[kind] = self._counting(self._handlers[kind], "_unlinks")

    def _counting(self, handler: Callable[[Any], Any], counter: str) -> Callable[[Any], Any]:
        """`handler`, adding one to the revision count `counter` when it succeeds."""

        def counted(request: Any) -> Any:
            result = handler(request)
            setattr(self, counter, getattr(self, counter) + 1)
            return result

        return counted

    # -- entry points ------------------------------------------------------------------------
    def execute(self, request: api.Request[api.R]) -> api.R:
        """Apply a typed command or answer a typed query; a cargohold.errors type (state
        unchanged) on refusal."""
        result: api.R = self._handlers[type(request)](request)
        return result

    def apply(self, op: str, args: dict[str, Any]) -> Any:
        """Apply one command as it travels and sits in the Raft log; its JSON result."""
        command = api.decode_command(op, args)
        result = command.encode_result(self.execute(command))
        if self._search is not None:
            self._search.settle()  # bounded marks (search_index.py), once the command is done
        return result

    def query(self, op: str, args: dict[str, Any]) -> Any:
        """Answer one query as it travels; its JSON result."""
        request = api.decode_query(op, args)
        return request.encode_result(self.execute(request))

    def _release_bulk(self) -> None:
        """Let go of the containers that grow with the manifest count (and the search
        index over them), before a load builds new ones: a follower installing the
        leader's snapshot would otherwise hold two whole states at its peak and keep the
        old one's freed pools charged after (measured at 1 M manifests: 1.0 -> 1.5 GiB of
        RssAnon after a catch-up; docs/metadata.md)."""
        self.blobs, self.links, self.manifests, self.tags = {}, {}, {}, {}
        self.referrers, self.pushed, self.tag_pushed, self.pulled = {}, {}, {}, {}
        self.image_info = {}
        self.trash = Trash()
        self._catalog = None
        self._tag_order = {}
        self._drop_search()

    def _drop_search(self) -> None:
        """No search index until the next build; the old one's rows let go at once
        (`SearchIndex.discard`: a frozen cycle otherwise)."""
        if self._search is not None:
            self._search.discard()
        self._search = None

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
            "groups": self.groups.copy(),
            "robots": self.robots.copy(),
            "audit": self.audit.copy(),
            "trust": self.trust.copy(),
            "image_info": self.image_info.copy(),
            "webhooks": self.webhooks.copy(),
            "vuln_policy": self.vuln_policy.copy(),
            "vulndb": [tuple(self.vulndb)] if self.vulndb else [],
            **{
                name: {repo: times.copy() for repo, times in getattr(self, name).items()}
                for name in _TIME_SECTIONS
            },
            "quotas": self.quotas.limits.copy(),
            **dict(zip(("trash", "trash_tags"), self.trash.copy(), strict=True)),
            "scans": self.scans.copy(),
        }

    @staticmethod
    def encode_snapshot(
        snap: dict[str, Any],
        batch: int = _SNAPSHOT_BATCH,
        compact: bool = False,
        compact_version: int = SNAPSHOT_COMPACT,
    ) -> Iterator[bytes]:
        """A `snapshot()` as a stream of pickles (protocol 5, no compression): a header, then
        per section its batches and a None. Each batch is one short C call (no batch holds
        more than `batch` entries), so a thread encoding a large state lets the others run
        in between.

        The row formats (versions 2-4, the default) flatten each section into plain-tuple
        rows that every earlier version reads. `compact` writes a compact version,
        `compact_version` (6 by default, or 5 which nodes before version 6 read; module
        `_encode_compact`): about a third of the bytes, and a load several times faster."""
        if compact:
            yield from _encode_compact(snap, batch, compact_version)
            return
        # The oldest version that holds everything is written, so earlier code reads it
        # (a cluster that never used registry users nor pushed since can still roll back).
        header: dict[str, Any] = {"blob_bytes": snap["blob_bytes"]}
        names: tuple[str, ...]
        if any(snap.get(name) for name in _V4_ONLY):
            # Empty optional sections are left out, so the code before them reads it.
            names = tuple(n for n in _SECTIONS if n not in _OPTIONAL_V4 or snap.get(n))
            header.update(version=_SNAPSHOT_VERSION, sections=list(names))
        elif snap.get("users") or snap.get("namespaces"):
            names, header["version"] = _SECTIONS_V3, 3
        else:
            names, header["version"] = _SECTIONS_V2, 2
        yield pickle.dumps(header, protocol=5)
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
        if version == 2:
            names: tuple[str, ...] = _SECTIONS_V2
        elif version == 3:
            names = _SECTIONS_V3
        elif version in (_SNAPSHOT_VERSION, *COMPACT_VERSIONS) and set(
            header.get("sections", ())
        ) <= set(_SECTIONS):
            names = tuple(header["sections"])
        else:
            raise ValueError(
                f"unknown metadata snapshot header {header!r:.80} (version {version}: "
                f"this node reads versions 1-{SNAPSHOT_COMPACT}; a snapshot of a newer "
                "version needs a node of that version)"
            )
        if list(names) != [n for n in _SECTIONS if n in names]:
            raise ValueError(f"metadata snapshot sections out of order: {names}")
        load = _SnapshotUnpickler(stream).load if version in COMPACT_VERSIONS else None
        sections = {name: _batches(stream, load) for name in names}
        if version == SNAPSHOT_COMPACT:
            for name in names:
                if name not in _FLAT_PARTS_V6 and name not in _REPO_PARTS:
                    sections[name] = _rows_from_flat(sections[name])
        sections.update({name: iter(()) for name in _SECTIONS if name not in names})
        self._load_rows(int(header["blob_bytes"]), sections, version=version)

    def _load_v1(self, snap: dict[str, Any]) -> None:
        """Version 1 snapshots (one pickle of the whole state) are still read."""
        self._load_rows(
            int(snap["blob_bytes"]),
            {
                name: iter([list(_flatten(name, snap.get(name, {})))] if name in snap else [])
                for name in _SECTIONS
            },
        )

    def _load_rows(
        self, blob_bytes: int, sections: dict[str, Iterator[Any]], version: int = 1
    ) -> None:
        """Replace the state with the sections' batches: rows (versions 1-4), or for the
        big sections of a compact `version` the pieces of their containers. The stream's
        header has been checked; a stream that breaks off from here on is fatal to the node
        (raft.py `_read_dump`), so the old state goes first."""
        parts = version in COMPACT_VERSIONS
        flat_parts = _FLAT_PARTS_V6 if version == SNAPSHOT_COMPACT else _FLAT_PARTS
        self._access_changes += 1  # a loaded snapshot may change anything
        self._unlinks += 1
        self._release_bulk()
        blobs: dict[str, AnyRecipe] = {}
        links: dict[str, set[str]] = {}
        manifests: dict[str, dict[str, Manifest]] = {}
        tags: dict[str, dict[str, str]] = {}
        referrers: dict[str, dict[str, set[str]]] = {}
        uploads: dict[str, Upload] = {}
        members: dict[str, Member] = {}
        users: dict[str, User] = {}
        namespaces: dict[str, Namespace] = {}
        groups: dict[str, Group] = {}
        robots: dict[str, Robot] = {}
        audit = AuditLog()
        webhooks = WebhookBook()
        trust: dict[str, Trust] = {}
        vuln_policy: dict[str, VulnPolicy] = {}
        vulndb: VulnDb | None = None
        times: dict[str, dict[str, dict[str, float]]] = {name: {} for name in _TIME_SECTIONS}
        quotas: dict[str, int] = {}
        trash = Trash()
        image_info: dict[str, str] = {}
        scans = ScanBook()
        whole: dict[str, dict[str, Any]] = {
            "blobs": blobs,
            "uploads": uploads,
            "links": links,
            "manifests": manifests,
            "tags": tags,
            "referrers": referrers,
            "image_info": image_info,
            **times,
        }
        # Sections are consumed in order: a stream holds them one after the other.
        for name in _SECTIONS:
            if parts and name in flat_parts:
                for piece in sections[name]:
                    if type(piece) is tuple:  # version 6's blobs with recipes
                        _restore_recipes(blobs, *piece)
                    else:
                        whole[name].update(piece)
                continue
            if parts and name in _REPO_PARTS:
                batches = sections[name]
                if name == "manifests" and version == SNAPSHOT_COMPACT:
                    batches = _manifest_parts(batches)
                _merge_repo_parts(whole[name], batches)
                continue
            for chunk in sections[name]:
                if name == "blobs":
                    blobs.update((_intern(d), recipe_from_row(r, d)) for d, r in chunk)
                elif name == "links":
                    for repo, d in chunk:
                        links.setdefault(_intern(repo), set()).add(_intern(d))
                elif name == "manifests":
                    for repo, d, m in chunk:
                        manifests.setdefault(_intern(repo), {})[_intern(d)] = Manifest.from_row(
                            m, d
                        )
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
                elif name == "trash":
                    for repo, d, m, at in chunk:
                        d = _intern(d)
                        trash.manifests.setdefault(_intern(repo), {})[d] = TrashedManifest(
                            Manifest.from_row(m, d), at
                        )
                elif name == "trash_tags":
                    for repo, t, d, at in chunk:
                        trash.tags.setdefault(_intern(repo), {})[_intern(t)] = TrashedTag(
                            _intern(d), at
                        )
                elif name == "namespaces":
                    namespaces.update(
                        (p, Namespace(v, tuple(tuple(g) for g in grants))) for p, v, grants in chunk
                    )
                elif name == "groups":
                    groups.update((g, Group(tuple(r[0]))) for g, r in chunk)
                elif name == "robots":
                    robots.update((n, _robot_from_row(r)) for n, r in chunk)
                elif name == "quotas":
                    quotas.update((_intern(p), int(limit)) for p, limit in chunk)
                elif name == "image_info":
                    image_info.update((_intern(d), _info_text(j)) for d, j in chunk)
                elif name == "audit":
                    for row in chunk:
                        audit.load_row(row)
                elif name == "webhooks":
                    for row in chunk:
                        webhooks.load_row(row)
                elif name == "scans":
                    for row in chunk:
                        scans.load_row((_intern(row[0]), _intern(row[1]), *row[2:]))
                elif name == "trust":
                    trust.update(
                        (ns, Trust(tuple(tuple(k) for k in keys), bool(required)))
                        for ns, keys, required in chunk
                    )
                elif name == "vuln_policy":
                    vuln_policy.update(
                        (ns, VulnPolicy(block, tuple(allow), unscanned))
                        for ns, block, allow, unscanned in chunk
                    )
                elif name == "vulndb":
                    for row in chunk:
                        vulndb = VulnDb._make(row)
                else:
                    section = times[name]
                    for repo, key, when in chunk:
                        section.setdefault(_intern(repo), {})[_intern(key)] = when
        self.blobs, self.links, self.manifests, self.tags = blobs, links, manifests, tags
        self.referrers, self.uploads, self.members = referrers, uploads, members
        self.users, self.namespaces = users, namespaces
        self.groups, self.robots = groups, robots
        self.audit = audit
        self.webhooks = webhooks
        self.trust = trust
        self.vuln_policy, self.vulndb = vuln_policy, vulndb
        self.pushed, self.tag_pushed = times["pushed"], times["tag_pushed"]
        self.pulled = times["pulled"]
        self.trash = trash
        self.image_info = image_info
        self.scans = scans
        self.blob_bytes = blob_bytes
        self._catalog = None
        self._tag_order = {}
        self._drop_search()
        if self.on_search_dropped is not None:
            self.on_search_dropped()
        self._recount()
        self._closed = collections.OrderedDict(
            (u, None) for u, record in uploads.items() if not isinstance(record, OpenUpload)
        )
        self._trim_closed()
        self.quotas = QuotaBook()
        self.quotas.rebuild(quotas, links, self._size_of)

    def _size_of(self, digest: str) -> int:
        recipe = self.blobs.get(digest)
        return recipe.size if recipe is not None else 0

    def _recount(self) -> None:
        self._repo_count = len(self.links.keys() | self.manifests.keys())
        self._manifest_count = sum(len(m) for m in self.manifests.values())

    # -- shared mutations ----------------------------------------------------------------------
    def _repo_exists(self, repo: str) -> bool:
        return repo in self.links or repo in self.manifests

    def _repo_added(self, repo: str) -> None:
        if self._catalog is not None:
            self._catalog.add(repo)
        self._repo_count += 1

    def _repo_removed(self, repo: str) -> None:
        if self._catalog is not None:
            self._catalog.discard(repo)
        self._repo_count -= 1

    def _set_upload(self, upload: str, record: Upload) -> None:
        if isinstance(record, OpenUpload):
            self.uploads[upload] = record
            return
        # Closed: moved to the end, so `uploads`' order (what a snapshot keeps) is the
        # closing order and a node that loads one forgets the same sessions as the others.
        self.uploads.pop(upload, None)
        self.uploads[upload] = record
        self._closed[upload] = None
        self._trim_closed()

    def _trim_closed(self) -> None:
        """Forget the oldest closed or cancelled sessions beyond `CLOSED_UPLOADS_KEPT`."""
        while len(self._closed) > CLOSED_UPLOADS_KEPT:
            upload, _ = self._closed.popitem(last=False)
            self.uploads.pop(upload, None)

    def _add_blob(self, digest: str, recipe: AnyRecipe) -> None:
        if digest not in self.blobs:
            self.blobs[digest] = recipe
            self.blob_bytes += recipe.size

    def _link(self, repo: str, digest: str) -> None:
        linked = self.links.get(repo)
        if linked is None:
            if repo not in self.manifests:
                self._repo_added(repo)
            linked = self.links[repo] = set()
        elif digest in linked:
            return
        linked.add(digest)
        if self.quotas.limits:
            self.quotas.linked(repo, digest, self._size_of(digest))

    def _check_quota(self, repo: str, digest: str, size: int) -> None:
        """QuotaExceeded (state unchanged) when linking `digest` into `repo` would take one
        of its namespaces past its quota; a digest already linked there adds nothing."""
        if self.quotas.limits and digest not in self.links.get(repo, ()):
            self.quotas.check_link(repo, digest, size)

    def _unlink(self, repo: str, digest: str) -> None:
        linked = self.links.get(repo)
        if linked is None or digest not in linked:
            return
        linked.discard(digest)
        if self.quotas.limits:
            self.quotas.unlinked(repo, digest, self._size_of(digest))
        if not linked:
            del self.links[repo]
            if repo not in self.manifests:
                self._repo_removed(repo)

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
        if self.quotas.limits and added:
            # The digest is not known yet: the session must fit in the room left.
            self.quotas.check_room(repo, size)
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

    def _check_recipe(self, digest: str, recipe: AnyRecipe) -> None:
        """The first recipe recorded for a digest stays: a different one is refused."""
        recorded = self.blobs.get(digest)
        if recorded is not None and recorded != recipe:
            raise RecipeConflict(f"{digest} is recorded with another chunk list")

    def _blob_commit(self, req: api.BlobCommit) -> None:
        repo, digest, upload = req.repo, req.digest, req.upload
        recipe = _pack_recipe(req.recipe, digest)
        self._check_recipe(digest, recipe)
        record: Upload | None = None
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
                    and not (
                        record.size <= recipe.size
                        and recipe.chunks_for(digest).startswith(record.packed)
                    )
                ):
                    raise SizeInvalid(f"upload {upload}: the recipe does not extend its chunks")
        self._check_quota(repo, digest, recipe.size)
        first = upload is None or record is None or isinstance(record, OpenUpload)
        if upload is not None and first:
            self._set_upload(upload, ClosedUpload(repo, digest, req.now))
        self._add_blob(digest, recipe)
        self._link(repo, digest)
        if req.audit is not None and first:  # a retry of a closed upload records nothing
            self._audit(req.audit, "push", repo, digest, digest, blob_detail(recipe.size))
        return None

    def _blob_mount(self, req: api.BlobMount) -> bool:
        repo, digest, source = req.repo, req.digest, req.source
        if digest in self.links.get(repo, ()):
            return True
        # Mounting needs a source repository the caller may read: without `from`, a blob
        # known elsewhere must not leak into this repository.
        if source is None or digest not in self.links.get(source, ()):
            return False
        self._check_quota(repo, digest, self.blobs[digest].size)
        self._link(repo, digest)
        return True

    def _blob_unlink(self, req: api.BlobUnlink) -> None:
        repo, digest = req.repo, req.digest
        if digest not in self.links.get(repo, ()):
            raise BlobUnknown(f"blob {digest} unknown in {repo}")
        self._unlink(repo, digest)
        if req.audit is not None:
            self._audit(
                req.audit, "delete", repo, digest, digest, blob_detail(self._size_of(digest))
            )
        return None

    def _manifest_put(self, req: api.ManifestPut) -> None:
        repo, digest, subject, tag = req.repo, req.digest, req.subject, req.tag
        recipe = _pack_recipe(req.recipe, digest)
        if req.reuse_stored and self.blobs.get(digest) != recipe:
            # The gateway wrote no chunks: only a recipe recorded here proves they exist
            # (a recorded recipe's chunks are marked by every GC pass: node/gc.py).
            raise ManifestBytesNotStored(
                f"{digest} is not stored with this recipe", detail={"digest": digest}
            )
        self._check_recipe(digest, recipe)
        recipe = self.blobs.get(digest, recipe)  # the recorded one (equal): one copy
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
        self._check_quota(repo, digest, recipe.size)
        moved_from = self.tags.get(repo, {}).get(tag) if tag is not None else None
        self._insert_manifest(repo, digest, record)
        if req.info is not None and digest not in self.image_info:
            self.image_info[digest] = _info_text(
                json.dumps(req.info, sort_keys=True, separators=(",", ":"))
            )
        if tag is not None:
            self._set_tag(repo, tag, digest)
        if req.now is not None:
            self.pushed.setdefault(repo, {})[digest] = req.now
            if tag is not None:
                self.tag_pushed.setdefault(repo, {})[tag] = req.now
        if req.audit is not None:
            moved = f"moved from {moved_from}" if moved_from not in (None, digest) else ""
            self._audit(req.audit, "push", repo, tag or digest, digest, moved)
        if self.trash.manifests or self.trash.tags:
            self.trash.pushed(repo, digest, tag)
        if req.scan:
            self.scans.pushed(repo, digest, req.now or 0.0)
        return None

    def _drop_tag_order(self, repo: str, tag: str) -> None:
        if self._search is not None:
            self._search.touch(repo, tag)
        order = self._tag_order.get(repo)
        if order is not None:
            order.discard(tag)
            if not order:
                del self._tag_order[repo]

    def _insert_manifest(self, repo: str, digest: str, record: Manifest) -> None:
        """Put (or replace) a manifest record in `repo`: counters, referrers, its bytes."""
        present = self.manifests.get(repo)
        if present is None:
            if repo not in self.links:
                self._repo_added(repo)
            self.manifests[repo] = present = {}
        old = present.get(digest)
        present[digest] = record
        self._manifest_count += old is None
        subject = record.subject
        if old is not None and old.subject is not None and old.subject != subject:
            self._drop_referrer(repo, old.subject, digest)
        if subject is not None:
            self.referrers.setdefault(repo, {}).setdefault(subject, set()).add(digest)
        self._add_blob(digest, record.recipe)
        self._link(repo, digest)

    def _set_tag(self, repo: str, tag: str, digest: str) -> None:
        tags = self.tags.setdefault(repo, {})
        if tag not in tags and repo in self._tag_order:
            self._tag_order[repo].add(tag)
        tags[tag] = digest
        if self._search is not None:
            self._search.touch(repo, tag)

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
        if req.expect is not None:
            now = {"digest": tags[tag], "pushed": self.tag_pushed.get(repo, {}).get(tag)}
            _check_expect(repo, tag, req.expect, now)
        if req.trash:
            self.trash.put_tag(repo, tag, tags[tag], _now(req.now))
        digest = tags.pop(tag)
        self._drop_tag_order(repo, tag)
        if not tags:
            del self.tags[repo]
        _forget(self.tag_pushed, repo, tag)
        if req.audit is not None:
            self._audit(req.audit, "delete", repo, tag, digest, TAG_DELETED)
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
        if req.expect is not None:
            now = {
                "tags": sorted(t for t, d in self.tags.get(repo, {}).items() if d == digest),
                "pushed": self.pushed.get(repo, {}).get(digest),
                "pulled": self.pulled.get(repo, {}).get(digest),
            }
            _check_expect(repo, digest, req.expect, now)
        record = present.pop(digest)
        self._manifest_count -= 1
        tags = self.tags.get(repo)
        dropped: list[str] = []
        if req.trash:
            on_it = [t for t, d in tags.items() if d == digest] if tags else []
            self.trash.put_manifest(repo, digest, record, on_it, _now(req.now))
        if tags:
            dropped = [t for t, d in tags.items() if d == digest]
            for tag in dropped:
                del tags[tag]
                self._drop_tag_order(repo, tag)
                _forget(self.tag_pushed, repo, tag)
            if not tags:
                del self.tags[repo]
        if record.subject is not None:
            self._drop_referrer(repo, record.subject, digest)
        if not present:
            del self.manifests[repo]
            if repo not in self.links:
                self._repo_removed(repo)
        _forget(self.pushed, repo, digest)
        _forget(self.pulled, repo, digest)
        self.scans.forget(repo, digest)
        # The manifest bytes were linked as a blob by manifest_put: gone with the manifest.
        self._unlink(repo, digest)
        if req.audit is not None:
            detail = manifest_deleted_detail(dropped)
            self._audit(req.audit, "delete", repo, digest, digest, detail)
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
            del self.uploads[upload]
            self._closed.pop(upload, None)
        return len(stale)

    def _gc_prune(self, req: api.GcPrune) -> int:
        # Only here does `blobs` shrink: a recipe no repository links (GC chose it a grace
        # period ago; a link made since keeps it) and no trashed manifest holds. Manifests
        # hold their own recipe. Each repository's links are intersected with the batch (a
        # set intersection walks the smaller side), not copied into one set of every linked
        # digest per batch.
        candidates = {d for d in req.blobs if d in self.blobs}
        candidates -= held_blobs(self.trash.manifests)
        if self.vulndb is not None:  # the current vulnerability database is linked nowhere
            candidates.discard(self.vulndb.digest)
        for digests in self.links.values():
            if not candidates:
                break
            candidates -= digests & candidates
        pruned = 0
        for digest in req.blobs:
            recipe = self.blobs.get(digest)
            if recipe is None or digest not in candidates:
                continue
            del self.blobs[digest]
            self.image_info.pop(digest, None)
            self.blob_bytes -= recipe.size
            pruned += 1
        return pruned

    def _pull_record(self, req: api.PullRecord) -> int:
        recorded = 0
        for event in req.pulls:
            if event.blob_size is not None or event.digest not in self.manifests.get(
                event.repo, ()
            ):
                continue  # a blob, or a manifest deleted since (or never there): no time
            times = self.pulled.setdefault(event.repo, {})
            if event.time > times.get(event.digest, 0.0):
                times[event.digest] = event.time
                if self._search is not None:
                    self._search.touch_digest(event.repo, event.digest)
            recorded += 1
        self._audit_pulls(req.pulls)
        return recorded

    def _audit_pulls(self, pulls: tuple[api.PullEvent, ...]) -> None:
        """The same batch of pulls as activity-log records (one per event, present or not)."""
        append = self.audit.append
        for p in pulls:
            actor = p.actor or ""
            kind = (
                "robot"
                if actor.startswith(api.ROBOT_PREFIX)
                else ("user" if actor else "anonymous")
            )
            append(
                [
                    p.time,
                    actor,
                    kind,
                    p.addr or "",
                    p.user_agent or "",
                    "pull",
                    p.repo,
                    p.tag or p.digest,
                    p.digest,
                    "ok",
                    "" if p.blob_size is None else blob_detail(p.blob_size),
                ]
            )

    def _user_put(self, req: api.UserPut) -> None:
        old = self.users.get(req.name)
        if old is None:
            if req.password_hash is None:
                raise RequestInvalid(f"new user {req.name!r} needs a password hash")
            old = User(req.password_hash, False, False)
        created = req.name not in self.users
        self.users[req.name] = User(
            req.password_hash if req.password_hash is not None else old.password_hash,
            req.disabled if req.disabled is not None else old.disabled,
            req.admin if req.admin is not None else old.admin,
        )
        if req.audit is not None:
            changes = ["created"] if created else []
            if req.password_hash is not None and not created:
                changes.append("password")
            if req.disabled is not None:
                changes.append(f"disabled={str(req.disabled).lower()}")
            if req.admin is not None:
                changes.append(f"admin={str(req.admin).lower()}")
            self._audit(req.audit, "admin", "", f"user:{req.name}", "", " ".join(changes))

    def _namespace_put(self, req: api.NamespacePut) -> None:
        old = self.namespaces.get(req.name)
        self.namespaces[req.name] = Namespace(req.visibility, old.grants if old else ())
        if req.audit is not None:
            change = f"{'visibility' if old else 'created'} {req.visibility}"
            self._audit(req.audit, "admin", req.name, f"namespace:{req.name}", "", change)

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
        if req.audit is not None:
            change = f"grant {req.user} {req.role}" if req.role else f"revoke {req.user}"
            self._audit(req.audit, "admin", req.namespace, f"namespace:{req.namespace}", "", change)

    def _group_put(self, req: api.GroupPut) -> None:
        self.groups.setdefault(req.name, Group(()))
        if req.audit is not None:
            self._audit(req.audit, "admin", "", f"group:{req.name}", "", "created")

    def _group_delete(self, req: api.GroupDelete) -> bool:
        if self.groups.pop(req.name, None) is None:
            return False
        principal = api.GROUP_PREFIX + req.name
        for name, ns in list(self.namespaces.items()):
            if any(p == principal for p, _ in ns.grants):
                grants = tuple(g for g in ns.grants if g[0] != principal)
                self.namespaces[name] = ns._replace(grants=grants)
        if req.audit is not None:
            self._audit(req.audit, "admin", "", f"group:{req.name}", "", "deleted")
        return True

    def _group_member_set(self, req: api.GroupMemberSet) -> None:
        group = self.groups.get(req.group)
        if group is None:
            raise NotFound(f"no group {req.group!r}")
        members = set(group.members)
        if req.member:
            if req.user not in self.users:
                raise NotFound(f"no user {req.user!r}")
            members.add(req.user)
        else:
            members.discard(req.user)
        self.groups[req.group] = Group(tuple(sorted(members)))
        if req.audit is not None:
            change = f"{'add' if req.member else 'remove'} member {req.user}"
            self._audit(req.audit, "admin", "", f"group:{req.group}", "", change)

    def _group_grant_set(self, req: api.GroupGrantSet) -> None:
        ns = self.namespaces.get(req.namespace)
        if ns is None:
            raise NotFound(f"no namespace {req.namespace!r}")
        if req.group not in self.groups:
            raise NotFound(f"no group {req.group!r}")
        grants = dict(ns.grants)
        principal = api.GROUP_PREFIX + req.group
        if req.role is None:
            grants.pop(principal, None)
        else:
            grants[principal] = req.role
        self.namespaces[req.namespace] = ns._replace(grants=tuple(sorted(grants.items())))
        if req.audit is not None:
            change = f"grant {principal} {req.role}" if req.role else f"revoke {principal}"
            self._audit(req.audit, "admin", req.namespace, f"namespace:{req.namespace}", "", change)

    def _robot_put(self, req: api.RobotPut) -> None:
        unknown = [n for n, _ in req.permissions if n not in self.namespaces]
        if unknown:
            raise NotFound(f"no namespace {unknown[0]!r}")
        self.robots[req.name] = Robot(
            req.secret_hash, req.expires_at, req.permissions, req.description, req.created_at
        )
        if req.audit is not None:
            perms = " ".join(f"{n}:{','.join(a)}" for n, a in req.permissions)
            expires = "never" if req.expires_at is None else f"{req.expires_at:.0f}"
            change = f"put {perms} expires {expires}"
            self._audit(req.audit, "admin", "", f"robot:{req.name}", "", change)

    def _robot_delete(self, req: api.RobotDelete) -> bool:
        deleted = self.robots.pop(req.name, None) is not None
        if deleted and req.audit is not None:
            self._audit(req.audit, "admin", "", f"robot:{req.name}", "", "deleted")
        return deleted

    # -- the activity log -------------------------------------------------------------------
    def _audit(
        self, actor: api.Actor, action: str, repo: str, ref: str, digest: str, detail: str
    ) -> None:
        """Append the record of a write command that carried an actor context."""
        self.audit.append(
            [
                actor["time"],
                actor.get("actor", ""),
                actor.get("actor_kind", ""),
                actor.get("client", ""),
                actor.get("user_agent", ""),
                action,
                repo,
                ref or "",
                digest,
                "ok",
                detail,
            ]
        )

    # -- webhooks (node/metadata/webhooks.py) -------------------------------------------------
    def _webhook_put(self, req: api.WebhookPut) -> bool:
        created = self.webhooks.put(req.endpoint, self.audit.head_seq)
        if req.audit is not None:
            change = f"webhook {'added' if created else 'changed'} {req.endpoint['url']}"
            self._audit(req.audit, "admin", "", f"webhook:{req.endpoint['name']}", "", change)
        return created

    def _webhook_remove(self, req: api.WebhookRemove) -> bool:
        removed = self.webhooks.remove(req.name)
        if removed and req.audit is not None:
            self._audit(req.audit, "admin", "", f"webhook:{req.name}", "", "webhook removed")
        return removed

    def _webhook_lease(self, req: api.WebhookLease) -> tuple[str, float]:
        if req.release:
            self.webhooks.release(req.holder)
            return self.webhooks.lease or ("", 0.0)
        return self.webhooks.take_lease(req.holder, req.now, req.ttl)

    def _webhook_advance(self, req: api.WebhookAdvance) -> int:
        dead = [WebhookDeadLetter(*d) for d in req.dead]
        return self.webhooks.advance(
            req.name, req.holder, req.after, req.to, dead, req.retried, req.keep
        )

    def _webhook_retry(self, req: api.WebhookRetry) -> int:
        queued = self.webhooks.queue_retry(req.name, req.seqs)
        if queued and req.audit is not None:
            self._audit(
                req.audit, "admin", "", f"webhook:{req.name}", "", f"retry {queued} dead letters"
            )
        return queued

    def _webhook_list(self, req: api.WebhookList) -> dict[str, Any]:
        out = self.webhooks.listing()
        out["head_seq"] = self.audit.head_seq
        return out

    def _webhook_dead_letters(self, req: api.WebhookDeadLetters) -> list[list[Any]]:
        return [list(d) for d in self.webhooks.dead_letters(req.name)]

    # -- replication rules (their leases, cursors and status: node/metadata/webhooks.py) ----
    def _replication_lease(self, req: api.ReplicationLease) -> tuple[str, float]:
        if req.release:
            self.webhooks.release(req.holder, req.rule)
            return self.webhooks.rule_leases.get(req.rule) or ("", 0.0)
        return self.webhooks.take_lease(req.holder, req.now, req.ttl, req.rule)

    def _job_lease(self, req: api.JobLease) -> tuple[str, float]:
        if req.release:
            self.webhooks.release_job(req.job, req.holder)
            return self.webhooks.job_leases.get(req.job) or ("", 0.0)
        return self.webhooks.take_job_lease(req.job, req.holder, req.now, req.ttl)

    def _replication_report(self, req: api.ReplicationReport) -> int | None:
        dead = [WebhookDeadLetter(*d) for d in req.dead]
        return self.webhooks.rule_report(
            req.rule, req.holder, req.after, req.to, req.status, dead, req.retried, req.keep
        )

    def _replication_retry(self, req: api.ReplicationRetry) -> int:
        queued = self.webhooks.queue_rule_retry(req.rule, req.seqs)
        if queued and req.audit is not None:
            change = f"retry {queued} dead letters"
            self._audit(req.audit, "admin", "", f"replication:{req.rule}", "", change)
        return queued

    def _replication_run(self, req: api.ReplicationRun) -> int:
        n = self.webhooks.request_run(req.rule)
        if req.audit is not None:
            self._audit(req.audit, "admin", "", f"replication:{req.rule}", "", f"run {n} asked")
        return n

    def _replication_list(self, req: api.ReplicationList) -> dict[str, Any]:
        return {"rules": self.webhooks.rules_listing(), "head_seq": self.audit.head_seq}

    def _audit_append(self, req: api.AuditAppend) -> int:
        for event in req.events:
            self.audit.append(event)
        return self.audit.head_seq

    def _audit_seal(self, req: api.AuditSeal) -> bool:
        return self.audit.seal(req.first, req.last, req.digest, dict(req.recipe), req.now)

    def _audit_expire(self, req: api.AuditExpire) -> int:
        return self.audit.expire(req.before)

    def _quota_set(self, req: api.QuotaSet) -> None:
        self.quotas.set_limit(req.namespace, req.limit, self.links, self._size_of)
        if req.audit is not None:
            change = "quota removed" if req.limit is None else f"quota {req.limit}"
            self._audit(req.audit, "admin", req.namespace, f"quota:{req.namespace}", "", change)

    def _trash_restore(self, req: api.TrashRestore) -> api.TrashRestored:
        repo = req.repo
        plan = self.trash.plan_restore(
            req, self.manifests.get(repo, {}), self.tags.get(repo, {}), self.blobs
        )
        for digest, record in plan.manifests:
            # Its blobs were unlinked (or never were); their recipes are still held.
            for blob in record.blobs:
                self._link(repo, blob)
            self._insert_manifest(repo, digest, record)
        for tag in plan.tags:
            self._set_tag(repo, tag, plan.digest)
        if req.now is not None:
            # Retention counts a restore as a push: what an operator just brought back is
            # not "old" (its times went with the delete).
            for digest, _ in plan.manifests:
                self.pushed.setdefault(repo, {})[digest] = req.now
            for tag in plan.tags:
                self.tag_pushed.setdefault(repo, {})[tag] = req.now
        self.trash.take(repo, plan)
        if req.audit is not None:
            ref = req.digest if req.tag is None else req.tag
            detail = restore_detail(plan.tags, req.force)
            self._audit(req.audit, "restore", repo, ref or "", plan.digest, detail)
        return api.TrashRestored(sorted(d for d, _ in plan.manifests), plan.tags)

    def _trash_purge(self, req: api.TrashPurge) -> int:
        purged = self.trash.purge(req.now - req.older_than, req.repo)
        if req.audit is not None:  # one record per repository that lost entries
            for repo, count in purged.items():
                detail = f"{count} trash entries deleted over {req.older_than:g} s ago"
                self._audit(req.audit, "purge", repo, "trash", "", detail)
        return sum(purged.values())

    def _trash_list(self, req: api.TrashList) -> list[api.TrashEntry]:
        return self.trash.entries(req.repo)

    # -- queries --------------------------------------------------------------------------------
    def _quota_list(self, req: api.QuotaList) -> list[api.QuotaInfo]:
        return [api.QuotaInfo(*row) for row in self.quotas.listing()]

    def _trust_key_put(self, req: api.TrustKeyPut) -> None:
        if req.namespace not in self.namespaces:
            raise NotFound(f"namespace {req.namespace!r} does not exist")
        record = self.trust.get(req.namespace, Trust((), False))
        keys = dict(record.keys)
        if req.pem is None:
            if req.name not in keys:
                raise NotFound(f"namespace {req.namespace!r} has no key {req.name!r}")
            del keys[req.name]
        else:
            keys[req.name] = req.pem
        self._set_trust(req.namespace, record._replace(keys=tuple(sorted(keys.items()))))
        if req.audit is not None:
            if req.pem is None:
                change = f"key {req.name} removed"
            else:  # the PEM text's own digest names the key that was added
                pem_digest = hashlib.sha256(req.pem.encode()).hexdigest()
                change = f"key {req.name} added (pem sha256:{pem_digest})"
            self._audit(req.audit, "admin", req.namespace, f"trust:{req.namespace}", "", change)

    def _pull_policy_put(self, req: api.PullPolicyPut) -> None:
        if req.namespace not in self.namespaces:
            raise NotFound(f"namespace {req.namespace!r} does not exist")
        record = self.trust.get(req.namespace, Trust((), False))
        self._set_trust(req.namespace, record._replace(require_signature=req.require_signature))
        if req.audit is not None:
            change = f"require_signature {'on' if req.require_signature else 'off'}"
            self._audit(req.audit, "admin", req.namespace, f"trust:{req.namespace}", "", change)

    def _set_trust(self, namespace: str, record: Trust) -> None:
        if record.keys or record.require_signature:
            self.trust[namespace] = record
        else:  # nothing left to say: no record, so the snapshot version stays low
            self.trust.pop(namespace, None)

    def _trust_list(self, req: api.TrustList) -> list[api.TrustInfo]:
        out = []
        for ns in sorted({*self.trust, *self.vuln_policy}):
            record = self.trust.get(ns, Trust((), False))
            vuln = self.vuln_policy.get(ns, _NO_VULN_POLICY)
            out.append(api.TrustInfo(ns, dict(record.keys), record.require_signature, *vuln))
        return out

    def _vuln_policy_put(self, req: api.VulnPolicyPut) -> None:
        if req.namespace not in self.namespaces:
            raise NotFound(f"namespace {req.namespace!r} does not exist")
        record = VulnPolicy(req.block_severity, req.allowlist, req.unscanned)
        if record == _NO_VULN_POLICY:
            self.vuln_policy.pop(req.namespace, None)
        else:
            self.vuln_policy[req.namespace] = record
        if req.audit is not None:
            allow = ",".join(req.allowlist) or "-"
            change = (
                f"block_severity {req.block_severity}, allowlist {allow}, unscanned {req.unscanned}"
            )
            self._audit(req.audit, "admin", req.namespace, f"trust:{req.namespace}", "", change)

    def _vulndb_put(self, req: api.VulndbPut) -> int:
        recipe = _pack_recipe(req.recipe, req.digest)
        self._check_recipe(req.digest, recipe)
        current = self.vulndb
        if current is not None and current.digest == req.digest:
            return current.generation  # a retry, or the same database again
        self._add_blob(req.digest, recipe)
        generation = 1 if current is None else current.generation + 1
        stats = json.dumps(req.stats or {}, sort_keys=True)
        self.vulndb = VulnDb(generation, req.digest, req.now, req.source, stats)
        if req.audit is not None:
            change = f"vulnerability database generation {generation} from {req.source or '?'}"
            self._audit(req.audit, "admin", "", "vulndb", req.digest, change)
        return generation

    def _vulndb_get(self, req: api.VulndbGet) -> api.VulnDbInfo | None:
        db = self.vulndb
        if db is None:
            return None
        recipe = recipe_json(self.blobs[db.digest], db.digest)
        return api.VulnDbInfo(
            db.generation, db.digest, recipe, db.imported_at, db.source, json.loads(db.stats_json)
        )

    def _artifacts_list(self, req: api.ArtifactsList) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (digest, m.subject, json.loads(m.annotations_json or "{}"))
            for digest, m in sorted(self.manifests.get(req.repo, {}).items())
            if m.subject is not None and m.artifact_type == req.artifact_type
        ]

    def _access_revision(self, req: api.AccessRevision) -> str:
        return f"{self._access_epoch}.{self._access_changes}"

    def _unlink_revision(self, req: api.UnlinkRevision) -> str:
        return f"{self._access_epoch}.{self._unlinks}"

    def _access_list(self, req: api.AccessList) -> api.AccessData:
        namespaces = []
        for name, ns in sorted(self.namespaces.items()):
            users = {p: r for p, r in ns.grants if not p.startswith(api.GROUP_PREFIX)}
            groups = {
                p[len(api.GROUP_PREFIX) :]: r
                for p, r in ns.grants
                if p.startswith(api.GROUP_PREFIX)
            }
            namespaces.append(api.NamespaceInfo(name, ns.visibility, users, groups))
        return api.AccessData(
            [
                api.UserInfo(name, u.password_hash, u.disabled, u.admin)
                for name, u in sorted(self.users.items())
            ],
            namespaces,
            [api.GroupInfo(name, list(g.members)) for name, g in sorted(self.groups.items())],
            [
                api.RobotInfo(
                    name,
                    r.secret_hash,
                    r.expires_at,
                    {n: list(a) for n, a in r.permissions},
                    r.description,
                    r.created_at,
                )
                for name, r in sorted(self.robots.items())
            ],
        )

    @staticmethod
    def _manifest_info(digest: str, record: Manifest) -> api.ManifestInfo:
        return api.ManifestInfo(
            digest=digest,
            media_type=record.media_type,
            size=record.size,
            recipe=recipe_json(record.recipe, digest),
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
        return recipe_json(self.blobs[req.digest], req.digest)

    def _blob_recipe(self, req: api.BlobRecipe) -> api.Recipe:
        recipe = self.blobs.get(req.digest)
        if recipe is None:
            raise BlobUnknown(f"blob {req.digest} unknown")
        return recipe_json(recipe, req.digest)

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
            tags = self.tags.get(repo)
            if not tags:
                return api.Page([], False)
            # Once per repository after a load; the commands keep it in order from then on.
            order = self._tag_order[repo] = SortedNames(tags)
        return api.Page(*order.page(req.n, req.last))

    def _catalog_names(self) -> SortedNames:
        catalog = self._catalog
        if catalog is None:
            catalog = self._catalog = SortedNames(self.links.keys() | self.manifests.keys())
        return catalog

    def _catalog_page(self, req: api.Catalog) -> api.Page:
        return api.Page(*self._catalog_names().page(req.n, req.last))

    def _image_info_missing(self, req: api.ImageInfoMissing) -> api.InfoMissingPage:
        after_repo, after_digest = req.after or ("", "")
        repos = self._catalog_names().walk(after_repo or None)
        if req.after is not None:
            repos = chain((after_repo,), repos)
        items: list[tuple[str, str, str]] = []
        scanned = 0
        for repo in repos:
            present = self.manifests.get(repo)
            if not present:
                continue
            for digest in sorted(present):
                if repo == after_repo and digest <= after_digest:
                    continue
                scanned += 1
                if digest not in self.image_info:
                    items.append((repo, digest, present[digest].media_type))
                if len(items) == req.limit or scanned >= api.INFO_MISSING_SCAN:
                    return api.InfoMissingPage(items, (repo, digest))
        return api.InfoMissingPage(items, None)

    def _image_info_backfill(self, req: api.ImageInfoBackfill) -> int:
        recorded: set[str] = set()
        for repo, digest, info in req.entries:
            if digest in self.image_info or digest not in self.manifests.get(repo, ()):
                continue
            text = json.dumps(info, sort_keys=True, separators=(",", ":")) if info else "{}"
            self.image_info[digest] = _info_text(text)
            recorded.add(digest)
        if recorded and self._search is not None:
            # `image_info` is by digest: the rows of every repository holding one change.
            for repo, present in self.manifests.items():
                small, big = (
                    (present, recorded) if len(present) < len(recorded) else (recorded, present)
                )
                for digest in small:
                    if digest in big:
                        self._search.touch_digest(repo, digest)
        return len(recorded)

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

    def _audit_head(self, req: api.AuditHead) -> api.AuditHeadInfo:
        log = self.audit
        return api.AuditHeadInfo(
            log.head_seq,
            log.head_hash,
            log.base_seq,
            log.base_hash,
            log.tail_first,
            [segment_info(seg) for seg in log.segments[: req.segments]],
            len(log.segments),
        )

    def _audit_tail(self, req: api.AuditTail) -> api.AuditPage:
        lines, more = self.audit.page(req.after, req.n)
        return api.AuditPage(lines, more)

    def _members(self, req: api.Members) -> list[api.MemberInfo]:
        return [
            api.MemberInfo(node_id, m.grpc, m.raft, m.state)
            for node_id, m in sorted(self.members.items())
        ]

    def _search_page(self, req: api.Search) -> SearchPage:
        index = self._search
        if index is None and self.search_inline:
            index = self._search = SearchIndex(self)
        if index is None or not index.ready:
            done = len(index) if index is not None else 0
            raise Unavailable(
                f"the search index is being built on this node ({done} of about "
                f"{self._tag_count()} tags); retry shortly"
            )
        return index.search(req.spec)

    def _tag_count(self) -> int:
        return sum(len(tags) for tags in self.tags.values())

    def search_build_begin(self) -> tuple[SearchIndex, list[str]]:
        """Start a background build (the caller holds the lock): an empty index installed
        as this state's, so every command applied from now on marks the rows it changes,
        and the repositories to fill it with (node/metadata/search_build.py)."""
        self._drop_search()
        index = self._search = SearchIndex(self, building=True)
        return index, list(self.tags)

    def search_index(self) -> SearchIndex | None:
        """The index being built or served (None: none since the last load)."""
        return self._search

    # -- the scan queue (node/metadata/scans.py) ---------------------------------------------
    def _has_manifest(self, repo: str, digest: str) -> bool:
        return digest in self.manifests.get(repo, {})

    def _scan_claim(self, req: api.ScanClaim) -> list[api.ScanClaimed]:
        return self.scans.claim(req, self._has_manifest)

    def _scan_finish(self, req: api.ScanFinish) -> bool:
        return self.scans.finish(req)

    def _scan_enqueue(self, req: api.ScanEnqueue) -> None:
        self.scans.enqueue(req, self._has_manifest(req.repo, req.digest))

    def _scan_list(self, req: api.ScanList) -> list[api.ScanInfo]:
        return self.scans.list(req)

    def _status(self, req: api.Status) -> api.MetadataStatus:
        return api.MetadataStatus(
            repos=self._repo_count,
            blobs=len(self.blobs),
            manifests=self._manifest_count,
            uploads=len(self.uploads) - len(self._closed),
            blob_bytes=self.blob_bytes,
        )


def _check_expect(repo: str, ref: str, expect: dict[str, Any], now: dict[str, Any]) -> None:
    """Conflict when what a conditional delete expected changed (a push or pull raced it)."""
    changed = sorted(
        key
        for key, value in expect.items()
        if (sorted(value) if key == "tags" and isinstance(value, list) else value) != now[key]
    )
    if changed:
        raise Conflict(
            f"{repo} {ref} changed since it was chosen for deletion ({', '.join(changed)})",
            detail={"repository": repo, "reference": ref, "changed": changed},
        )


def _forget(section: dict[str, dict[str, float]], repo: str, key: str) -> None:
    """Drop one time of a pushed/tag_pushed/pulled section (and an emptied repository)."""
    times = section.get(repo)
    if times is not None and times.pop(key, None) is not None and not times:
        del section[repo]


def _info_text(text: str) -> str:
    """An `image_info` value; short ones (a platform alone) are shared between manifests."""
    return _intern(text) if len(text) <= 64 else text


def _now(now: float | None) -> float:
    if now is None:  # api._trash_args requires it with `trash`
        raise RequestInvalid("a delete into the trash needs `now`")
    return now


def _refuse_immutable(repo: str, tag: str, rules: tuple[str, ...]) -> None:
    """TagImmutable when one of the repository's immutable rules matches `tag`."""
    rule = rule_for_tag(rules, tag)
    if rule is not None:
        raise TagImmutable(
            f"tag {tag} of {repo} is immutable (rule {rule})",
            detail={"repository": repo, "tag": tag, "rule": rule},
        )


def _robot_from_row(row: tuple[Any, ...]) -> Robot:
    secret_hash, expires_at, permissions, description, created_at = row
    perms = tuple((n, tuple(a)) for n, a in permissions)
    return Robot(secret_hash, expires_at, perms, description, created_at)


def _batches(stream: BinaryIO, load: Callable[[], Any] | None = None) -> Iterator[Any]:
    """The batches of one snapshot section, up to its closing None (`load`: the compact
    format's one unpickler, whose memo spans the file)."""
    if load is None:
        while (chunk := pickle.load(stream)) is not None:
            yield chunk
        return
    while (chunk := load()) is not None:
        yield chunk


# -- the compact snapshot formats (versions 5 and 6) ------------------------------------------
_UPLOAD_CLASSES = (OpenUpload, ClosedUpload, CancelledUpload)
_SNAPSHOT_GLOBALS: dict[tuple[str, str], Any] = {
    **_RECORD_GLOBALS,
    **{(__name__, cls.__name__): cls for cls in _UPLOAD_CLASSES},
}


class _SnapshotUnpickler(pickle.Unpickler):
    """Reads a compact snapshot: resolves only the record types it may hold."""

    def find_class(self, module: str, name: str) -> Any:
        found = _SNAPSHOT_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"a metadata snapshot may not name {module}.{name}")
        return found


def _encode_compact(snap: dict[str, Any], batch: int, version: int) -> Iterator[bytes]:
    """Version 5: the header (version, blob_bytes, the sections present), then through one
    pickler per section: the big containers in pieces (`_FLAT_PARTS`: dicts of at most
    `batch` entries; `_REPO_PARTS`: lists of (repo, piece) of at most `batch` entries in
    all), the small ones as the rows of version 4, each section ended by a None. The
    pickler's memo spans the whole file: a digest is written once, every later mention is
    a reference, and the load shares one string object as the state in RAM did (strings
    from the Raft log are interned).

    Version 6 is version 5 with no object per record that the load keeps to its end (the
    unpickler's memo holds every tuple and list it built, so a per-record temporary stays
    allocated among the records, and the pymalloc arenas it sits in cannot be given back):
    a manifest piece is a `records.flat_manifests` list instead of a dict of records
    reduced one argument tuple each, `image_info` goes as dict pieces, and every other row
    section as flat lists (`_flat_rows`: each row's length, then its fields). The loader
    empties each list once read; the memo keeps only the empty list objects."""
    if version not in COMPACT_VERSIONS:
        raise ValueError(f"no compact snapshot version {version} (known: {COMPACT_VERSIONS})")
    v6 = version == SNAPSHOT_COMPACT
    flat_parts = _FLAT_PARTS_V6 if v6 else _FLAT_PARTS
    names = tuple(n for n in _SECTIONS if n not in _OPTIONAL_V4 or snap.get(n))
    header = {"version": version, "blob_bytes": snap["blob_bytes"], "sections": names}
    yield pickle.dumps(header, protocol=5)
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=5)
    pickler.dispatch_table = _RECORD_REDUCERS  # type: ignore[assignment]

    def emit(obj: Any) -> bytes:
        pickler.dump(obj)
        data = out.getvalue()
        out.seek(0)
        out.truncate()
        return data

    for name in names:
        section = snap[name]
        if name in flat_parts:
            items = iter(section.items())
            while piece := dict(islice(items, batch)):
                if v6 and name == "blobs":
                    split = _split_recipes(piece)
                    yield emit(split)
                    if type(split) is tuple:  # the pickler's memo keeps them: empty them
                        split[1].clear()
                        split[2].clear()
                else:
                    yield emit(piece)
        elif name in _REPO_PARTS:
            for pieces in _repo_parts(section, batch):
                if v6 and name == "manifests":
                    flats = [(repo, flat_manifests(piece)) for repo, piece in pieces]
                    yield emit(flats)
                    for _, flat in flats:  # the pickler's memo keeps the lists: empty them
                        flat.clear()
                else:
                    yield emit(pieces)
        else:
            rows = _flatten(name, section)
            while chunk := list(islice(rows, batch)):
                if v6:
                    flat = _flat_rows(chunk)
                    yield emit(flat)
                    flat.clear()
                else:
                    yield emit(chunk)
        yield emit(None)


def _split_recipes(piece: dict[str, Any]) -> Any:
    """Version 6's piece of `blobs`: the dict itself, or if it holds `Recipe` records
    (chunk lists of several chunks), `(piece, [digest, length, ...], bytearray)`: the
    piece with None in their place (the dict keeps its order), their digests and lengths,
    and their packed lists one after the other. Pickled as records (version 5), each
    `Recipe` loaded through an argument tuple and a copy of its bytes that the unpickler's
    memo kept to the end of the load: ~210 B per 3-chunk recipe. The loader
    (`_restore_recipes`) empties both lists."""
    recipes = [(d, r) for d, r in piece.items() if type(r) is Recipe]
    if not recipes:
        return piece
    flat: list[Any] = []
    packed = bytearray()
    for digest, recipe in recipes:
        piece[digest] = None
        flat.append(digest)
        flat.append(len(recipe))
        packed += recipe
    return piece, flat, packed


def _restore_recipes(
    blobs: dict[str, AnyRecipe], piece: dict[str, Any], flat: list[Any], packed: bytearray
) -> None:
    """The loading side of `_split_recipes`, into `blobs` (each record in its place)."""
    blobs.update(piece)
    view, at = memoryview(packed), 0
    with view:
        for i in range(0, len(flat), 2):
            length = flat[i + 1]
            blobs[flat[i]] = Recipe(view[at : at + length])
            at += length
    if at != len(packed) or len(flat) % 2:
        raise ValueError("the recipes of a blobs piece do not match their lengths")
    flat.clear()
    packed.clear()


def _flat_rows(rows: list[tuple[Any, ...]]) -> list[Any]:
    """Version 6's rows of a small section: each row's length, then its fields."""
    flat: list[Any] = []
    for row in rows:
        flat.append(len(row))
        flat.extend(row)
    return flat


def _rows_from_flat(batches: Iterator[Any]) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of `_flat_rows` batches, as the row formats' batches (each list emptied)."""
    for flat in batches:
        rows = []
        i, end = 0, len(flat)
        while i < end:
            count = flat[i]
            rows.append(tuple(flat[i + 1 : i + 1 + count]))
            i += 1 + count
        if i != end:
            raise ValueError("a flat row list ends inside a row")
        flat.clear()
        yield rows


def _manifest_parts(batches: Iterator[Any]) -> Iterator[list[tuple[str, Any]]]:
    """Version 6's manifest pieces as version 5's: (repo, {digest: Manifest})."""
    for pieces in batches:
        yield [(repo, manifests_from_flat(flat)) for repo, flat in pieces]


def _repo_parts(section: dict[str, Any], batch: int) -> Iterator[list[tuple[str, Any]]]:
    """{repo: set or dict} as lists of (repo, piece) holding at most `batch` entries in all:
    a small container goes whole, a large one in pieces of its own type."""
    out: list[tuple[str, Any]] = []
    room = batch
    for repo, inner in section.items():
        if len(inner) <= room:
            out.append((repo, inner))
            room -= max(1, len(inner))
        else:
            kind = type(inner)
            entries = iter(inner.items() if isinstance(inner, dict) else inner)
            while piece := kind(islice(entries, room)):
                out.append((repo, piece))
                room -= len(piece)
                if room <= 0:
                    yield out
                    out, room = [], batch
        if room <= 0:
            yield out
            out, room = [], batch
    if out:
        yield out


def _merge_repo_parts(whole: dict[str, Any], batches: Iterator[Any]) -> None:
    """The loading side of `_repo_parts`: a repo's first piece becomes its container."""
    for pieces in batches:
        for repo, piece in pieces:
            have = whole.get(repo)
            if have is None:
                whole[repo] = piece
            else:
                have.update(piece)
