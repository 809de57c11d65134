"""Who asked what: request ids and the access log.

`request_id_middleware` (the outermost middleware) gives every request an id
(`cargohold.request_ids.accept_or_new` of its `X-Request-Id`), keeps it in the
`REQUEST_ID` context variable for the request's task, so gRPC calls carry it to the
nodes and log lines name it, and `add_request_id_header` echoes it as `X-Request-Id`.

`AccessLogger` writes one `access` line per request on the `cargohold.access` logger
(on by default: `gateway.access_log`), through the project's key=value formatter:
request id, client address (gateway/client_address.py: the peer, or X-Forwarded-For
from a trusted proxy), user (empty when anonymous or without auth), method, route
template (not the path: no repository names or digests in it), repository, status, bytes
in and out, duration and user agent. Successful blob and manifest pulls (GET/HEAD) are
sampled: each is logged with probability `gateway.access_log_pull_sample` (1 = all).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from cargohold.request_ids import HEADER, REQUEST_ID, accept_or_new
from gateway.client_address import TrustedProxies, client_address

ACCESS_LOGGER = "cargohold.access"
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("cargohold_request_id", str)
# The authenticated user, set by gateway/auth/middleware.py ("" = anonymous or no auth).
USER_KEY: web.RequestKey[str] = web.RequestKey("cargohold_user", str)
_PULL_ROUTES = ("/manifests/{reference}", "/blobs/{digest}")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = accept_or_new(request.headers.get(HEADER))
    request[REQUEST_ID_KEY] = request_id
    REQUEST_ID.set(request_id)  # this request's own task: nothing to reset
    return await handler(request)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: `X-Request-Id` on every routed response."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[HEADER] = request_id


def _route(request: Any) -> str:
    match_info = getattr(request, "_match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "-"


def access_logger_class(
    pull_sample: float, proxies: TrustedProxies | None = None
) -> type[AbstractAccessLogger]:
    """The access logger class aiohttp instantiates, with the pull sampling rate and the
    trusted proxies (gateway/client_address.py) baked in."""

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: Any, response: web.StreamResponse, time: float) -> None:
            route = _route(request)
            if (
                pull_sample < 1.0
                and request.method in ("GET", "HEAD")
                and response.status < 400
                and route.endswith(_PULL_ROUTES)
                and random.random() >= pull_sample
            ):
                return
            match_info = getattr(request, "_match_info", None)
            content = getattr(request, "_payload", None)
            fields = {
                "request_id": request.get(REQUEST_ID_KEY) or "-",
                "client": client_address(request, proxies),
                "user": request.get(USER_KEY) or "",
                "method": request.method,
                "route": route,
                "repo": (match_info.get("name") if match_info is not None else None) or "",
                "status": response.status,
                "bytes_in": getattr(content, "total_bytes", 0),
                "bytes_out": response.body_length,
                "duration_ms": round(time * 1000, 2),
                "user_agent": request.headers.get("User-Agent", ""),
            }
            self.logger.info("access", extra={"fields": fields})

        @property
        def enabled(self) -> bool:
            return self.logger.isEnabledFor(logging.INFO)

    return AccessLogger
