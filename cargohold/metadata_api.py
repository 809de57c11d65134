"""The metadata contract: every command and query of the catalogue (docs/metadata.md), typed.

One frozen request class per op, its result type, and their JSON form: `to_args()` is the
object that travels in `Metadata.Command`/`Query` and sits in the Raft log, `from_args()`
checks and decodes it on the node (refusals are typed errors), `encode_result` /
`decode_result` carry the answer back. `Metadata` is the typed facade over any transport
with the raw `command(op, args)` / `query(op, args, linearizable)` pair (the gateway's
cluster client, the node's Raft member). Wire keys and their order never change: old Raft
logs and snapshots must replay (tests/node/test_metadata_replay.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypedDict, TypeVar

from cargohold.audit import AuditEventInvalid, SegmentInfo, check_event
from cargohold.digests import parse_digest
from cargohold.errors import PaginationInvalid, RequestInvalid
from cargohold.names import validate_name, validate_tag
from cargohold.search import SearchPage, SearchSpec

R = TypeVar("R")
MEMBER_STATES = ("active", "draining", "removed")
_intern = sys.intern

# A chunk reference is `[chunk_hex, length]`; a recipe the ordered chunks of one blob.
Chunk = list[Any]


class Recipe(TypedDict):
    size: int
    chunks: list[Chunk]


class Actor(TypedDict, total=False):
    """Who sent a write command, for the activity log (cargohold/audit.py): the state
    appends the command's audit record in the same apply when a command carries one."""

    time: float
    actor: str
    actor_kind: str  # user | robot | anonymous | admin | system
    client: str
    user_agent: str


# An OCI descriptor of a referrer: {"mediaType", "digest", "size", "artifactType"?, ...}.
Descriptor = dict[str, Any]


# -- argument checks (every failure is a caller bug: RequestInvalid) ----------------------
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


def _strings(args: dict[str, Any], key: str) -> tuple[str, ...]:
    values = _field(args, key, list, optional=True) or []
    if not all(isinstance(v, str) for v in values):
        raise RequestInvalid(f"argument {key!r} must list strings")
    return tuple(values)


def _number(args: dict[str, Any], key: str) -> float:
    return float(_field(args, key, (int, float)))


def _recipe(args: dict[str, Any], key: str = "recipe") -> Recipe:
    """The recipe's shape; the node checks its chunks when it packs them."""
    raw = _field(args, key, dict)
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestInvalid("recipe size must be an int >= 0")
    recipe: Recipe = raw
    return recipe


def _page_args(args: dict[str, Any]) -> tuple[int | None, str | None]:
    n, last = args.get("n"), args.get("last")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise PaginationInvalid(f"n must be an int >= 0, got {n!r}")
    if last is not None and not isinstance(last, str):
        raise RequestInvalid("last must be a string")
    return n, last


def _actor(args: dict[str, Any]) -> Actor | None:
    """The optional actor context of a write command (`"audit"`): who asked, from where."""
    raw = args.get("audit")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RequestInvalid("audit must be an object")
    when = raw.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise RequestInvalid("audit.time must be a number")
    out: Actor = {"time": float(when)}
    for key in ("actor", "actor_kind", "client", "user_agent"):
        value = raw.get(key, "")
        if not isinstance(value, str) or len(value) > 1024:
            raise RequestInvalid(f"audit.{key} must be a short string")
        out[key] = value
    return out


_WIRE_KEYS: dict[type, tuple[tuple[str, str], ...]] = {}


def wire_keys(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute, JSON key) of a request class, in wire order."""
    keys = _WIRE_KEYS.get(cls)
    if keys is None:
        keys = _WIRE_KEYS[cls] = tuple(
            (f.name, f.metadata.get("wire", f.name)) for f in fields(cls)
        )
    return keys


def _wire(name: str) -> Any:
    return field(metadata={"wire": name})


# -- request bases -------------------------------------------------------------------------
class Request(Generic[R]):
    """One op of the catalogue. Subclasses are frozen dataclasses named after the op."""

    __slots__ = ()
    op: ClassVar[str]
    is_command: ClassVar[bool]

    def to_args(self) -> dict[str, Any]:
        """The JSON object that travels (and is journalled) for this request. An absent
        actor context (`audit` None) is left out, so such commands travel as before."""
        args = {key: getattr(self, name) for name, key in wire_keys(type(self))}
        # Absent likewise: older entries.
        for optional in ("audit", "expect", "info", "scan", "reuse_stored"):
            if args.get(optional, True) is None:
                del args[optional]
        return args

    def args_json(self) -> bytes:
        """`to_args()` encoded, for a `MetadataRequest.args`."""
        return json.dumps(self.to_args(), separators=(",", ":")).encode()

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Self:
        """Check and decode the JSON object; RequestInvalid (or a more precise error)."""
        raise NotImplementedError

    @staticmethod
    def encode_result(result: Any) -> Any:
        """The node's typed answer as JSON."""
        return result

    @staticmethod
    def decode_result(raw: Any) -> Any:
        """The JSON answer as the typed result."""
        return raw


class Command(Request[R]):
    """Replicated through Raft; idempotent, so a caller may retry after UNAVAILABLE."""

    __slots__ = ()
    is_command = True


class Query(Request[R]):
    """A read of the applied state."""

    __slots__ = ()
    is_command = False


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """A manifest as `tag_get` / `manifest_get` answer it (callers must not mutate `recipe`)."""

    digest: str
    media_type: str
    size: int
    recipe: Recipe
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "recipe": self.recipe,
            "subject": self.subject,
            "artifact_type": self.artifact_type,
            "annotations": self.annotations,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ManifestInfo:
        return cls(
            digest=raw["digest"],
            media_type=raw["media_type"],
            size=int(raw["size"]),
            recipe=raw["recipe"],
            subject=raw.get("subject"),
            artifact_type=raw.get("artifact_type"),
            annotations=raw.get("annotations"),
        )


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """An upload session: `state` "new" (never seen, or expired) or "open"."""

    state: str
    repo: str | None = None
    size: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    request: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.state != "open":
            return {"state": self.state}
        return {
            "state": self.state,
            "repo": self.repo,
            "size": self.size,
            "chunks": self.chunks,
            "request": self.request,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UploadInfo:
        return cls(
            state=str(raw.get("state")),
            repo=raw.get("repo"),
            size=int(raw.get("size", 0)),
            chunks=[list(c) for c in raw.get("chunks", [])],
            request=raw.get("request"),
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a byte-ordered list; `more` when items follow the last one."""

    items: list[str]
    more: bool


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: str
    grpc: str
    raft: str
    state: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "grpc": self.grpc, "raft": self.raft, "state": self.state}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MemberInfo:
        return cls(
            str(raw["id"]), str(raw["grpc"]), str(raw.get("raft", "")), str(raw.get("state", ""))
        )


@dataclass(frozen=True, slots=True)
class MetadataStatus:
    repos: int
    blobs: int
    manifests: int
    uploads: int
    blob_bytes: int

    def to_json(self) -> dict[str, int]:
        return {
            "repos": self.repos,
            "blobs": self.blobs,
            "manifests": self.manifests,
            "uploads": self.uploads,
            "blob_bytes": self.blob_bytes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MetadataStatus:
        return cls(
            **{k: int(raw[k]) for k in ("repos", "blobs", "manifests", "uploads")},
            blob_bytes=int(raw["blob_bytes"]),
        )


# -- commands --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Barrier(Command[None]):
    """A no-op through Raft: once applied, every earlier command is applied here too."""

    op: ClassVar[str] = "barrier"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Barrier:
        return cls()


@dataclass(frozen=True, slots=True)
class UploadAppend(Command[int]):
    """Append chunks at `offset` of an upload session; answers the new size."""

    op: ClassVar[str] = "upload_append"
    upload: str
    repo: str
    offset: int
    chunks: list[Chunk]
    request: str | None
    now: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> UploadAppend:
        upload = _field(args, "upload", str)
        repo = _repo(args)
        offset = _field(args, "offset", int)
        request = _field(args, "request", str, optional=True)
        now = _number(args, "now")
        return cls(upload, repo, offset, args.get("chunks", []), request, now)

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"size": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["size"])


@dataclass(frozen=True, slots=True)
class UploadCancel(Command[None]):
    op: ClassVar[str] = "upload_cancel"
    upload: str
    now: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> UploadCancel:
        return cls(_field(args, "upload", str), _number(args, "now"))


@dataclass(frozen=True, slots=True)
class BlobCommit(Command[None]):
    """Record a blob's recipe and link it into `repo`, closing `upload` if given."""

    op: ClassVar[str] = "blob_commit"
    repo: str
    digest: str
    recipe: Recipe
    upload: str | None
    now: float
    # Who pushed it: the blob's push record in the activity log (absent: none).
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobCommit:
        repo = _repo(args)
        digest = _digest(args)
        recipe = _recipe(args)
        upload = _field(args, "upload", str, optional=True)
        return cls(repo, digest, recipe, upload, _number(args, "now"), _actor(args))


@dataclass(frozen=True, slots=True)
class BlobMount(Command[bool]):
    """Link a blob of `source` into `repo`; answers whether it is linked now."""

    op: ClassVar[str] = "blob_mount"
    repo: str
    digest: str
    source: str | None = _wire("from")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobMount:
        repo = _repo(args)
        digest = _digest(args)
        return cls(repo, digest, _field(args, "from", str, optional=True))

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"mounted": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("mounted"))


@dataclass(frozen=True, slots=True)
class BlobUnlink(Command[None]):
    op: ClassVar[str] = "blob_unlink"
    repo: str
    digest: str
    # Who deleted it: the blob's delete record in the activity log (absent: none).
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobUnlink:
        repo = _repo(args)
        return cls(repo, _digest(args), _actor(args))


@dataclass(frozen=True, slots=True)
class ManifestPut(Command[None]):
    """Store a manifest (and its bytes as a blob) in `repo`, optionally tagging it."""

    op: ClassVar[str] = "manifest_put"
    repo: str
    digest: str
    media_type: str
    recipe: Recipe
    blobs: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, Any] | None = None
    tag: str | None = None
    now: float | None = None
    # Immutable tag rules of this repository (cargohold/lifecycle_rules.py): `tag` may not
    # move to another manifest when one of them matches it.
    immutable: tuple[str, ...] = ()
    audit: Actor | None = None
    # What search indexes beyond the manifest itself (`image_info`): platforms and config
    # labels the gateway read from the config blob or the index body. Absent in older
    # log entries and for artifacts.
    info: dict[str, Any] | None = None
    # Queue the manifest for the SBOM scanner (node/metadata/scans.py); None (left out of
    # the JSON, as in logs written before scanning existed) = no.
    scan: bool | None = None
    # True: the gateway did not write the bytes (it believes them stored) and the apply
    # refuses (`ManifestBytesNotStored`, state unchanged) unless `digest` is recorded in
    # `blobs` with exactly `recipe`. None (left out of the JSON, as in older log entries) =
    # the bytes were written for this command, as always before.
    reuse_stored: bool | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ManifestPut:
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
        now = args.get("now")
        return cls(
            repo,
            digest,
            media_type,
            recipe,
            blobs,
            children,
            subject,
            _intern(artifact_type) if artifact_type else None,
            annotations,
            tag,
            float(now) if isinstance(now, (int, float)) and not isinstance(now, bool) else None,
            _strings(args, "immutable"),
            _actor(args),
            image_info(args.get("info")),
            _field(args, "scan", bool, optional=True),
            _field(args, "reuse_stored", bool, optional=True),
        )


# Bounds of a manifest's `info` (it sits in every node's RAM: docs/search.md).
MAX_INFO_PLATFORMS = 32
MAX_INFO_LABELS = 64
MAX_INFO_LABEL = 256
MAX_INFO_JSON = 4096


def image_info(raw: Any) -> dict[str, Any] | None:
    """A checked `info` object: {"platforms": ["os/arch[/variant]", ...], "labels":
    {str: str}}, within the bounds above; None when absent or empty."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"platforms", "labels"}:
        raise RequestInvalid("info takes only platforms and labels")
    platforms = raw.get("platforms") or []
    labels = raw.get("labels") or {}
    if (
        not isinstance(platforms, list)
        or len(platforms) > MAX_INFO_PLATFORMS
        or not all(isinstance(p, str) and 0 < len(p) <= 100 for p in platforms)
    ):
        raise RequestInvalid(f"info platforms: at most {MAX_INFO_PLATFORMS} os/arch strings")
    if (
        not isinstance(labels, dict)
        or len(labels) > MAX_INFO_LABELS
        or not all(
            isinstance(k, str)
            and isinstance(v, str)
            and 0 < len(k) <= MAX_INFO_LABEL
            and len(v) <= MAX_INFO_LABEL
            for k, v in labels.items()
        )
    ):
        raise RequestInvalid(f"info labels: at most {MAX_INFO_LABELS} short strings")
    out: dict[str, Any] = {}
    if platforms:
        out["platforms"] = sorted(set(platforms))
    if labels:
        out["labels"] = dict(sorted(labels.items()))
    if len(json.dumps(out)) > MAX_INFO_JSON:
        raise RequestInvalid(f"info larger than {MAX_INFO_JSON} bytes")
    return out or None


def _expect(args: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The optional `expect` object of a delete (retention's guard against a concurrent
    push): only `keys`, each a value or null."""
    value = _field(args, "expect", dict, optional=True)
    if value is not None and set(value) - set(keys):
        raise RequestInvalid(f"expect takes only {', '.join(keys)}")
    return value


def _trash_args(args: dict[str, Any]) -> tuple[float | None, bool]:
    """(now, trash) of a delete: `trash` true keeps what it removes restorable (in the
    trash, node/metadata/trash.py) and needs `now`; absent (older log entries) is false."""
    trash = bool(_field(args, "trash", bool, optional=True))
    now = _number(args, "now") if trash or args.get("now") is not None else None
    return now, trash


@dataclass(frozen=True, slots=True)
class TagDelete(Command[None]):
    op: ClassVar[str] = "tag_delete"
    repo: str
    tag: str
    immutable: tuple[str, ...] = ()
    audit: Actor | None = None
    # Retention: {"digest": d, "pushed": t or null} -- refused (Conflict) unless the tag
    # still points to `digest` and was last pushed at `pushed`. None = no condition.
    expect: dict[str, Any] | None = None
    now: float | None = None
    trash: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TagDelete:
        repo = _repo(args)
        return cls(
            repo,
            _field(args, "tag", str),
            _strings(args, "immutable"),
            _actor(args),
            _expect(args, ("digest", "pushed")),
            *_trash_args(args),
        )


@dataclass(frozen=True, slots=True)
class ManifestDelete(Command[None]):
    op: ClassVar[str] = "manifest_delete"
    repo: str
    digest: str
    immutable: tuple[str, ...] = ()
    audit: Actor | None = None
    # Retention: {"tags": [tag, ...], "pushed": t or null, "pulled": t or null} -- refused
    # (Conflict) unless the manifest has exactly these tags and these push/pull times.
    expect: dict[str, Any] | None = None
    now: float | None = None
    trash: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ManifestDelete:
        repo = _repo(args)
        return cls(
            repo,
            _digest(args),
            _strings(args, "immutable"),
            _actor(args),
            _expect(args, ("tags", "pushed", "pulled")),
            *_trash_args(args),
        )


@dataclass(frozen=True, slots=True)
class MemberJoin(Command[None]):
    """A node (re)announces its addresses; an operator's state for it stays."""

    op: ClassVar[str] = "member_join"
    node_id: str = _wire("id")
    grpc: str = _wire("grpc")
    raft: str = _wire("raft")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> MemberJoin:
        node_id = _intern(_field(args, "id", str))
        return cls(node_id, _field(args, "grpc", str), _field(args, "raft", str))


@dataclass(frozen=True, slots=True)
class MemberSetState(Command[None]):
    op: ClassVar[str] = "member_set_state"
    node_id: str = _wire("id")
    state: str = _wire("state")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> MemberSetState:
        node_id = _field(args, "id", str)
        state = _field(args, "state", str)
        if state not in MEMBER_STATES:
            raise RequestInvalid(f"member state must be one of {MEMBER_STATES}")
        return cls(node_id, state)


@dataclass(frozen=True, slots=True)
class ExpireUploads(Command[int]):
    """Forget sessions last touched (or closed) before `now - older_than`; answers how many."""

    op: ClassVar[str] = "expire_uploads"
    now: float
    older_than: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ExpireUploads:
        return cls(_number(args, "now"), _number(args, "older_than"))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"expired": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["expired"]) if raw else 0


@dataclass(frozen=True, slots=True)
class GcPrune(Command[int]):
    """Garbage collection: forget the recipes of these blobs where no repository links them
    (checked when applied); answers how many were forgotten."""

    op: ClassVar[str] = "gc_prune"
    blobs: tuple[str, ...]

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GcPrune:
        return cls(_digests(args, "blobs"))

    def to_args(self) -> dict[str, Any]:
        return {"blobs": list(self.blobs)}

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"pruned": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["pruned"]) if raw else 0


# -- pull times (gateway/pull_events.py batches them; retention reads them) -----------------
class PullEvent(NamedTuple):
    """One manifest GET as a gateway saw it (a row of `pull_record`), or a blob's GET from
    its first byte: then `blob_size` is the blob's size (an eighth element, left out of a
    manifest's row so rows read as before)."""

    repo: str
    digest: str
    tag: str | None
    time: float
    actor: str | None
    addr: str | None
    user_agent: str | None
    blob_size: int | None = None

    def row(self) -> list[Any]:
        return list(self) if self.blob_size is not None else list(self)[:7]


def _opt_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RequestInvalid(f"pull event {what} must be a string or null")
    return value


def _pull_event(row: Any) -> PullEvent:
    if not isinstance(row, (list, tuple)) or len(row) not in (7, 8):
        raise RequestInvalid(
            "a pull event is [repo, digest, tag, time, actor, addr, user_agent, blob_size?]"
        )
    repo, digest, tag, when, actor, addr, agent = row[:7]
    blob_size = row[7] if len(row) == 8 else None
    if blob_size is not None and (
        not isinstance(blob_size, int) or isinstance(blob_size, bool) or blob_size < 0
    ):
        raise RequestInvalid("pull event blob_size must be an int >= 0")
    if not isinstance(repo, str) or not isinstance(digest, str):
        raise RequestInvalid("pull event repo and digest must be strings")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise RequestInvalid("pull event time must be a number")
    validate_name(repo)
    parse_digest(digest)
    return PullEvent(
        _intern(repo),
        _intern(digest),
        _opt_str(tag, "tag"),
        float(when),
        _opt_str(actor, "actor"),
        _opt_str(addr, "addr"),
        _opt_str(agent, "user_agent"),
        blob_size,
    )


class _Recorded(Command[int]):
    """A command that answers how many of its entries it recorded: `{"recorded": n}`."""

    __slots__ = ()

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"recorded": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["recorded"]) if raw else 0


@dataclass(frozen=True, slots=True)
class PullRecord(_Recorded):
    """A gateway's batch of manifest pulls: each raises the "last pulled" time of its
    (repo, digest) when that manifest is present (never lowers it; idempotent). Answers how
    many events named a present manifest."""

    op: ClassVar[str] = "pull_record"
    pulls: tuple[PullEvent, ...]

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> PullRecord:
        rows = _field(args, "pulls", list)
        return cls(tuple(_pull_event(row) for row in rows))

    def to_args(self) -> dict[str, Any]:
        return {"pulls": [event.row() for event in self.pulls]}


@dataclass(frozen=True, slots=True)
class TrashRestored:
    """What a `trash_restore` put back: manifests (the asked one and index children) and
    tags."""

    manifests: list[str]
    tags: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {"manifests": self.manifests, "tags": self.tags}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrashRestored:
        return cls(list(raw.get("manifests") or []), list(raw.get("tags") or []))


@dataclass(frozen=True, slots=True)
class TrashRestore(Command[TrashRestored]):
    """Put a deleted manifest (`digest`, with the trashed tags that pointed at it) or a
    deleted tag (`tag`, with its manifest if that is in the trash too) back into `repo`.
    A tag that now points elsewhere is moved back only with `force` (and never against one
    of the `immutable` rules); an index needs its children present or in the trash."""

    op: ClassVar[str] = "trash_restore"
    repo: str
    digest: str | None = None
    tag: str | None = None
    force: bool = False
    immutable: tuple[str, ...] = ()
    now: float | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrashRestore:
        repo = _repo(args)
        digest = _digest(args) if args.get("digest") is not None else None
        tag = _field(args, "tag", str, optional=True)
        if (digest is None) == (tag is None):
            raise RequestInvalid("trash_restore names exactly one of digest and tag")
        if tag is not None:
            tag = _intern(validate_tag(tag))
        force = bool(_field(args, "force", bool, optional=True))
        now = _number(args, "now") if args.get("now") is not None else None
        return cls(repo, digest, tag, force, _strings(args, "immutable"), now, _actor(args))

    @staticmethod
    def encode_result(result: TrashRestored) -> dict[str, list[str]]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> TrashRestored:
        return TrashRestored.from_json(raw or {})


@dataclass(frozen=True, slots=True)
class TrashPurge(Command[int]):
    """Forget what was put in the trash at or before `now - older_than` (in `repo` only,
    if given): its blobs are garbage from then on. Answers how many manifests and tags."""

    op: ClassVar[str] = "trash_purge"
    now: float
    older_than: float
    repo: str | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrashPurge:
        repo = _repo(args) if args.get("repo") is not None else None
        return cls(_number(args, "now"), _number(args, "older_than"), repo, _actor(args))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"purged": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["purged"]) if raw else 0


# -- registry users, namespaces and roles (gateway/auth/directory.py reads them) -----------
ROLES = ("admin", "maintainer", "developer", "reader")
VISIBILITIES = ("private", "public")
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _user(args: dict[str, Any], key: str = "name") -> str:
    value = _field(args, key, str)
    if not _USER_NAME.fullmatch(value):
        raise RequestInvalid(f"invalid user name {value!r}: [a-z0-9][a-z0-9._-]{{0,63}}")
    return value


def _optional_bool(args: dict[str, Any], key: str) -> bool | None:
    value = _field(args, key, bool, optional=True)
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class UserPut(Command[None]):
    """Create a user (a bcrypt `password_hash` is then required) or change one: a new hash,
    disabled or not, cluster admin or not (None keeps the current value)."""

    op: ClassVar[str] = "user_put"
    name: str
    password_hash: str | None = None
    disabled: bool | None = None
    admin: bool | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> UserPut:
        hashed = _field(args, "password_hash", str, optional=True)
        if hashed is not None and not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise RequestInvalid("password_hash must be a bcrypt hash")
        return cls(
            _user(args),
            hashed,
            _optional_bool(args, "disabled"),
            _optional_bool(args, "admin"),
            _actor(args),
        )


@dataclass(frozen=True, slots=True)
class NamespacePut(Command[None]):
    """Create a namespace (a repository-name prefix) or change its visibility."""

    op: ClassVar[str] = "namespace_put"
    name: str
    visibility: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> NamespacePut:
        visibility = _field(args, "visibility", str)
        if visibility not in VISIBILITIES:
            raise RequestInvalid(f"visibility must be one of {', '.join(VISIBILITIES)}")
        return cls(validate_name(_field(args, "name", str)), visibility, _actor(args))


@dataclass(frozen=True, slots=True)
class GrantSet(Command[None]):
    """Give `user` `role` in `namespace`; role None revokes. NotFound for an unknown user
    or namespace."""

    op: ClassVar[str] = "grant_set"
    namespace: str
    user: str
    role: str | None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GrantSet:
        role = _field(args, "role", str, optional=True)
        if role is not None and role not in ROLES:
            raise RequestInvalid(f"role must be one of {', '.join(ROLES)}")
        return cls(
            validate_name(_field(args, "namespace", str)),
            _user(args, "user"),
            role,
            _actor(args),
        )


GROUP_PREFIX = "group:"
ROBOT_PREFIX = "robot$"
ROBOT_ACTIONS = ("pull", "push", "delete")


def _group(args: dict[str, Any], key: str = "name") -> str:
    value = _field(args, key, str)
    if not _USER_NAME.fullmatch(value):
        raise RequestInvalid(f"invalid group name {value!r}: [a-z0-9][a-z0-9._-]{{0,63}}")
    return value


def _robot(args: dict[str, Any], key: str = "name") -> str:
    value = _field(args, key, str)
    if not _USER_NAME.fullmatch(value):
        raise RequestInvalid(
            f"invalid robot name {value!r}: [a-z0-9][a-z0-9._-]{{0,63}} "
            f"(it logs in as {ROBOT_PREFIX}<name>)"
        )
    return value


def _bcrypt(args: dict[str, Any], key: str, optional: bool = False) -> str | None:
    hashed = _field(args, key, str, optional=optional)
    if hashed is not None and not hashed.startswith(("$2a$", "$2b$", "$2y$")):
        raise RequestInvalid(f"{key} must be a bcrypt hash")
    return hashed


def _role(args: dict[str, Any]) -> str | None:
    role = _field(args, "role", str, optional=True)
    if role is not None and role not in ROLES:
        raise RequestInvalid(f"role must be one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True, slots=True)
class GroupPut(Command[None]):
    """Create a group of users (no members); an existing group is left as it is."""

    op: ClassVar[str] = "group_put"
    name: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GroupPut:
        return cls(_group(args), _actor(args))


@dataclass(frozen=True, slots=True)
class GroupDelete(Command[bool]):
    """Delete a group and every grant naming it; `deleted` False when there was none."""

    op: ClassVar[str] = "group_delete"
    name: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GroupDelete:
        return cls(_group(args), _actor(args))

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"deleted": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("deleted"))


@dataclass(frozen=True, slots=True)
class GroupMemberSet(Command[None]):
    """Add `user` to `group` (member true) or remove them (false). NotFound for an unknown
    group, or an unknown user being added."""

    op: ClassVar[str] = "group_member_set"
    group: str
    user: str
    member: bool
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GroupMemberSet:
        return cls(
            _group(args, "group"), _user(args, "user"), _field(args, "member", bool), _actor(args)
        )


@dataclass(frozen=True, slots=True)
class GroupGrantSet(Command[None]):
    """Give every member of `group` `role` in `namespace`; role None revokes. NotFound for
    an unknown group or namespace."""

    op: ClassVar[str] = "group_grant_set"
    namespace: str
    group: str
    role: str | None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GroupGrantSet:
        namespace = validate_name(_field(args, "namespace", str))
        return cls(namespace, _group(args, "group"), _role(args), _actor(args))


def _permissions(args: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    raw = _field(args, "permissions", list)
    out: dict[str, tuple[str, ...]] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            raise RequestInvalid("permissions must list {namespace, actions} objects")
        namespace = validate_name(_field(entry, "namespace", str))
        actions = _field(entry, "actions", list)
        if not actions or not all(a in ROBOT_ACTIONS for a in actions):
            raise RequestInvalid(f"robot actions must be some of {', '.join(ROBOT_ACTIONS)}")
        out[namespace] = tuple(a for a in ROBOT_ACTIONS if a in actions)
    if not out:
        raise RequestInvalid("a robot needs at least one namespace permission")
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class RobotPut(Command[None]):
    """Create (or replace) robot account `name` (it logs in as `robot$<name>`): the bcrypt
    hash of its secret, when it expires (unix time; None: never), and the actions it may
    take per namespace. NotFound for an unknown namespace."""

    op: ClassVar[str] = "robot_put"
    name: str
    secret_hash: str
    expires_at: float | None
    permissions: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    created_at: float
    audit: Actor | None = None

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "name": self.name,
            "secret_hash": self.secret_hash,
            "expires_at": self.expires_at,
            "permissions": [{"namespace": n, "actions": list(a)} for n, a in self.permissions],
            "description": self.description,
            "created_at": self.created_at,
        }
        if self.audit is not None:
            args["audit"] = self.audit
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RobotPut:
        expires = _field(args, "expires_at", (int, float), optional=True)
        secret_hash = _bcrypt(args, "secret_hash")
        assert secret_hash is not None
        return cls(
            _robot(args),
            secret_hash,
            None if expires is None else float(expires),
            _permissions(args),
            _field(args, "description", str, optional=True) or "",
            _number(args, "created_at"),
            _actor(args),
        )


@dataclass(frozen=True, slots=True)
class RobotDelete(Command[bool]):
    """Delete (revoke) robot account `name`; `deleted` False when there was none."""

    op: ClassVar[str] = "robot_delete"
    name: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RobotDelete:
        return cls(_robot(args), _actor(args))

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"deleted": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("deleted"))


# Signature trust (docs/security.md "Signed images"): verification keys and the pull policy
# of a namespace. The state stores the PEM text; the admin surface checks it parses.
TRUST_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_TRUST_KEY_PEM = 16 * 1024


def _trust_key_name(args: dict[str, Any]) -> str:
    name = _field(args, "name", str)
    if not TRUST_KEY_NAME.fullmatch(name):
        raise RequestInvalid("key name must match [a-z0-9][a-z0-9._-]{0,63}")
    return name


@dataclass(frozen=True, slots=True)
class TrustKeyPut(Command[None]):
    """Register (pem) or remove (pem None) signature verification key `name` of namespace
    `namespace`. NotFound for an unknown namespace, or removing a key it does not hold."""

    op: ClassVar[str] = "trust_key_put"
    namespace: str
    name: str
    pem: str | None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrustKeyPut:
        pem = _field(args, "pem", str, optional=True)
        if pem is not None and (
            len(pem) > MAX_TRUST_KEY_PEM or not pem.lstrip().startswith("-----BEGIN PUBLIC KEY")
        ):
            raise RequestInvalid(f"pem must be a PEM public key of at most {MAX_TRUST_KEY_PEM} B")
        return cls(
            validate_name(_field(args, "namespace", str)), _trust_key_name(args), pem, _actor(args)
        )


@dataclass(frozen=True, slots=True)
class PullPolicyPut(Command[None]):
    """Set the pull policy of namespace `namespace`: with `require_signature`, a manifest
    pulled from it must carry a valid signature by one of its keys. NotFound for an unknown
    namespace."""

    op: ClassVar[str] = "pull_policy_put"
    namespace: str
    require_signature: bool
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> PullPolicyPut:
        return cls(
            validate_name(_field(args, "namespace", str)),
            _field(args, "require_signature", bool),
            _actor(args),
        )


@dataclass(frozen=True, slots=True)
class TrustInfo:
    """A namespace's verification keys (name -> PEM) and pull policy."""

    namespace: str
    keys: dict[str, str]
    require_signature: bool
    # The vulnerability policy (docs/supply-chain.md): refuse images with a finding at or
    # above `block_severity` ("none": off) not in `allowlist`; `unscanned` allow|deny.
    block_severity: str = "none"
    allowlist: tuple[str, ...] = ()
    unscanned: str = "allow"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "keys": dict(self.keys),
            "require_signature": self.require_signature,
        }
        if (self.block_severity, self.allowlist, self.unscanned) != ("none", (), "allow"):
            out.update(
                block_severity=self.block_severity,
                allowlist=list(self.allowlist),
                unscanned=self.unscanned,
            )
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrustInfo:
        return cls(
            raw["namespace"],
            dict(raw.get("keys") or {}),
            bool(raw["require_signature"]),
            str(raw.get("block_severity") or "none"),
            tuple(raw.get("allowlist") or ()),
            str(raw.get("unscanned") or "allow"),
        )


# Vulnerability matching (docs/supply-chain.md): the pull policy's thresholds, and the
# offline OSV database's pointer (its compact index is a blob held by this pointer).
BLOCK_SEVERITIES = ("critical", "high", "medium", "low", "unknown", "none")
UNSCANNED_RULES = ("allow", "deny")
VULN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
MAX_ALLOWLIST = 1000


@dataclass(frozen=True, slots=True)
class VulnPolicyPut(Command[None]):
    """Set the vulnerability pull policy of namespace `namespace`. NotFound for an unknown
    namespace."""

    op: ClassVar[str] = "vuln_policy_put"
    namespace: str
    block_severity: str
    allowlist: tuple[str, ...] = ()
    unscanned: str = "allow"
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> VulnPolicyPut:
        block = _field(args, "block_severity", str)
        if block not in BLOCK_SEVERITIES:
            raise RequestInvalid(f"block_severity must be one of {', '.join(BLOCK_SEVERITIES)}")
        unscanned = _field(args, "unscanned", str, optional=True) or "allow"
        if unscanned not in UNSCANNED_RULES:
            raise RequestInvalid("unscanned must be allow or deny")
        allowlist = _strings(args, "allowlist")
        if len(allowlist) > MAX_ALLOWLIST or not all(VULN_ID.fullmatch(a) for a in allowlist):
            raise RequestInvalid(
                f"allowlist: at most {MAX_ALLOWLIST} advisory ids ({VULN_ID.pattern})"
            )
        namespace = validate_name(_field(args, "namespace", str))
        return cls(namespace, block, tuple(sorted(set(allowlist))), unscanned, _actor(args))


@dataclass(frozen=True, slots=True)
class VulnDbInfo:
    """The current vulnerability database: its compact index blob and where it came from."""

    generation: int  # 1 for the first import, +1 per import
    digest: str
    recipe: Recipe
    imported_at: float
    source: str
    stats: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "digest": self.digest,
            "recipe": self.recipe,
            "imported_at": self.imported_at,
            "source": self.source,
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VulnDbInfo:
        return cls(
            int(raw["generation"]),
            raw["digest"],
            raw["recipe"],
            float(raw["imported_at"]),
            str(raw.get("source") or ""),
            dict(raw.get("stats") or {}),
        )


@dataclass(frozen=True, slots=True)
class VulndbPut(Command[int]):
    """Make blob `digest` (its recipe given: it is recorded like a committed blob, linked to
    no repository, and held from GC while it is current) the vulnerability database;
    answers its generation. Putting the current digest again changes nothing."""

    op: ClassVar[str] = "vulndb_put"
    digest: str
    recipe: Recipe
    now: float
    source: str = ""
    stats: dict[str, Any] | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> VulndbPut:
        source = _field(args, "source", str, optional=True) or ""
        stats = _field(args, "stats", dict, optional=True) or {}
        if len(source) > 1024 or len(json.dumps(stats)) > 16 * 1024:
            raise RequestInvalid("source or stats too large")
        now = _number(args, "now")
        return cls(_digest(args), _recipe(args), now, source, stats, _actor(args))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"generation": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["generation"])


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    members: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "members": list(self.members)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GroupInfo:
        return cls(raw["name"], list(raw.get("members") or []))


@dataclass(frozen=True, slots=True)
class RobotInfo:
    name: str  # without the robot$ prefix
    secret_hash: str
    expires_at: float | None
    permissions: dict[str, list[str]]  # namespace -> actions
    description: str
    created_at: float

    @property
    def login(self) -> str:
        return ROBOT_PREFIX + self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "secret_hash": self.secret_hash,
            "expires_at": self.expires_at,
            "permissions": {n: list(a) for n, a in self.permissions.items()},
            "description": self.description,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RobotInfo:
        expires = raw.get("expires_at")
        return cls(
            raw["name"],
            raw["secret_hash"],
            None if expires is None else float(expires),
            {n: list(a) for n, a in (raw.get("permissions") or {}).items()},
            str(raw.get("description") or ""),
            float(raw.get("created_at") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    password_hash: str
    disabled: bool
    admin: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "password_hash": self.password_hash,
            "disabled": self.disabled,
            "admin": self.admin,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UserInfo:
        return cls(raw["name"], raw["password_hash"], bool(raw["disabled"]), bool(raw["admin"]))


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    visibility: str
    grants: dict[str, str]  # user -> role
    group_grants: dict[str, str] = field(default_factory=dict)  # group -> role

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "visibility": self.visibility,
            "grants": dict(self.grants),
            "group_grants": dict(self.group_grants),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NamespaceInfo:
        return cls(
            raw["name"],
            raw["visibility"],
            dict(raw.get("grants") or {}),
            dict(raw.get("group_grants") or {}),
        )


@dataclass(frozen=True, slots=True)
class AccessData:
    users: list[UserInfo]
    namespaces: list[NamespaceInfo]
    groups: list[GroupInfo] = field(default_factory=list)
    robots: list[RobotInfo] = field(default_factory=list)


# -- the activity log (cargohold/audit.py; docs/security.md "Activity log") ---------------
def _seq(args: dict[str, Any], key: str) -> int:
    value = _field(args, key, int)
    if value < 0:
        raise RequestInvalid(f"{key} must be >= 0")
    return int(value)


@dataclass(frozen=True, slots=True)
class AuditAppend(Command[int]):
    """Append events (a gateway's batch: pulls, logins, denials, ...) to the activity log;
    the state numbers and chains them. Answers the seq of the last one (the head)."""

    op: ClassVar[str] = "audit_append"
    events: list[list[Any]]

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AuditAppend:
        events = _field(args, "events", list)
        try:
            return cls([check_event(e) for e in events])
        except AuditEventInvalid as exc:
            raise RequestInvalid(str(exc)) from None

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"seq": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["seq"]) if raw else 0


@dataclass(frozen=True, slots=True)
class AuditSeal(Command[bool]):
    """Seal the oldest in-memory records `first`..`last` into a segment stored as the blob
    `digest` (its chunks: `recipe`); the state checks the digest against the records,
    records the segment and drops them. Answers False when already sealed."""

    op: ClassVar[str] = "audit_seal"
    first: int
    last: int
    digest: str
    recipe: Recipe
    now: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AuditSeal:
        return cls(
            _seq(args, "first"),
            _seq(args, "last"),
            _digest(args),
            _recipe(args),
            _number(args, "now"),
        )

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"sealed": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("sealed"))


@dataclass(frozen=True, slots=True)
class AuditExpire(Command[int]):
    """Retention: forget the oldest sealed segments whose last record is older than
    `before` (their chunks become garbage); the chain's base moves past them."""

    op: ClassVar[str] = "audit_expire"
    before: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AuditExpire:
        return cls(_number(args, "before"))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"expired": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["expired"]) if raw else 0


@dataclass(frozen=True, slots=True)
class AuditHeadInfo:
    """The chain as the state holds it: where the retained chain starts (`base_*`), the
    sealed segments, the first in-memory seq and the head."""

    head_seq: int
    head_hash: str
    base_seq: int
    base_hash: str
    tail_first: int
    segments: list[SegmentInfo]
    segment_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "base_seq": self.base_seq,
            "base_hash": self.base_hash,
            "tail_first": self.tail_first,
            "segments": [s.to_json() for s in self.segments],
            "segment_count": self.segment_count,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AuditHeadInfo:
        return cls(
            int(raw["head_seq"]),
            str(raw["head_hash"]),
            int(raw["base_seq"]),
            str(raw["base_hash"]),
            int(raw["tail_first"]),
            [SegmentInfo.from_json(s) for s in raw.get("segments", [])],
            int(raw.get("segment_count", len(raw.get("segments", [])))),
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """Canonical record lines (exactly as hashed) and whether more follow."""

    lines: list[str]
    more: bool


# -- queries ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TagGet(Query[ManifestInfo]):
    op: ClassVar[str] = "tag_get"
    repo: str
    tag: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TagGet:
        repo = _field(args, "repo", str)
        return cls(repo, _field(args, "tag", str))

    @staticmethod
    def encode_result(result: ManifestInfo) -> dict[str, Any]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> ManifestInfo:
        return ManifestInfo.from_json(raw)


@dataclass(frozen=True, slots=True)
class ManifestGet(Query[ManifestInfo]):
    op: ClassVar[str] = "manifest_get"
    repo: str
    digest: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ManifestGet:
        repo = _field(args, "repo", str)
        return cls(repo, _field(args, "digest", str))

    @staticmethod
    def encode_result(result: ManifestInfo) -> dict[str, Any]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> ManifestInfo:
        return ManifestInfo.from_json(raw)


@dataclass(frozen=True, slots=True)
class BlobGet(Query[Recipe]):
    """A blob's recipe, if it is linked in `repo`."""

    op: ClassVar[str] = "blob_get"
    repo: str
    digest: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobGet:
        repo = _field(args, "repo", str)
        return cls(repo, _field(args, "digest", str))


@dataclass(frozen=True, slots=True)
class BlobRecipe(Query[Recipe]):
    """The recipe recorded for `digest`, whichever repositories link it (gateways verify
    it after a `RecipeConflict`)."""

    op: ClassVar[str] = "blob_recipe"
    digest: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobRecipe:
        return cls(_field(args, "digest", str))


@dataclass(frozen=True, slots=True)
class UploadGet(Query[UploadInfo]):
    op: ClassVar[str] = "upload_get"
    upload: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> UploadGet:
        return cls(_field(args, "upload", str))

    @staticmethod
    def encode_result(result: UploadInfo) -> dict[str, Any]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> UploadInfo:
        return UploadInfo.from_json(raw)


@dataclass(frozen=True, slots=True)
class TagsList(Query[Page]):
    op: ClassVar[str] = "tags_list"
    repo: str
    n: int | None = None
    last: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TagsList:
        repo = _field(args, "repo", str)
        return cls(repo, *_page_args(args))

    @staticmethod
    def encode_result(result: Page) -> dict[str, Any]:
        return {"tags": result.items, "more": result.more}

    @staticmethod
    def decode_result(raw: Any) -> Page:
        return Page(list(raw["tags"]), bool(raw.get("more")))


@dataclass(frozen=True, slots=True)
class Catalog(Query[Page]):
    op: ClassVar[str] = "catalog"
    n: int | None = None
    last: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Catalog:
        return cls(*_page_args(args))

    @staticmethod
    def encode_result(result: Page) -> dict[str, Any]:
        return {"repositories": result.items, "more": result.more}

    @staticmethod
    def decode_result(raw: Any) -> Page:
        return Page(list(raw["repositories"]), bool(raw.get("more")))


@dataclass(frozen=True, slots=True)
class Referrers(Query[list[Descriptor]]):
    """Descriptors of the manifests in `repo` whose subject is `digest`."""

    op: ClassVar[str] = "referrers"
    repo: str
    digest: str
    artifact_type: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Referrers:
        repo = _field(args, "repo", str)
        digest = _field(args, "digest", str)
        return cls(repo, digest, _field(args, "artifact_type", str, optional=True))

    @staticmethod
    def encode_result(result: list[Descriptor]) -> dict[str, Any]:
        return {"manifests": result}

    @staticmethod
    def decode_result(raw: Any) -> list[Descriptor]:
        return list(raw.get("manifests") or [])


@dataclass(frozen=True, slots=True)
class Members(Query[list[MemberInfo]]):
    op: ClassVar[str] = "members"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Members:
        return cls()

    @staticmethod
    def encode_result(result: list[MemberInfo]) -> list[dict[str, str]]:
        return [m.to_json() for m in result]

    @staticmethod
    def decode_result(raw: Any) -> list[MemberInfo]:
        return [MemberInfo.from_json(m) for m in raw or []]


@dataclass(frozen=True, slots=True)
class Status(Query[MetadataStatus]):
    op: ClassVar[str] = "status"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Status:
        return cls()

    @staticmethod
    def encode_result(result: MetadataStatus) -> dict[str, int]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> MetadataStatus:
        return MetadataStatus.from_json(raw)


@dataclass(frozen=True, slots=True)
class AccessList(Query[AccessData]):
    """Every user (with its password hash), namespace (with its grants), group (with its
    members) and robot account (with its secret's hash), by name."""

    op: ClassVar[str] = "access_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AccessList:
        return cls()

    @staticmethod
    def encode_result(result: AccessData) -> dict[str, Any]:
        return {
            "users": [u.to_json() for u in result.users],
            "namespaces": [n.to_json() for n in result.namespaces],
            "groups": [g.to_json() for g in result.groups],
            "robots": [r.to_json() for r in result.robots],
        }

    @staticmethod
    def decode_result(raw: Any) -> AccessData:
        raw = raw or {}
        return AccessData(
            [UserInfo.from_json(u) for u in raw.get("users", [])],
            [NamespaceInfo.from_json(n) for n in raw.get("namespaces", [])],
            [GroupInfo.from_json(g) for g in raw.get("groups", [])],
            [RobotInfo.from_json(r) for r in raw.get("robots", [])],
        )


@dataclass(frozen=True, slots=True)
class _Revision(Query[str]):
    """A node's revision of something: an opaque "<epoch>.<count>" string, no arguments."""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Self:
        return cls()

    @staticmethod
    def encode_result(result: str) -> dict[str, str]:
        return {"revision": result}

    @staticmethod
    def decode_result(raw: Any) -> str:
        return str(raw["revision"]) if raw else ""


@dataclass(frozen=True, slots=True)
class AccessRevision(_Revision):
    """The answering node's access-directory revision: an opaque string that changes
    whenever what `access_list` answers may have changed there (gateway/auth/revision.py
    compares it with the revision its cached directory was read at)."""

    op: ClassVar[str] = "access_revision"


@dataclass(frozen=True, slots=True)
class UnlinkRevision(_Revision):
    """The answering node's unlink revision: an opaque string that changes whenever a blob
    link or a manifest was removed there (`UNLINKS`). A gateway holding an access lease
    trusts the links and manifests it confirmed while the leader's unlink revision stays
    what it was then (gateway/manifest_cache.py `RecordCache`)."""

    op: ClassVar[str] = "unlink_revision"


@dataclass(frozen=True, slots=True)
class AccessFence(Query[None]):
    """Answered by the Raft leader once every access change and unlink acknowledged before
    it is applied there and every gateway holding an access lease has been told (or its
    lease has run out): node/metadata/access_leases.py. `Metadata.call` runs it after each
    access change and unlink before returning, so "acknowledged" means "enforced by every
    gateway". A node without leases (a lone state) answers at once."""

    op: ClassVar[str] = "access_fence"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AccessFence:
        return cls()


@dataclass(frozen=True, slots=True)
class AuditHead(Query[AuditHeadInfo]):
    """The chain's head and its sealed segments, oldest first: at most `segments` of them
    (None: all; the sealer asks for 1, not for a list that grows with the log)."""

    op: ClassVar[str] = "audit_head"
    segments: int | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AuditHead:
        limit = args.get("segments")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise RequestInvalid("segments must be an int or null")
        return cls(limit)

    @staticmethod
    def encode_result(result: AuditHeadInfo) -> dict[str, Any]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> AuditHeadInfo:
        return AuditHeadInfo.from_json(raw)


@dataclass(frozen=True, slots=True)
class AuditTail(Query[AuditPage]):
    """In-memory records with seq > `after`, at most `n` (default and cap: 10000)."""

    op: ClassVar[str] = "audit_tail"
    after: int = 0
    n: int | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AuditTail:
        n, _ = _page_args(args)
        after = args.get("after") or 0
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise RequestInvalid("after must be an int >= 0")
        return cls(after, n)

    @staticmethod
    def encode_result(result: AuditPage) -> dict[str, Any]:
        return {"records": result.lines, "more": result.more}

    @staticmethod
    def decode_result(raw: Any) -> AuditPage:
        return AuditPage(list(raw["records"]), bool(raw.get("more")))


# -- storage quotas per namespace (node/metadata/quotas.py) ----------------------------------
@dataclass(frozen=True, slots=True)
class QuotaSet(Command[None]):
    """Set the storage quota of a namespace (a repository-name prefix) to `limit` bytes;
    None removes it. Independent of the access namespaces of `namespace_put`."""

    op: ClassVar[str] = "quota_set"
    namespace: str
    limit: int | None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> QuotaSet:
        limit = _field(args, "limit", int, optional=True)
        if limit is not None and limit < 0:
            raise RequestInvalid("limit must be an int >= 0 or null")
        return cls(_intern(validate_name(_field(args, "namespace", str))), limit, _actor(args))


@dataclass(frozen=True, slots=True)
class QuotaInfo:
    namespace: str
    limit: int
    used: int  # bytes, each digest counted once in the namespace
    blobs: int  # distinct digests linked in the namespace

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "limit": self.limit,
            "used": self.used,
            "blobs": self.blobs,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> QuotaInfo:
        return cls(str(raw["namespace"]), int(raw["limit"]), int(raw["used"]), int(raw["blobs"]))


@dataclass(frozen=True, slots=True)
class QuotaList(Query[list[QuotaInfo]]):
    """Every namespace with a quota: its limit and deduplicated usage, by namespace."""

    op: ClassVar[str] = "quota_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> QuotaList:
        return cls()

    @staticmethod
    def encode_result(result: list[QuotaInfo]) -> list[dict[str, Any]]:
        return [q.to_json() for q in result]

    @staticmethod
    def decode_result(raw: Any) -> list[QuotaInfo]:
        return [QuotaInfo.from_json(q) for q in raw or []]


@dataclass(frozen=True, slots=True)
class TrashEntry:
    """One thing in the trash: a deleted manifest (`kind` "manifest", `tag` None) or a
    deleted tag (`kind` "tag", `digest` the manifest it pointed at)."""

    repo: str
    kind: str
    digest: str
    tag: str | None
    media_type: str | None
    size: int | None
    deleted_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "kind": self.kind,
            "digest": self.digest,
            "tag": self.tag,
            "media_type": self.media_type,
            "size": self.size,
            "deleted_at": self.deleted_at,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrashEntry:
        size = raw.get("size")
        return cls(
            str(raw["repo"]),
            str(raw["kind"]),
            str(raw["digest"]),
            raw.get("tag"),
            raw.get("media_type"),
            int(size) if size is not None else None,
            float(raw["deleted_at"]),
        )


@dataclass(frozen=True, slots=True)
class TrashList(Query[list[TrashEntry]]):
    """Everything in the trash (of `repo` only, if given), by repository, kind, name."""

    op: ClassVar[str] = "trash_list"
    repo: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrashList:
        return cls(_field(args, "repo", str, optional=True))

    @staticmethod
    def encode_result(result: list[TrashEntry]) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in result]}

    @staticmethod
    def decode_result(raw: Any) -> list[TrashEntry]:
        return [TrashEntry.from_json(e) for e in (raw or {}).get("entries", [])]


@dataclass(frozen=True, slots=True)
class TrustList(Query[list[TrustInfo]]):
    """Every namespace that has verification keys or a pull policy, by name."""

    op: ClassVar[str] = "trust_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TrustList:
        return cls()

    @staticmethod
    def encode_result(result: list[TrustInfo]) -> list[dict[str, Any]]:
        return [t.to_json() for t in result]

    @staticmethod
    def decode_result(raw: Any) -> list[TrustInfo]:
        return [TrustInfo.from_json(t) for t in raw or []]


@dataclass(frozen=True, slots=True)
class Search(Query[SearchPage]):
    """Repositories or tags matching a `SearchSpec` (cargohold/search.py, docs/search.md),
    answered from the node's derived index (node/metadata/search_index.py)."""

    op: ClassVar[str] = "search"
    spec: SearchSpec

    def to_args(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json()}

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Search:
        return cls(SearchSpec.from_json(args.get("spec", {})))

    @staticmethod
    def encode_result(result: SearchPage) -> dict[str, Any]:
        return result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> SearchPage:
        return SearchPage.from_json(raw)


# -- webhooks (node/metadata/webhooks.py, docs/webhooks.md) ---------------------------------
def _lease_fields(args: dict[str, Any]) -> tuple[str, float, float, bool]:
    """(holder, now, ttl, release) of a lease command (webhook delivery's, a rule's)."""
    holder = _field(args, "holder", str)
    if not 0 < len(holder) <= 256:
        raise RequestInvalid("holder must be 1-256 characters")
    ttl = _number(args, "ttl")
    if not 0 < ttl <= 3600:
        raise RequestInvalid("ttl must be in (0, 3600]")
    return holder, _number(args, "now"), ttl, bool(args.get("release", False))


def _dead_and_retried(args: dict[str, Any]) -> tuple[list[list[Any]], list[int]]:
    """The `dead` letters ([seq, time, attempts, reason] each) and `retried` seqs of a
    webhook's advance or a replication rule's report (both optional)."""
    dead = _field(args, "dead", list, optional=True) or []
    for d in dead:
        if (
            not isinstance(d, list)
            or len(d) != 4
            or not isinstance(d[0], int)
            or not isinstance(d[1], (int, float))
            or not isinstance(d[2], int)
            or not isinstance(d[3], str)
        ):
            raise RequestInvalid("dead letters are [seq, time, attempts, reason]")
    retried = _field(args, "retried", list, optional=True) or []
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in retried):
        raise RequestInvalid("retried must list seqs")
    return [[d[0], float(d[1]), d[2], d[3][:200]] for d in dead], list(retried)


def _retry_seqs(args: dict[str, Any]) -> list[int] | None:
    seqs = args.get("seqs")
    if seqs is not None and (
        not isinstance(seqs, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seqs)
    ):
        raise RequestInvalid("seqs must list seqs or be null")
    return seqs


def _webhook_name(args: dict[str, Any]) -> str:
    name = _field(args, "name", str)
    if not 0 < len(name) <= 64:
        raise RequestInvalid("webhook name must be 1-64 characters")
    return name


@dataclass(frozen=True, slots=True)
class WebhookPut(Command[bool]):
    """Add or replace a replicated webhook endpoint (cargohold/webhooks.py `Endpoint`
    JSON); a new one's cursor starts at the activity log's head. Answers True when new."""

    op: ClassVar[str] = "webhook_put"
    endpoint: dict[str, Any]
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookPut:
        from cargohold.webhooks import Endpoint

        endpoint = Endpoint.from_json(_field(args, "endpoint", dict)).to_json()
        del endpoint["origin"]
        return cls(endpoint, _actor(args))

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"created": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("created"))


@dataclass(frozen=True, slots=True)
class WebhookRemove(Command[bool]):
    """Forget a webhook endpoint with its cursor, dead letters and retries."""

    op: ClassVar[str] = "webhook_remove"
    name: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookRemove:
        return cls(_webhook_name(args), _actor(args))

    @staticmethod
    def encode_result(result: bool) -> dict[str, bool]:
        return {"removed": result}

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw and raw.get("removed"))


@dataclass(frozen=True, slots=True)
class WebhookLease(Command[tuple[str, float]]):
    """Take or renew the delivery lease for `ttl` seconds from `now` (granted when free,
    expired or held by `holder`); `release` gives it up. Answers the lease after the command
    (holder "" when none)."""

    op: ClassVar[str] = "webhook_lease"
    holder: str
    now: float
    ttl: float
    release: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookLease:
        return cls(*_lease_fields(args))

    @staticmethod
    def encode_result(result: tuple[str, float]) -> dict[str, Any]:
        return {"holder": result[0], "expires": result[1]}

    @staticmethod
    def decode_result(raw: Any) -> tuple[str, float]:
        return (str(raw.get("holder") or ""), float(raw.get("expires") or 0.0))


@dataclass(frozen=True, slots=True)
class WebhookAdvance(Command[int]):
    """Move an endpoint's cursor from `after` (None: it has none yet) to `to`, give up on
    `dead` ([seq, time, attempts, reason] each, kept up to `keep` per endpoint), and drop the
    `retried` seqs from its retry queue. Refused (Conflict) unless `holder` holds the lease
    and the cursor is `after`. Answers the new cursor."""

    op: ClassVar[str] = "webhook_advance"
    name: str
    holder: str
    after: int | None
    to: int
    dead: list[list[Any]]
    retried: list[int]
    keep: int

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookAdvance:
        after = args.get("after")
        if after is not None:
            after = _seq(args, "after")
        dead, retried = _dead_and_retried(args)
        keep = _seq(args, "keep")
        return cls(
            _webhook_name(args),
            _field(args, "holder", str),
            after,
            _seq(args, "to"),
            dead,
            retried,
            max(1, keep),
        )

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"cursor": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw["cursor"])


@dataclass(frozen=True, slots=True)
class WebhookRetry(Command[int]):
    """Queue an endpoint's dead letters (these `seqs`, or all when None) for delivery
    again. Answers how many were queued."""

    op: ClassVar[str] = "webhook_retry"
    name: str
    seqs: list[int] | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookRetry:
        return cls(_webhook_name(args), _retry_seqs(args), _actor(args))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"queued": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw.get("queued", 0)) if raw else 0


# -- replication rules (gateway/replication/, node/metadata/webhooks.py) --------------------
def _rule_name(args: dict[str, Any]) -> str:
    name = _field(args, "rule", str)
    if not 0 < len(name) <= 64:
        raise RequestInvalid("a replication rule's name must be 1-64 characters")
    return name


@dataclass(frozen=True, slots=True)
class JobLease(Command[tuple[str, float]]):
    """Take or renew the lease of a once-at-a-time gateway job (`job`: "search_backfill")
    for `ttl` seconds from `now`; `release` gives it up. Answers the lease after the
    command (holder "" when none)."""

    op: ClassVar[str] = "job_lease"
    job: str
    holder: str
    now: float
    ttl: float
    release: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> JobLease:
        job = _field(args, "job", str)
        if not 0 < len(job) <= 64:
            raise RequestInvalid("a job's name must be 1-64 characters")
        return cls(job, *_lease_fields(args))

    @staticmethod
    def encode_result(result: tuple[str, float]) -> dict[str, Any]:
        return {"holder": result[0], "expires": result[1]}

    @staticmethod
    def decode_result(raw: Any) -> tuple[str, float]:
        return (str(raw.get("holder") or ""), float(raw.get("expires") or 0.0))


@dataclass(frozen=True, slots=True)
class ReplicationLease(Command[tuple[str, float]]):
    """Take or renew the lease of one replication rule (the gateway that runs it) for
    `ttl` seconds from `now`; `release` gives it up. Answers the lease after the command."""

    op: ClassVar[str] = "replication_lease"
    rule: str
    holder: str
    now: float
    ttl: float
    release: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ReplicationLease:
        return cls(_rule_name(args), *_lease_fields(args))

    @staticmethod
    def encode_result(result: tuple[str, float]) -> dict[str, Any]:
        return {"holder": result[0], "expires": result[1]}

    @staticmethod
    def decode_result(raw: Any) -> tuple[str, float]:
        return (str(raw.get("holder") or ""), float(raw.get("expires") or 0.0))


@dataclass(frozen=True, slots=True)
class ReplicationReport(Command[int | None]):
    """A rule runner's report: its `status` (progress, last error; JSON) and, when `to` is
    not None, its cursor moved from `after` (None: it has none yet); push events given up
    on (`dead`: [seq, time, attempts, reason] each, kept up to `keep` per rule) and
    dead letters sent again (`retried`, dropped from its retry queue). Refused (Conflict)
    unless `holder` holds the rule's lease and the cursor is `after`. Answers the cursor."""

    op: ClassVar[str] = "replication_report"
    rule: str
    holder: str
    after: int | None
    to: int | None
    status: dict[str, Any]
    dead: list[list[Any]] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    keep: int = 1000

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ReplicationReport:
        after = _seq(args, "after") if args.get("after") is not None else None
        to = _seq(args, "to") if args.get("to") is not None else None
        dead, retried = _dead_and_retried(args)  # absent in an older gateway's report
        keep = _seq(args, "keep") if args.get("keep") is not None else 1000
        return cls(
            _rule_name(args),
            _field(args, "holder", str),
            after,
            to,
            _field(args, "status", dict),
            dead,
            retried,
            max(1, keep),
        )

    @staticmethod
    def encode_result(result: int | None) -> dict[str, Any]:
        return {"cursor": result}

    @staticmethod
    def decode_result(raw: Any) -> int | None:
        cursor = raw.get("cursor") if raw else None
        return None if cursor is None else int(cursor)


@dataclass(frozen=True, slots=True)
class ReplicationRun(Command[int]):
    """Ask for one full run of a replication rule (its runner starts it at its next
    round). Answers how many runs were asked for so far."""

    op: ClassVar[str] = "replication_run"
    rule: str
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ReplicationRun:
        return cls(_rule_name(args), _actor(args))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"runs_requested": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw.get("runs_requested", 0)) if raw else 0


@dataclass(frozen=True, slots=True)
class ReplicationRetry(Command[int]):
    """Queue a replication rule's dead letters (these `seqs`, or all when None) to be
    copied again by its runner. Answers how many were queued."""

    op: ClassVar[str] = "replication_retry"
    rule: str
    seqs: list[int] | None = None
    audit: Actor | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ReplicationRetry:
        return cls(_rule_name(args), _retry_seqs(args), _actor(args))

    @staticmethod
    def encode_result(result: int) -> dict[str, int]:
        return {"queued": result}

    @staticmethod
    def decode_result(raw: Any) -> int:
        return int(raw.get("queued", 0)) if raw else 0


@dataclass(frozen=True, slots=True)
class ReplicationList(Query[dict[str, Any]]):
    """Every replication rule known to the state: its cursor, last reported status, runs
    asked for and lease; and the activity log's head (for a rule's lag)."""

    op: ClassVar[str] = "replication_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ReplicationList:
        return cls()


@dataclass(frozen=True, slots=True)
class WebhookList(Query[dict[str, Any]]):
    """Every webhook known to the state (replicated endpoints, and the cursors of
    configured ones), with its cursor, dead-letter count and retry queue; the lease."""

    op: ClassVar[str] = "webhook_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookList:
        return cls()


@dataclass(frozen=True, slots=True)
class WebhookDeadLetters(Query[list[list[Any]]]):
    """An endpoint's dead letters, oldest first: [seq, time, attempts, reason] each."""

    op: ClassVar[str] = "webhook_dead_letters"
    name: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WebhookDeadLetters:
        return cls(_webhook_name(args))

    @staticmethod
    def decode_result(raw: Any) -> list[list[Any]]:
        return [list(d) for d in raw or []]


# The SBOM scanner's queue (node/metadata/scans.py, docs/supply-chain.md "Scan status").
SCAN_STATES = ("queued", "scanning", "done", "failed")
MAX_SCAN_ERROR = 1024
MAX_SCAN_LIST = 10_000


def _scan_worker(args: dict[str, Any]) -> str:
    worker = _field(args, "worker", str)
    if not 0 < len(worker) <= 256:
        raise RequestInvalid("worker must be a string of 1 to 256 characters")
    return worker


@dataclass(frozen=True, slots=True)
class ScanClaimed:
    """A manifest a `scan_claim` gave the caller, and how many claims it has had."""

    repo: str
    digest: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ScanClaim(Command[list[ScanClaimed]]):
    """Take up to `limit` claimable scans (queued, or whose lease ended) for `worker`,
    oldest first, each leased until `now + lease_seconds`. A record already claimed
    `max_attempts` times fails instead."""

    op: ClassVar[str] = "scan_claim"
    worker: str
    now: float
    lease_seconds: float
    limit: int
    max_attempts: int

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ScanClaim:
        limit, attempts = _field(args, "limit", int), _field(args, "max_attempts", int)
        lease = _number(args, "lease_seconds")
        if limit < 1 or attempts < 1 or lease <= 0:
            raise RequestInvalid("limit and max_attempts must be >= 1, lease_seconds > 0")
        return cls(_scan_worker(args), _number(args, "now"), lease, limit, attempts)

    @staticmethod
    def encode_result(result: list[ScanClaimed]) -> list[list[Any]]:
        return [[c.repo, c.digest, c.attempts] for c in result]

    @staticmethod
    def decode_result(raw: Any) -> list[ScanClaimed]:
        return [ScanClaimed(str(r), str(d), int(a)) for r, d, a in raw or []]


@dataclass(frozen=True, slots=True)
class ScanFinish(Command[bool]):
    """`worker`'s result for a scan it holds: `done` (with the SBOM referrer's digest),
    `failed` (with `error`), or `queued` (a transient error: claimable again after
    `retry_after` seconds). False when it no longer holds the claim (ignored)."""

    op: ClassVar[str] = "scan_finish"
    repo: str
    digest: str
    worker: str
    now: float
    state: str
    error: str = ""
    sbom: str = ""
    retry_after: float = 0.0

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ScanFinish:
        state = _field(args, "state", str)
        if state not in ("queued", "done", "failed"):
            raise RequestInvalid("state must be queued, done or failed")
        sbom = _digest(args, "sbom") if state == "done" else ""
        error = str(_field(args, "error", str, optional=True) or "")[:MAX_SCAN_ERROR]
        retry = args.get("retry_after") or 0.0
        if not isinstance(retry, (int, float)) or isinstance(retry, bool) or retry < 0:
            raise RequestInvalid("retry_after must be a number >= 0")
        return cls(
            _repo(args),
            _digest(args),
            _scan_worker(args),
            _number(args, "now"),
            state,
            error,
            sbom,
            float(retry),
        )

    @staticmethod
    def decode_result(raw: Any) -> bool:
        return bool(raw)


@dataclass(frozen=True, slots=True)
class ScanEnqueue(Command[None]):
    """Queue manifest `digest` of `repo` for a new scan (not while one is queued or
    running). ManifestUnknown when the manifest is not in the repository."""

    op: ClassVar[str] = "scan_enqueue"
    repo: str
    digest: str
    now: float

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ScanEnqueue:
        repo = _repo(args)
        return cls(repo, _digest(args), _number(args, "now"))


@dataclass(frozen=True, slots=True)
class ScanInfo:
    """One scan record (docs/supply-chain.md "Scan status")."""

    repo: str
    digest: str
    state: str
    attempts: int
    worker: str
    lease_until: float
    error: str
    sbom: str
    queued_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ScanInfo:
        return cls(**{name: raw[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ScanList(Query[list[ScanInfo]]):
    """Scan records by repository and digest (of `repo`, `digest`, `state` only, if
    given), after the (repo, digest) key `after`, at most `limit`."""

    op: ClassVar[str] = "scan_list"
    repo: str | None = None
    digest: str | None = None
    state: str | None = None
    after: tuple[str, str] | None = None
    limit: int = 1000

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ScanList:
        repo = _repo(args) if args.get("repo") is not None else None
        digest = _digest(args) if args.get("digest") is not None else None
        state = _field(args, "state", str, optional=True)
        if state is not None and state not in SCAN_STATES:
            raise RequestInvalid(f"state must be one of {', '.join(SCAN_STATES)}")
        after = _field(args, "after", list, optional=True)
        if after is not None and (len(after) != 2 or not all(isinstance(a, str) for a in after)):
            raise RequestInvalid("after must be [repo, digest]")
        limit = args.get("limit", 1000)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_SCAN_LIST:
            raise RequestInvalid(f"limit must be an int in 1..{MAX_SCAN_LIST}")
        return cls(repo, digest, state, (after[0], after[1]) if after else None, limit)

    @staticmethod
    def encode_result(result: list[ScanInfo]) -> list[dict[str, Any]]:
        return [s.to_json() for s in result]

    @staticmethod
    def decode_result(raw: Any) -> list[ScanInfo]:
        return [ScanInfo.from_json(s) for s in raw or []]


# -- search's image_info, recorded after the push (gateway/search_backfill.py) --------------
MAX_INFO_MISSING = 1000
# Manifests one `image_info_missing` looks at, at most (it holds the state's lock meanwhile).
INFO_MISSING_SCAN = 20_000


@dataclass(frozen=True, slots=True)
class InfoMissingPage:
    """Manifests without `image_info`: (repo, digest, media type) each, and where the next
    page starts (None: the walk is over)."""

    items: list[tuple[str, str, str]]
    next: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class ImageInfoMissing(Query[InfoMissingPage]):
    """Manifests that have no `image_info` (pushed before search indexed platforms and
    labels, or never looked at), by repository and digest after the key `after`: at most
    `limit`, after looking at most INFO_MISSING_SCAN manifests (a short page may still have
    a `next`)."""

    op: ClassVar[str] = "image_info_missing"
    after: tuple[str, str] | None = None
    limit: int = 100

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ImageInfoMissing:
        after = _field(args, "after", list, optional=True)
        if after is not None and (len(after) != 2 or not all(isinstance(a, str) for a in after)):
            raise RequestInvalid("after must be [repo, digest]")
        limit = args.get("limit", 100)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= MAX_INFO_MISSING
        ):
            raise RequestInvalid(f"limit must be an int in 1..{MAX_INFO_MISSING}")
        return cls((after[0], after[1]) if after else None, limit)

    @staticmethod
    def encode_result(result: InfoMissingPage) -> dict[str, Any]:
        return {
            "items": [list(item) for item in result.items],
            "next": list(result.next) if result.next else None,
        }

    @staticmethod
    def decode_result(raw: Any) -> InfoMissingPage:
        nxt = raw.get("next")
        return InfoMissingPage(
            [(r, d, m) for r, d, m in raw.get("items") or []], (nxt[0], nxt[1]) if nxt else None
        )


@dataclass(frozen=True, slots=True)
class ImageInfoBackfill(_Recorded):
    """Record the `image_info` of manifests pushed without it: each entry is (repo, digest,
    info), info as `manifest_put` takes it or None for "looked at, nothing to index". An
    entry is recorded only when the manifest is in `repo` and has no `image_info` yet (so
    it never overwrites, and replays are idempotent); answers how many were recorded."""

    op: ClassVar[str] = "image_info_backfill"
    entries: tuple[tuple[str, str, dict[str, Any] | None], ...]

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ImageInfoBackfill:
        rows = _field(args, "entries", list)
        if len(rows) > MAX_INFO_MISSING:
            raise RequestInvalid(f"at most {MAX_INFO_MISSING} entries")
        entries = []
        for row in rows:
            if not isinstance(row, list) or len(row) != 3:
                raise RequestInvalid("an entry is [repo, digest, info or null]")
            item = {"repo": row[0], "digest": row[1]}
            entries.append((_repo(item), _digest(item), image_info(row[2])))
        return cls(tuple(entries))

    def to_args(self) -> dict[str, Any]:
        return {"entries": [list(entry) for entry in self.entries]}


@dataclass(frozen=True, slots=True)
class VulndbGet(Query[VulnDbInfo | None]):
    """The current vulnerability database, or None before the first import."""

    op: ClassVar[str] = "vulndb_get"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> VulndbGet:
        return cls()

    @staticmethod
    def encode_result(result: VulnDbInfo | None) -> dict[str, Any] | None:
        return None if result is None else result.to_json()

    @staticmethod
    def decode_result(raw: Any) -> VulnDbInfo | None:
        return None if not raw else VulnDbInfo.from_json(raw)


@dataclass(frozen=True, slots=True)
class ArtifactsList(Query[list[tuple[str, str, dict[str, Any]]]]):
    """(digest, subject, annotations) of each manifest of `repo` with artifactType
    `artifact_type` and a subject, by digest (e.g. every SBOM and vulnerability report of a
    repository: which images need matching again)."""

    op: ClassVar[str] = "artifacts_list"
    repo: str
    artifact_type: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ArtifactsList:
        return cls(_field(args, "repo", str), _field(args, "artifact_type", str))

    @staticmethod
    def encode_result(result: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        return {"artifacts": [list(r) for r in result]}

    @staticmethod
    def decode_result(raw: Any) -> list[tuple[str, str, dict[str, Any]]]:
        return [(d, s, dict(a or {})) for d, s, a in (raw or {}).get("artifacts", [])]


# -- the catalogue ---------------------------------------------------------------------------
# The commands that change what `access_list` answers (they move `access_revision`); each
# is acknowledged only after an `access_fence` (docs/security.md "Revocation at once").
ACCESS_CHANGES: tuple[type[Command[Any]], ...] = (
    UserPut,
    NamespacePut,
    GrantSet,
    GroupPut,
    GroupDelete,
    GroupMemberSet,
    GroupGrantSet,
    RobotPut,
    RobotDelete,
)
ACCESS_CHANGE_OPS = frozenset(kind.op for kind in ACCESS_CHANGES)
# The commands that remove a blob link or a manifest (they move `unlink_revision`); each is
# acknowledged only after an `access_fence` too, so no gateway serves a removed link or
# manifest from its cache after the acknowledgement (gateway/manifest_cache.py).
UNLINKS: tuple[type[Command[Any]], ...] = (BlobUnlink, ManifestDelete)
FENCED_OPS = ACCESS_CHANGE_OPS | frozenset(kind.op for kind in UNLINKS)
_COMMAND_CLASSES: tuple[type[Command[Any]], ...] = (
    Barrier,
    UploadAppend,
    UploadCancel,
    BlobCommit,
    BlobMount,
    BlobUnlink,
    ManifestPut,
    TagDelete,
    ManifestDelete,
    MemberJoin,
    MemberSetState,
    ExpireUploads,
    GcPrune,
    PullRecord,
    *ACCESS_CHANGES,
    AuditAppend,
    AuditSeal,
    AuditExpire,
    QuotaSet,
    TrashRestore,
    TrashPurge,
    TrustKeyPut,
    PullPolicyPut,
    WebhookPut,
    WebhookRemove,
    WebhookLease,
    WebhookAdvance,
    ReplicationLease,
    ReplicationReport,
    ReplicationRun,
    JobLease,
    ReplicationRetry,
    WebhookRetry,
    ScanClaim,
    ScanFinish,
    ScanEnqueue,
    VulnPolicyPut,
    VulndbPut,
    ImageInfoBackfill,
)
COMMAND_TYPES: dict[str, type[Command[Any]]] = {c.op: c for c in _COMMAND_CLASSES}
QUERY_TYPES: dict[str, type[Query[Any]]] = {
    q.op: q
    for q in (
        TagGet,
        ManifestGet,
        BlobGet,
        BlobRecipe,
        UploadGet,
        TagsList,
        Catalog,
        Referrers,
        Members,
        Status,
        AccessList,
        AccessRevision,
        UnlinkRevision,
        AccessFence,
        AuditHead,
        AuditTail,
        QuotaList,
        TrashList,
        TrustList,
        Search,
        WebhookList,
        WebhookDeadLetters,
        ReplicationList,
        ScanList,
        VulndbGet,
        ArtifactsList,
        ImageInfoMissing,
    )
}
COMMANDS = frozenset(COMMAND_TYPES)
QUERIES = frozenset(QUERY_TYPES)


def decode_command(op: str, args: Any) -> Command[Any]:
    """The typed command a `Metadata.Command` (or a Raft log entry) carries."""
    cls = COMMAND_TYPES.get(op)
    if cls is None:
        raise RequestInvalid(f"unknown command {op!r}")
    if not isinstance(args, dict):
        raise RequestInvalid("command arguments must be a JSON object")
    return cls.from_args(args)


def decode_query(op: str, args: Any) -> Query[Any]:
    """The typed query a `Metadata.Query` carries."""
    cls = QUERY_TYPES.get(op)
    if cls is None:
        raise RequestInvalid(f"unknown query {op!r}")
    if not isinstance(args, dict):
        raise RequestInvalid("query arguments must be a JSON object")
    return cls.from_args(args)


# -- the typed facade --------------------------------------------------------------------------
class Transport(Protocol):
    """The raw seam: JSON-able args in, the JSON result out (gateway client, Raft member)."""

    async def command(self, op: str, args: dict[str, Any]) -> Any: ...

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any: ...


class Metadata:
    """Typed metadata calls over a `Transport`: one method per op of the catalogue."""

    __slots__ = ("_linearizable", "_transport")

    def __init__(self, transport: Transport, linearizable: bool = True) -> None:
        self._transport = transport
        self._linearizable = linearizable

    @property
    def transport(self) -> Transport:
        return self._transport

    async def call(self, request: Request[R]) -> R:
        if request.is_command:
            raw = await self._transport.command(request.op, request.to_args())
            if request.op in FENCED_OPS:
                # Not acknowledged until every gateway enforces it (AccessFence).
                try:
                    await self._transport.query(AccessFence.op, {}, linearizable=False)
                except RequestInvalid:
                    # A node from before access leases ("unknown query", during a rolling
                    # upgrade): it grants no lease, so there is nothing to wait for.
                    pass
        else:
            raw = await self._transport.query(
                request.op, request.to_args(), linearizable=self._linearizable
            )
        result: R = request.decode_result(raw)
        return result

    # commands
    async def barrier(self) -> None:
        await self.call(Barrier())

    async def upload_append(self, request: UploadAppend) -> int:
        return await self.call(request)

    async def upload_cancel(self, upload: str, now: float) -> None:
        await self.call(UploadCancel(upload, now))

    async def blob_commit(self, request: BlobCommit) -> None:
        await self.call(request)

    async def blob_mount(self, repo: str, digest: str, source: str | None) -> bool:
        return await self.call(BlobMount(repo, digest, source))

    async def blob_unlink(self, repo: str, digest: str, audit: Actor | None = None) -> None:
        await self.call(BlobUnlink(repo, digest, audit))

    async def manifest_put(self, request: ManifestPut) -> None:
        await self.call(request)

    async def tag_delete(
        self,
        repo: str,
        tag: str,
        immutable: tuple[str, ...] = (),
        now: float | None = None,
        trash: bool = False,
    ) -> None:
        await self.call(TagDelete(repo, tag, immutable, now=now, trash=trash))

    async def manifest_delete(
        self,
        repo: str,
        digest: str,
        immutable: tuple[str, ...] = (),
        now: float | None = None,
        trash: bool = False,
    ) -> None:
        await self.call(ManifestDelete(repo, digest, immutable, now=now, trash=trash))

    async def member_join(self, node_id: str, grpc: str, raft: str) -> None:
        await self.call(MemberJoin(node_id, grpc, raft))

    async def member_set_state(self, node_id: str, state: str) -> None:
        await self.call(MemberSetState(node_id, state))

    async def expire_uploads(self, now: float, older_than: float) -> int:
        return await self.call(ExpireUploads(now, older_than))

    async def gc_prune(self, blobs: tuple[str, ...]) -> int:
        return await self.call(GcPrune(blobs))

    async def pull_record(self, pulls: tuple[PullEvent, ...]) -> int:
        return await self.call(PullRecord(pulls))

    async def trash_restore(self, request: TrashRestore) -> TrashRestored:
        return await self.call(request)

    async def trash_purge(
        self, now: float, older_than: float, repo: str | None = None, audit: Actor | None = None
    ) -> int:
        return await self.call(TrashPurge(now, older_than, repo, audit))

    async def user_put(self, request: UserPut) -> None:
        await self.call(request)

    async def namespace_put(self, name: str, visibility: str) -> None:
        await self.call(NamespacePut(name, visibility))

    async def grant_set(self, namespace: str, user: str, role: str | None) -> None:
        await self.call(GrantSet(namespace, user, role))

    async def group_put(self, name: str) -> None:
        await self.call(GroupPut(name))

    async def group_delete(self, name: str) -> bool:
        return await self.call(GroupDelete(name))

    async def group_member_set(self, group: str, user: str, member: bool) -> None:
        await self.call(GroupMemberSet(group, user, member))

    async def group_grant_set(self, namespace: str, group: str, role: str | None) -> None:
        await self.call(GroupGrantSet(namespace, group, role))

    async def robot_put(self, request: RobotPut) -> None:
        await self.call(request)

    async def robot_delete(self, name: str) -> bool:
        return await self.call(RobotDelete(name))

    async def audit_append(self, events: list[list[Any]]) -> int:
        return await self.call(AuditAppend(events))

    async def audit_seal(
        self, first: int, last: int, digest: str, recipe: Recipe, now: float
    ) -> bool:
        return await self.call(AuditSeal(first, last, digest, recipe, now))

    async def audit_expire(self, before: float) -> int:
        return await self.call(AuditExpire(before))

    async def quota_set(
        self, namespace: str, limit: int | None, audit: Actor | None = None
    ) -> None:
        await self.call(QuotaSet(namespace, limit, audit))

    async def trust_key_put(
        self, namespace: str, name: str, pem: str | None, audit: Actor | None = None
    ) -> None:
        await self.call(TrustKeyPut(namespace, name, pem, audit))

    async def pull_policy_put(
        self, namespace: str, require_signature: bool, audit: Actor | None = None
    ) -> None:
        await self.call(PullPolicyPut(namespace, require_signature, audit))

    async def scan_claim(self, request: ScanClaim) -> list[ScanClaimed]:
        return await self.call(request)

    async def scan_finish(self, request: ScanFinish) -> bool:
        return await self.call(request)

    async def scan_enqueue(self, repo: str, digest: str, now: float) -> None:
        await self.call(ScanEnqueue(repo, digest, now))

    async def vuln_policy_put(
        self,
        namespace: str,
        block_severity: str,
        allowlist: tuple[str, ...],
        unscanned: str,
        audit: Actor | None = None,
    ) -> None:
        await self.call(VulnPolicyPut(namespace, block_severity, allowlist, unscanned, audit))

    async def vulndb_put(
        self,
        digest: str,
        recipe: Recipe,
        source: str,
        stats: dict[str, Any],
        audit: Actor | None = None,
    ) -> int:
        return await self.call(VulndbPut(digest, recipe, time.time(), source, stats, audit))

    # queries
    async def tag_get(self, repo: str, tag: str) -> ManifestInfo:
        return await self.call(TagGet(repo, tag))

    async def manifest_get(self, repo: str, digest: str) -> ManifestInfo:
        return await self.call(ManifestGet(repo, digest))

    async def blob_get(self, repo: str, digest: str) -> Recipe:
        return await self.call(BlobGet(repo, digest))

    async def blob_recipe(self, digest: str) -> Recipe:
        return await self.call(BlobRecipe(digest))

    async def upload_get(self, upload: str) -> UploadInfo:
        return await self.call(UploadGet(upload))

    async def tags_list(self, repo: str, n: int | None, last: str | None) -> Page:
        return await self.call(TagsList(repo, n, last))

    async def catalog(self, n: int | None, last: str | None) -> Page:
        return await self.call(Catalog(n, last))

    async def referrers(
        self, repo: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor]:
        return await self.call(Referrers(repo, digest, artifact_type))

    async def members(self) -> list[MemberInfo]:
        return await self.call(Members())

    async def status(self) -> MetadataStatus:
        return await self.call(Status())

    async def access_list(self) -> AccessData:
        return await self.call(AccessList())

    async def access_revision(self) -> str:
        return await self.call(AccessRevision())

    async def unlink_revision(self) -> str:
        return await self.call(UnlinkRevision())

    async def access_fence(self) -> None:
        await self.call(AccessFence())

    async def audit_head(self, segments: int | None = None) -> AuditHeadInfo:
        return await self.call(AuditHead(segments))

    async def audit_tail(self, after: int, n: int | None = None) -> AuditPage:
        return await self.call(AuditTail(after, n))

    async def quota_list(self) -> list[QuotaInfo]:
        return await self.call(QuotaList())

    async def trash_list(self, repo: str | None = None) -> list[TrashEntry]:
        return await self.call(TrashList(repo))

    async def trust_list(self) -> list[TrustInfo]:
        return await self.call(TrustList())

    async def search(self, spec: SearchSpec) -> SearchPage:
        return await self.call(Search(spec))

    # webhooks
    async def webhook_put(self, endpoint: dict[str, Any], audit: Actor | None = None) -> bool:
        return await self.call(WebhookPut(endpoint, audit))

    async def webhook_remove(self, name: str, audit: Actor | None = None) -> bool:
        return await self.call(WebhookRemove(name, audit))

    async def webhook_lease(
        self, holder: str, now: float, ttl: float, release: bool = False
    ) -> tuple[str, float]:
        return await self.call(WebhookLease(holder, now, ttl, release))

    async def webhook_advance(self, request: WebhookAdvance) -> int:
        return await self.call(request)

    async def webhook_retry(
        self, name: str, seqs: list[int] | None = None, audit: Actor | None = None
    ) -> int:
        return await self.call(WebhookRetry(name, seqs, audit))

    async def webhook_list(self) -> dict[str, Any]:
        return await self.call(WebhookList())

    async def webhook_dead_letters(self, name: str) -> list[list[Any]]:
        return await self.call(WebhookDeadLetters(name))

    # replication rules
    async def replication_lease(
        self, rule: str, holder: str, now: float, ttl: float, release: bool = False
    ) -> tuple[str, float]:
        return await self.call(ReplicationLease(rule, holder, now, ttl, release))

    async def job_lease(
        self, job: str, holder: str, now: float, ttl: float, release: bool = False
    ) -> tuple[str, float]:
        return await self.call(JobLease(job, holder, now, ttl, release))

    async def replication_report(self, request: ReplicationReport) -> int | None:
        return await self.call(request)

    async def replication_run(self, rule: str, audit: Actor | None = None) -> int:
        return await self.call(ReplicationRun(rule, audit))

    async def replication_retry(
        self, rule: str, seqs: list[int] | None = None, audit: Actor | None = None
    ) -> int:
        return await self.call(ReplicationRetry(rule, seqs, audit))

    async def replication_list(self) -> dict[str, Any]:
        return await self.call(ReplicationList())

    async def scan_list(self, request: ScanList) -> list[ScanInfo]:
        return await self.call(request)

    async def vulndb_get(self) -> VulnDbInfo | None:
        return await self.call(VulndbGet())

    async def artifacts_list(
        self, repo: str, artifact_type: str
    ) -> list[tuple[str, str, dict[str, Any]]]:
        return await self.call(ArtifactsList(repo, artifact_type))

    async def image_info_missing(
        self, after: tuple[str, str] | None, limit: int
    ) -> InfoMissingPage:
        return await self.call(ImageInfoMissing(after, limit))

    async def image_info_backfill(
        self, entries: list[tuple[str, str, dict[str, Any] | None]]
    ) -> int:
        return await self.call(ImageInfoBackfill(tuple(entries)))


class LocalQueries(Protocol):
    def local_query(self, op: str, args: dict[str, Any]) -> Any: ...


def local(source: LocalQueries, request: Query[R]) -> R:
    """A typed read of a node's own applied state (no barrier), e.g. `Members()`."""
    result: R = request.decode_result(source.local_query(request.op, request.to_args()))
    return result
