"""Typed errors for the whole system, and the one table that maps them to OCI error codes.

Handlers and stores raise these; `gateway/errors.py` turns any `RegistryError` into the
OCI error JSON (`{"errors":[{"code","message","detail"}]}`) with the status below.
Node-side failures cross gRPC as a status code plus the OCI code in the details string
(see `to_grpc_details`/`from_grpc_details`), so the gateway can re-raise the same type.
"""

from __future__ import annotations

import json
from typing import Any


class CargoholdError(Exception):
    """Base of every error this project raises on purpose.

    `exit_code` is the process exit status when one ends a `cargohold` command (the table
    is in README.md, "Exit codes"): 2 unless a subclass says otherwise.
    """

    exit_code: int = 2


class ConfigError(CargoholdError):
    """The configuration is unusable; raised at start-up only."""


class StartupError(CargoholdError):
    """A node, gateway or launcher cannot start (a resource it needs is unusable)."""

    exit_code = 5


class DataDirInUse(StartupError):
    """Another live process holds the data directory's lock (named in the message)."""

    exit_code = 3


class AddressInUse(StartupError):
    """A listen address is taken by another socket (its process named where known)."""

    exit_code = 4


class ScanError(CargoholdError):
    """A scan cannot finish for a reason a retry does not change: a layer that is not a
    (gzip/zstd) tar, or one that breaks a `[scanner]` limit. The scanner records the message
    as the scan's error (state `failed`, docs/supply-chain.md); no client ever sees it."""


class RegistryError(CargoholdError):
    """An error the client sees as an OCI error response."""

    code: str = "UNKNOWN"
    status: int = 500
    default_message: str = "unknown error"

    def __init__(
        self, message: str | None = None, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}
        super().__init__(self.message)

    def __init_subclass__(
        cls,
        code: str | None = None,
        status: int | None = None,
        message: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Each concrete error names its OCI code, HTTP status and default message on its
        # class line; a subclass without them inherits its parent's.
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status
        if message is not None:
            cls.default_message = message


class BlobUnknown(
    RegistryError, code="BLOB_UNKNOWN", status=404, message="blob unknown to registry"
): ...


class BlobUploadInvalid(
    RegistryError, code="BLOB_UPLOAD_INVALID", status=400, message="blob upload invalid"
): ...


class BlobUploadUnknown(
    RegistryError, code="BLOB_UPLOAD_UNKNOWN", status=404, message="blob upload unknown to registry"
): ...


class DigestInvalid(
    RegistryError,
    code="DIGEST_INVALID",
    status=400,
    message="provided digest did not match uploaded content",
): ...


class ManifestBlobUnknown(
    RegistryError,
    code="MANIFEST_BLOB_UNKNOWN",
    status=400,
    message="manifest references a blob unknown to the registry",
): ...


class ManifestInvalid(
    RegistryError, code="MANIFEST_INVALID", status=400, message="manifest invalid"
): ...


class ManifestUnknown(
    RegistryError, code="MANIFEST_UNKNOWN", status=404, message="manifest unknown"
): ...


class ManifestTooLarge(
    RegistryError, code="MANIFEST_INVALID", status=413, message="manifest too large"
): ...


class NameInvalid(
    RegistryError, code="NAME_INVALID", status=400, message="invalid repository name"
): ...


class NameUnknown(
    RegistryError, code="NAME_UNKNOWN", status=404, message="repository name not known to registry"
): ...


class SizeInvalid(
    RegistryError,
    code="SIZE_INVALID",
    status=400,
    message="provided length did not match content length",
): ...


class TagInvalid(
    RegistryError, code="TAG_INVALID", status=400, message="manifest tag did not match URI"
): ...


class Unauthorized(
    RegistryError, code="UNAUTHORIZED", status=401, message="authentication required"
): ...


class Denied(
    RegistryError, code="DENIED", status=403, message="requested access to the resource is denied"
): ...


# An immutable tag rule refused to move or remove a tag (cargohold/lifecycle_rules.py);
# the message names the rule. DENIED is the OCI code clients show as-is.
class TagImmutable(RegistryError, code="DENIED", status=403, message="the tag is immutable"): ...


# A trash restore that would move a tag which now points at another manifest (the
# operator repeats it with --force to move it back).
class TrashConflict(
    RegistryError, code="DENIED", status=409, message="the tag now points to another manifest"
): ...


# A delete in a namespace whose delete protection is on.
# A namespace's pull policy refused a manifest (gateway/signatures/policy.py); the message
# names the reason (unsigned, an unregistered key, a signature naming another digest).
class SignatureRequired(
    RegistryError, code="DENIED", status=403, message="the pull policy refused this manifest"
): ...


# A namespace's vulnerability policy refused an image (gateway/vulns/gate.py): the
# message names the advisories (CVE ids), or says the image is not scanned.
class VulnerabilityPolicy(
    RegistryError, code="DENIED", status=403, message="the vulnerability policy refused this image"
): ...


# A stored SBOM, report or vulnerability index is not what it claims (not JSON, a digest
# that differs): the image counts as not scanned (docs/supply-chain.md).
class ScanFailed(
    RegistryError, code="UNKNOWN", status=500, message="vulnerability scan failed"
): ...


class DeleteProtected(
    RegistryError, code="DENIED", status=403, message="deletes are disabled in this namespace"
): ...


# A push that would take a namespace's stored bytes past its quota (node/metadata/quotas.py):
# the message names the namespace, its usage and limit. DENIED, as for the other refusals
# by policy, is a code every client shows as-is and does not retry.
class QuotaExceeded(
    RegistryError, code="DENIED", status=403, message="the namespace's storage quota is exceeded"
): ...


class Unsupported(
    RegistryError, code="UNSUPPORTED", status=405, message="the operation is unsupported"
): ...


class TooManyRequests(
    RegistryError, code="TOOMANYREQUESTS", status=429, message="too many requests"
): ...


class RangeInvalid(
    RegistryError, code="BLOB_UPLOAD_INVALID", status=416, message="requested range not satisfiable"
): ...


class PaginationInvalid(
    RegistryError,
    code="PAGINATION_NUMBER_INVALID",
    status=400,
    message="invalid number of results requested",
): ...


class Unavailable(
    RegistryError,
    code="UNAVAILABLE",
    status=503,
    message="the storage cluster cannot serve this request now; retry later",
): ...


class Conflict(
    RegistryError, code="BLOB_UPLOAD_INVALID", status=409, message="concurrent change; retry"
): ...


class NotFound(RegistryError, code="NOT_FOUND", status=404, message="not found"): ...


# The admin API (gateway/admin_api/) was asked to create a user, group, robot or namespace
# that exists already.
class AlreadyExists(RegistryError, code="CONFLICT", status=409, message="already exists"): ...


# A request body that sent nothing for `gateway.body_idle_timeout_seconds` (gateway/body.py).
# OCI has no code for it (nor for the header timeout of gateway/connection.py, which uses
# the same one); an upload session stays usable at its last acknowledged size.
class RequestTimeout(
    RegistryError, code="TIMEOUT", status=408, message="request body timed out"
): ...


class RecipeConflict(
    RegistryError,
    code="BLOB_UPLOAD_INVALID",
    status=409,
    message="this digest is recorded with another chunk list",
):
    """A commit whose recipe differs from the one first recorded for its digest: refused
    (the first recipe is never replaced); the gateway verifies the recorded one
    (gateway/uploads.py, docs/security.md)."""


# Internal, never shown to a client: a `manifest_put` sent with `reuse_stored` (the gateway
# did not write the bytes, believing them stored) whose digest is not recorded in `blobs`
# with the recipe sent. The gateway then writes the chunks and sends the command again
# without the flag (gateway/manifests.py); the state is unchanged.
class ManifestBytesNotStored(
    RegistryError,
    code="UNKNOWN",
    status=500,
    message="the manifest's bytes are not stored with this recipe",
): ...


# Chunk store (node side): a chunk this node does not hold, a stored copy that failed its
# checksum (quarantined, to be repaired from another replica).
class ChunkMissing(
    RegistryError, code="BLOB_UNKNOWN", status=404, message="chunk not held by this node"
): ...


class ChunkCorrupt(
    RegistryError, code="UNKNOWN", status=500, message="stored chunk failed its checksum"
): ...


# No space for chunks: one node's answer (its disk figures in the detail; node/disk.py), and
# the gateway's refusal of a push that found fewer than W nodes with space (507 Insufficient
# Storage). OCI has no code for it; DENIED (the write is refused, as for a quota) is one
# clients know and do not retry at once. Distribution answers 500 UNKNOWN here.
class StorageFull(
    RegistryError,
    code="DENIED",
    status=507,
    message="the registry's storage is full; no push can be stored",
): ...


# No space for metadata: a node's Raft journal (or its term/vote or snapshot) cannot grow,
# so a manifest, tag or upload command is refused. Said to the client like StorageFull.
class MetadataStorageFull(
    RegistryError,
    code="DENIED",
    status=507,
    message="the registry's storage is full; no metadata can be stored",
): ...


# A metadata command or query whose arguments are malformed (a caller bug, not a client's).
class RequestInvalid(
    RegistryError, code="UNSUPPORTED", status=400, message="malformed metadata request"
): ...


_BY_NAME: dict[str, type[RegistryError]] = {
    cls.__name__: cls for cls in RegistryError.__subclasses__()
}


def error_class(name: str) -> type[RegistryError]:
    """The error class called `name` (as sent across gRPC), or RegistryError."""
    return _BY_NAME.get(name, RegistryError)


def to_grpc_details(err: RegistryError) -> str:
    """Encode a RegistryError as a gRPC details string: '<ClassName>:<message>'."""
    return f"{type(err).__name__}:{err.message}"


# The trailing-metadata key carrying a RegistryError's detail (JSON) across gRPC.
DETAIL_TRAILER = "cargohold-detail"
_MAX_TRAILER_CHARS = 4096


def to_grpc_trailer(err: RegistryError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries `err.detail` (empty when there is none or it is
    too large for a header)."""
    if err.detail is None:
        return ()
    try:
        text = json.dumps(err.detail, separators=(",", ":"))
    except (TypeError, ValueError):
        return ()
    return ((DETAIL_TRAILER, text),) if len(text) <= _MAX_TRAILER_CHARS else ()


def from_grpc_details(details: str | None, trailing: Any = None) -> RegistryError | None:
    """Decode what `to_grpc_details` (and `to_grpc_trailer`, given the call's trailing
    metadata) wrote; None when it is not one of ours."""
    if not details or ":" not in details:
        return None
    name, _, message = details.partition(":")
    cls = _BY_NAME.get(name)
    if cls is None:
        return None
    detail = None
    for key, value in trailing or ():
        if key == DETAIL_TRAILER:
            try:
                detail = json.loads(value)
            except ValueError:
                detail = None
    return cls(message, detail=detail)


def grpc_status_name(err: RegistryError) -> str:
    """The gRPC status code name (grpc.StatusCode member) a node answers `err` with.

    The table of protos/README.md: NOT_FOUND for ...Unknown and NotFound, FAILED_PRECONDITION
    for Conflict, RangeInvalid and ManifestBytesNotStored, INVALID_ARGUMENT for ...Invalid,
    UNAVAILABLE for Unavailable (outcome unknown, retry), DATA_LOSS for a corrupt chunk copy,
    RESOURCE_EXHAUSTED for no space (StorageFull and its metadata counterpart).
    """
    name = type(err).__name__
    if name in (
        "Conflict",
        "RangeInvalid",
        "RecipeConflict",
        "TrashConflict",
        "ManifestBytesNotStored",
    ):
        return "FAILED_PRECONDITION"
    if name == "Unavailable":
        return "UNAVAILABLE"
    if name == "ChunkCorrupt":
        return "DATA_LOSS"
    if name.endswith("StorageFull"):
        return "RESOURCE_EXHAUSTED"
    if name.endswith("Unknown") or name in ("NotFound", "ChunkMissing"):
        return "NOT_FOUND"
    if name.endswith("Invalid") or name == "ManifestTooLarge":
        return "INVALID_ARGUMENT"
    if name in ("Unauthorized", "Denied"):
        return "PERMISSION_DENIED"
    return "UNKNOWN"
