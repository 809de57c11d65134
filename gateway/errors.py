"""The one place where failures become HTTP: OCI error JSON, status and headers.

`error_middleware` wraps every handler:

- a `cargohold.errors.RegistryError` becomes `{"errors":[{"code","message","detail"}]}`
  with the error's status and headers; 503 and 429 always carry `Retry-After`;
- aiohttp's own HTTP errors (no route: 404, wrong method: 405, body too large: 413) become
  the same JSON shape (codes `NOT_FOUND`, `UNSUPPORTED`, `SIZE_INVALID`), keeping `Allow`;
- anything else is a bug: logged once with `log_event` and answered 500 JSON.

If a handler fails after its response was already started (a streamed blob whose client
went away, a replica lost mid-stream) nothing can be sent any more: the exception is
re-raised so aiohttp drops the connection, which is the only honest signal left.

`add_api_version_header` (an `on_response_prepare` hook) puts
`Docker-Distribution-API-Version: registry/2.0` on every response, errors included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cargohold.errors import RegistryError
from cargohold.log import log_event
from gateway.context import CONTEXT

logger = logging.getLogger("cargohold.gateway")

API_VERSION_HEADER = "Docker-Distribution-API-Version"
API_VERSION = "registry/2.0"
_PREPARED: web.RequestKey[bool] = web.RequestKey("cargohold_response_prepared", bool)
_DEFAULT_RETRY_AFTER = 1

# aiohttp's own HTTP errors, rendered with these OCI-style codes.
_HTTP_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED", 413: "SIZE_INVALID"}
_KEEP_HEADERS = ("Allow",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    entry = {"code": code, "message": message, "detail": detail if detail is not None else {}}
    return json.dumps({"errors": [entry]}).encode()


def _retry_after(request: web.Request) -> str:
    ctx = request.app.get(CONTEXT)
    seconds = ctx.cfg.gateway.retry_after_seconds if ctx is not None else _DEFAULT_RETRY_AFTER
    return str(seconds)


def error_response(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OCI error response; HEAD requests get the same status and headers, no body."""
    out = dict(headers or {})
    if status in (429, 503) and "Retry-After" not in out:
        out["Retry-After"] = _retry_after(request)
    out["Content-Type"] = "application/json"
    return web.Response(status=status, body=error_body(code, message, detail), headers=out)


def registry_error_response(request: web.Request, err: RegistryError) -> web.Response:
    return error_response(request, err.status, err.code, err.message, err.detail, err.headers)


def _http_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "UNKNOWN")
    headers = {k: exc.headers[k] for k in _KEEP_HEADERS if k in exc.headers}
    return error_response(request, exc.status, code, exc.reason.lower(), None, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as err:
        if request.get(_PREPARED):
            raise
        return registry_error_response(request, err)
    except web.HTTPException as exc:
        if exc.status < 400 or request.get(_PREPARED):
            raise
        return _http_error_response(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away; there is nobody to answer.
        raise
    except Exception as exc:
        if request.get(_PREPARED):
            log_event(
                logger,
                "response.aborted",
                logging.WARNING,
                method=request.method,
                path=request.path,
                error=repr(exc),
            )
            raise
        log_event(
            logger,
            "request.failed",
            logging.ERROR,
            method=request.method,
            path=request.path,
            error=repr(exc),
            traceback=traceback.format_exc(),
        )
        return error_response(request, 500, "UNKNOWN", "internal server error")


async def add_api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: the API version header on every response."""
    request[_PREPARED] = True
    response.headers[API_VERSION_HEADER] = API_VERSION
