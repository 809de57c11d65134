"""Typed errors for the whole system, and the one table that maps them to OCI error codes.

Handlers and stores raise these; `gateway/errors.py` turns any `RegistryError` into the
OCI error JSON (`{"errors":[{"code","message","detail"}]}`) with the status below.
Node-side failures cross gRPC as a status code plus the OCI code in the details string
(see `to_grpc_details`/`from_grpc_details`), so the gateway can re-raise the same type.
"""

from __future__ import annotations

from typing import Any


class CargoholdError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(CargoholdError):
    """The configuration is unusable; raised at start-up only."""


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


def _error(name: str, code: str, status: int, message: str) -> type[RegistryError]:
    return type(
        name, (RegistryError,), {"code": code, "status": status, "default_message": message}
    )


BlobUnknown = _error("BlobUnknown", "BLOB_UNKNOWN", 404, "blob unknown to registry")
BlobUploadInvalid = _error("BlobUploadInvalid", "BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BlobUploadUnknown = _error(
    "BlobUploadUnknown", "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"
)
DigestInvalid = _error(
    "DigestInvalid", "DIGEST_INVALID", 400, "provided digest did not match uploaded content"
)
ManifestBlobUnknown = _error(
    "ManifestBlobUnknown",
    "MANIFEST_BLOB_UNKNOWN",
    400,
    "manifest references a blob unknown to the registry",
)
ManifestInvalid = _error("ManifestInvalid", "MANIFEST_INVALID", 400, "manifest invalid")
ManifestUnknown = _error("ManifestUnknown", "MANIFEST_UNKNOWN", 404, "manifest unknown")
ManifestTooLarge = _error("ManifestTooLarge", "MANIFEST_INVALID", 413, "manifest too large")
NameInvalid = _error("NameInvalid", "NAME_INVALID", 400, "invalid repository name")
NameUnknown = _error("NameUnknown", "NAME_UNKNOWN", 404, "repository name not known to registry")
SizeInvalid = _error(
    "SizeInvalid", "SIZE_INVALID", 400, "provided length did not match content length"
)
TagInvalid = _error("TagInvalid", "TAG_INVALID", 400, "manifest tag did not match URI")
Unauthorized = _error("Unauthorized", "UNAUTHORIZED", 401, "authentication required")
Denied = _error("Denied", "DENIED", 403, "requested access to the resource is denied")
Unsupported = _error("Unsupported", "UNSUPPORTED", 405, "the operation is unsupported")
TooManyRequests = _error("TooManyRequests", "TOOMANYREQUESTS", 429, "too many requests")
RangeInvalid = _error("RangeInvalid", "BLOB_UPLOAD_INVALID", 416, "requested range not satisfiable")
PaginationInvalid = _error(
    "PaginationInvalid", "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)
Unavailable = _error(
    "Unavailable",
    "UNAVAILABLE",
    503,
    "the storage cluster cannot serve this request now; retry later",
)
Conflict = _error("Conflict", "BLOB_UPLOAD_INVALID", 409, "concurrent change; retry")
NotFound = _error("NotFound", "NOT_FOUND", 404, "not found")
# Chunk store (node side): a chunk this node does not hold, a stored copy that failed its
# checksum (quarantined, to be repaired from another replica), a full LMDB map.
ChunkMissing = _error("ChunkMissing", "BLOB_UNKNOWN", 404, "chunk not held by this node")
ChunkCorrupt = _error("ChunkCorrupt", "UNKNOWN", 500, "stored chunk failed its checksum")
StorageFull = _error("StorageFull", "UNKNOWN", 507, "node storage is full")
# A metadata command or query whose arguments are malformed (a caller bug, not a client's).
RequestInvalid = _error("RequestInvalid", "UNSUPPORTED", 400, "malformed metadata request")

_BY_NAME: dict[str, type[RegistryError]] = {
    cls.__name__: cls for cls in RegistryError.__subclasses__()
}


def error_class(name: str) -> type[RegistryError]:
    """The error class called `name` (as sent across gRPC), or RegistryError."""
    return _BY_NAME.get(name, RegistryError)


def to_grpc_details(err: RegistryError) -> str:
    """Encode a RegistryError as a gRPC details string: '<ClassName>:<message>'."""
    return f"{type(err).__name__}:{err.message}"


def from_grpc_details(details: str | None) -> RegistryError | None:
    """Decode what `to_grpc_details` wrote; None when it is not one of ours."""
    if not details or ":" not in details:
        return None
    name, _, message = details.partition(":")
    cls = _BY_NAME.get(name)
    return cls(message) if cls else None


def grpc_status_name(err: RegistryError) -> str:
    """The gRPC status code name (grpc.StatusCode member) a node answers `err` with.

    The table of protos/README.md: NOT_FOUND for ...Unknown and NotFound, FAILED_PRECONDITION
    for Conflict and RangeInvalid, INVALID_ARGUMENT for ...Invalid, UNAVAILABLE for
    Unavailable (outcome unknown, retry), DATA_LOSS for a corrupt chunk copy.
    """
    name = type(err).__name__
    if name in ("Conflict", "RangeInvalid"):
        return "FAILED_PRECONDITION"
    if name == "Unavailable":
        return "UNAVAILABLE"
    if name == "ChunkCorrupt":
        return "DATA_LOSS"
    if name == "StorageFull":
        return "RESOURCE_EXHAUSTED"
    if name.endswith("Unknown") or name in ("NotFound", "ChunkMissing"):
        return "NOT_FOUND"
    if name.endswith("Invalid") or name == "ManifestTooLarge":
        return "INVALID_ARGUMENT"
    if name in ("Unauthorized", "Denied"):
        return "PERMISSION_DENIED"
    return "UNKNOWN"
