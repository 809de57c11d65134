"""Request ids: one id per HTTP request, followed from the gateway into the node logs.

The gateway takes a client's `X-Request-Id` when it is sane (1-64 characters of
`[A-Za-z0-9._:-]`), else makes one, and keeps it in the `REQUEST_ID` context variable for
the request's task (tasks it starts inherit it). Every log line carries it as
`request_id=` (cargohold/log.py). The gateway's calls to nodes carry it as gRPC metadata
`x-request-id` (`call_metadata()`, at the call sites of gateway/cluster/); a node sets it
again for the call it serves (`adopt`, in its metadata and chunk services), so its log
lines name the HTTP request that caused them. A packed call (`Chunks.PutMany`,
`Metadata.Commands`) carries one id per request in its message instead (`request_ids`),
set in each request's task on the node (`adopt_id`).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from cargohold.log import REQUEST_ID

__all__ = ["REQUEST_ID", "accept_or_new", "adopt", "adopt_id", "call_metadata"]

HEADER = "X-Request-Id"
METADATA_KEY = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)


def accept_or_new(incoming: str | None) -> str:
    """The client's id when it is sane, else a fresh random one."""
    if incoming and _SANE.fullmatch(incoming):
        return incoming
    return secrets.token_hex(8)


def call_metadata() -> tuple[tuple[str, str], ...] | None:
    """The gRPC metadata that carries the current request id (None outside a request).

    Passed explicitly on the gateway's calls to nodes: a grpc.aio client interceptor
    would do it for every call, but measured here it added 0.1-0.2 ms to each small call.
    """
    request_id = REQUEST_ID.get()
    return None if request_id is None else ((METADATA_KEY, request_id),)


def adopt(context: Any) -> None:
    """Set `REQUEST_ID` from a served call's metadata; each call runs in its own task, so
    the value ends with the call. Sane ids only (the 1-64 characters above)."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and isinstance(value, str) and _SANE.fullmatch(value):
            REQUEST_ID.set(value)
            return


def adopt_id(request_id: str) -> None:
    """Set `REQUEST_ID` to a packed request's id (`request_ids` of a packed call: a pack
    has no single `x-request-id`), when it is sane; call it in that request's own task."""
    if request_id and _SANE.fullmatch(request_id):
        REQUEST_ID.set(request_id)
