"""The items of a packed call's answer (`PackReply`/`PackItem`, protos/README.md), both ways.

A packed call (`Chunks.PutMany`, `Metadata.Commands`) answers one `PackItem` per request:
code 0 and the serialized reply of the single call, or the status code, details string and
detail JSON the single call would have ended with (`cargohold.grpc_status.abort_with`:
`to_grpc_details`, and the `cargohold-detail` trailer of `to_grpc_trailer`). The node makes
them with `ok_item` / `error_item` / `status_item`; the gateway turns an error item back
into the `grpc.aio.AioRpcError` the single call would have raised (`item_error`), so its
callers handle it unchanged (`from_grpc_details` reads the same details and trailer).
"""

from __future__ import annotations

import grpc
import grpc.aio

from cargohold.errors import DETAIL_TRAILER, RegistryError, to_grpc_details, to_grpc_trailer
from cargohold.grpc_status import grpc_status
from protos import registry_pb2 as pb

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def ok_item(reply: bytes) -> pb.PackItem:
    """A request that succeeded: its single call's serialized reply."""
    return pb.PackItem(reply=reply)


def status_item(code: grpc.StatusCode, details: str, detail: str = "") -> pb.PackItem:
    """A request that failed with `code` and `details` (and the detail trailer's JSON)."""
    return pb.PackItem(code=code.value[0], details=details, detail=detail)


def error_item(err: RegistryError) -> pb.PackItem:
    """A request that failed with `err`: what `abort_with(context, err)` would have sent."""
    detail = "".join(value for key, value in to_grpc_trailer(err) if key == DETAIL_TRAILER)
    return status_item(grpc_status(err), to_grpc_details(err), detail)


def item_code(item: pb.PackItem) -> grpc.StatusCode:
    """The item's status code (UNKNOWN for a value grpc does not define)."""
    return _CODES.get(item.code, grpc.StatusCode.UNKNOWN)


def status_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The `AioRpcError` of a call that ended with `code` and `details`, no metadata."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def item_error(item: pb.PackItem) -> grpc.aio.AioRpcError:
    """The `AioRpcError` the item's single call would have raised."""
    trailer = grpc.aio.Metadata((DETAIL_TRAILER, item.detail)) if item.detail else None
    return grpc.aio.AioRpcError(
        item_code(item), grpc.aio.Metadata(), trailer or grpc.aio.Metadata(), item.details
    )


def copy_error(exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """A fresh `AioRpcError` equal to `exc`: one per request of a pack that failed as a
    whole, so no two callers raise (and chain tracebacks onto) the same object."""
    return grpc.aio.AioRpcError(
        exc.code(),
        exc.initial_metadata(),
        exc.trailing_metadata(),
        exc.details(),
        exc.debug_error_string(),
    )
