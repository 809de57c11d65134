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
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Protocol, Self, TypedDict, TypeVar

from cargohold.digests import parse_digest
from cargohold.errors import PaginationInvalid, RequestInvalid
from cargohold.names import validate_name, validate_tag

R = TypeVar("R")
MEMBER_STATES = ("active", "draining", "removed")
_intern = sys.intern

# A chunk reference is `[chunk_hex, length]`; a recipe the ordered chunks of one blob.
Chunk = list[Any]


class Recipe(TypedDict):
    size: int
    chunks: list[Chunk]


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
        """The JSON object that travels (and is journalled) for this request."""
        return {key: getattr(self, name) for name, key in wire_keys(type(self))}

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

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobCommit:
        repo = _repo(args)
        digest = _digest(args)
        recipe = _recipe(args)
        upload = _field(args, "upload", str, optional=True)
        return cls(repo, digest, recipe, upload, _number(args, "now"))


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

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BlobUnlink:
        repo = _repo(args)
        return cls(repo, _digest(args))


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
        )


@dataclass(frozen=True, slots=True)
class TagDelete(Command[None]):
    op: ClassVar[str] = "tag_delete"
    repo: str
    tag: str
    immutable: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> TagDelete:
        repo = _repo(args)
        return cls(repo, _field(args, "tag", str), _strings(args, "immutable"))


@dataclass(frozen=True, slots=True)
class ManifestDelete(Command[None]):
    op: ClassVar[str] = "manifest_delete"
    repo: str
    digest: str
    immutable: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ManifestDelete:
        repo = _repo(args)
        return cls(repo, _digest(args), _strings(args, "immutable"))


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

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> UserPut:
        hashed = _field(args, "password_hash", str, optional=True)
        if hashed is not None and not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise RequestInvalid("password_hash must be a bcrypt hash")
        return cls(
            _user(args), hashed, _optional_bool(args, "disabled"), _optional_bool(args, "admin")
        )


@dataclass(frozen=True, slots=True)
class NamespacePut(Command[None]):
    """Create a namespace (a repository-name prefix) or change its visibility."""

    op: ClassVar[str] = "namespace_put"
    name: str
    visibility: str

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> NamespacePut:
        visibility = _field(args, "visibility", str)
        if visibility not in VISIBILITIES:
            raise RequestInvalid(f"visibility must be one of {', '.join(VISIBILITIES)}")
        return cls(validate_name(_field(args, "name", str)), visibility)


@dataclass(frozen=True, slots=True)
class GrantSet(Command[None]):
    """Give `user` `role` in `namespace`; role None revokes. NotFound for an unknown user
    or namespace."""

    op: ClassVar[str] = "grant_set"
    namespace: str
    user: str
    role: str | None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> GrantSet:
        role = _field(args, "role", str, optional=True)
        if role is not None and role not in ROLES:
            raise RequestInvalid(f"role must be one of {', '.join(ROLES)}")
        return cls(validate_name(_field(args, "namespace", str)), _user(args, "user"), role)


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

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "visibility": self.visibility, "grants": dict(self.grants)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NamespaceInfo:
        return cls(raw["name"], raw["visibility"], dict(raw.get("grants") or {}))


@dataclass(frozen=True, slots=True)
class AccessData:
    users: list[UserInfo]
    namespaces: list[NamespaceInfo]


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
    """Every user (with its password hash) and namespace (with its grants), by name."""

    op: ClassVar[str] = "access_list"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AccessList:
        return cls()

    @staticmethod
    def encode_result(result: AccessData) -> dict[str, Any]:
        return {
            "users": [u.to_json() for u in result.users],
            "namespaces": [n.to_json() for n in result.namespaces],
        }

    @staticmethod
    def decode_result(raw: Any) -> AccessData:
        raw = raw or {}
        return AccessData(
            [UserInfo.from_json(u) for u in raw.get("users", [])],
            [NamespaceInfo.from_json(n) for n in raw.get("namespaces", [])],
        )


# -- the catalogue ---------------------------------------------------------------------------
COMMAND_TYPES: dict[str, type[Command[Any]]] = {
    c.op: c
    for c in (
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
        UserPut,
        NamespacePut,
        GrantSet,
    )
}
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

    async def call(self, request: Request[R]) -> R:
        if request.is_command:
            raw = await self._transport.command(request.op, request.to_args())
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

    async def blob_unlink(self, repo: str, digest: str) -> None:
        await self.call(BlobUnlink(repo, digest))

    async def manifest_put(self, request: ManifestPut) -> None:
        await self.call(request)

    async def tag_delete(self, repo: str, tag: str, immutable: tuple[str, ...] = ()) -> None:
        await self.call(TagDelete(repo, tag, immutable))

    async def manifest_delete(
        self, repo: str, digest: str, immutable: tuple[str, ...] = ()
    ) -> None:
        await self.call(ManifestDelete(repo, digest, immutable))

    async def member_join(self, node_id: str, grpc: str, raft: str) -> None:
        await self.call(MemberJoin(node_id, grpc, raft))

    async def member_set_state(self, node_id: str, state: str) -> None:
        await self.call(MemberSetState(node_id, state))

    async def expire_uploads(self, now: float, older_than: float) -> int:
        return await self.call(ExpireUploads(now, older_than))

    async def gc_prune(self, blobs: tuple[str, ...]) -> int:
        return await self.call(GcPrune(blobs))

    async def user_put(self, request: UserPut) -> None:
        await self.call(request)

    async def namespace_put(self, name: str, visibility: str) -> None:
        await self.call(NamespacePut(name, visibility))

    async def grant_set(self, namespace: str, user: str, role: str | None) -> None:
        await self.call(GrantSet(namespace, user, role))

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


class LocalQueries(Protocol):
    def local_query(self, op: str, args: dict[str, Any]) -> Any: ...


def local(source: LocalQueries, request: Query[R]) -> R:
    """A typed read of a node's own applied state (no barrier), e.g. `Members()`."""
    result: R = request.decode_result(source.local_query(request.op, request.to_args()))
    return result
