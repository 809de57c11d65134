"""Request ids: one id per HTTP request, followed from the gateway into the node logs.

The gateway takes a client's `X-Request-Id` when it is sane (1-64 characters of
`[A-Za-z0-9._:-]`), else makes one, and keeps it in the `REQUEST_ID` context variable for
the request's task (tasks it starts inherit it). Every `log_event` line carries it as
`request_id=`. gRPC calls made while it is set carry it as metadata `x-request-id`
(`RequestIdClientInterceptor`, installed on every channel by `cargohold.grpc_channels`);
nodes set it again around the handling of that call (`RequestIdServerInterceptor`), so
their log lines name the HTTP request that caused them.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from cargohold.log import REQUEST_ID

__all__ = ["REQUEST_ID", "RequestIdClientInterceptor", "RequestIdServerInterceptor"]

HEADER = "X-Request-Id"
METADATA_KEY = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)

logger = logging.getLogger("cargohold.rpc")


def accept_or_new(incoming: str | None) -> str:
    """The client's id when it is sane, else a fresh random one."""
    if incoming and _SANE.fullmatch(incoming):
        return incoming
    return secrets.token_hex(8)


def _with_request_id(details: grpc.aio.ClientCallDetails, request_id: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(METADATA_KEY, request_id)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class RequestIdClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `x-request-id` to unary calls made while `REQUEST_ID` is set."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        request_id = REQUEST_ID.get()
        if request_id is not None:
            client_call_details = _with_request_id(client_call_details, request_id)
        return await continuation(client_call_details, request)


def _incoming(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == METADATA_KEY and isinstance(value, str) and _SANE.fullmatch(value):
            return value
    return None


class RequestIdServerInterceptor(grpc.aio.ServerInterceptor):
    """Sets `REQUEST_ID` around a unary call that carries `x-request-id`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        request_id = _incoming(handler_call_details)
        if handler is None or request_id is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = REQUEST_ID.set(request_id)
            try:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("rpc", extra={"fields": {"method": method}})
                return await inner(request, context)
            finally:
                REQUEST_ID.reset(token)

        return handler._replace(unary_unary=behaviour)
