"""Upload ids: self-validating, signed tokens, so starting an upload costs no Raft command.

An id is the URL-safe base64 (no padding, so no `/`, `+` or `=`) of

    version (1 byte) | created (8 bytes, big-endian unix seconds) | random (16 bytes)
    | tag (16 bytes: HMAC-SHA256 truncated, over version|created|random|repository)

keyed with `cluster.secret`. The repository name is bound by the tag but not carried, so
an id is only valid under the repository it was issued for. Any gateway of the cluster
checks an id without state; a forged, truncated, foreign-repository or expired
(`gateway.upload_expiry_seconds`) id is `BlobUploadUnknown`. The Raft state learns about
an upload only at its first non-empty PATCH (`upload_append`); until then `upload_get`
answers `{"state": "new"}`.

Expiry is counted from creation, the nodes' `node.upload_expire_after` from the last
touch, so with equal settings (the defaults) Raft never forgets an open session whose id
is still valid; keep `gateway.upload_expiry_seconds <= node.upload_expire_after`, or an old
id could find its session forgotten and start over as "new". A closed session is kept
only among the newest 4,096 closed ones (docs/metadata.md): an older completed id is
"new" again, and starting over on it uploads a blob as a fresh session would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cargohold.errors import BlobUploadUnknown

_VERSION = 1
_HEADER = struct.Struct(">BQ")
_RANDOM_LEN = 16
_TAG_LEN = 16
_RAW_LEN = _HEADER.size + _RANDOM_LEN + _TAG_LEN
# Ids from a gateway whose clock runs ahead are still accepted within this skew.
_CLOCK_SKEW_SECONDS = 300


@dataclass(frozen=True)
class UploadId:
    """A validated upload id."""

    value: str
    repo: str
    created: int


def _tag(secret: str, body: bytes, repo: str) -> bytes:
    mac = hmac.new(secret.encode(), body + b"\x00" + repo.encode(), hashlib.sha256)
    return mac.digest()[:_TAG_LEN]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_upload_id(secret: str, repo: str, now: float | None = None) -> UploadId:
    """Issue a fresh id for an upload into `repo`."""
    created = int(time.time() if now is None else now)
    body = _HEADER.pack(_VERSION, created) + os.urandom(_RANDOM_LEN)
    value = _b64(body + _tag(secret, body, repo))
    return UploadId(value=value, repo=repo, created=created)


def parse_upload_id(
    secret: str, repo: str, value: str, expiry_seconds: float, now: float | None = None
) -> UploadId:
    """Validate `value` as an id issued for `repo` and not expired; else BlobUploadUnknown."""
    unknown = BlobUploadUnknown(detail={"upload": value[:128] if value else value})
    if not value or len(value) > 2 * _RAW_LEN or not value.isascii():
        raise unknown
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise unknown from None
    if len(raw) != _RAW_LEN or _b64(raw) != value:
        raise unknown
    body, tag = raw[:-_TAG_LEN], raw[-_TAG_LEN:]
    version, created = _HEADER.unpack_from(body)
    if version != _VERSION or not hmac.compare_digest(tag, _tag(secret, body, repo)):
        raise unknown
    current = time.time() if now is None else now
    if current - created > expiry_seconds or created - current > _CLOCK_SKEW_SECONDS:
        raise unknown
    return UploadId(value=value, repo=repo, created=created)
