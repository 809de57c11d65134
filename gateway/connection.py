"""The HTTP connection layer under the routes: what happens before a handler runs.

`GatewayRunner` is aiohttp's `AppRunner` with its own protocol (`GatewayProtocol`):

- a request the parser refuses (bad request line, bad header, line too long) or that
  claims HTTP/0.9 (a request line without a version, which aiohttp would answer with an
  `HTTP/0.9` status line) is answered with OCI error JSON, status 400 (or the parser's),
  `Connection: close`; logged as one `http.bad_request` line, at most
  `gateway.bad_request_log_per_second` of them (the count of the others rides on the next
  line as `suppressed=`), the parser's message at debug, never a traceback;
- headers must be complete within `gateway.header_timeout_seconds` of a request's first
  byte (slowloris): else 408 and the connection closes;
- an idle keep-alive connection closes after `gateway.keepalive_timeout_seconds`;
- `gateway.max_connections_per_client` (0 = no limit) open connections per client
  address; one more is closed at once;
- a connection buffers about `gateway.read_buffer_bytes` of unread body before its socket
  stops being read (aiohttp's read_bufsize): what a client waiting for the body budget
  costs; a body granted budget reads in larger pieces (gateway/body.py).
Body timeouts and the memory budget are the handlers' (gateway/body.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from cargohold.config import GatewayConfig
from cargohold.log import log_event
from gateway.errors import API_VERSION, API_VERSION_HEADER, error_body

logger = logging.getLogger("cargohold.gateway.http")

_CODES = {400: "BAD_REQUEST", 408: "TIMEOUT", 413: "SIZE_INVALID", 431: "BAD_REQUEST"}


class BadRequestLog:
    """`http.bad_request` lines, at most `per_second` a second (a token bucket)."""

    def __init__(self, per_second: float) -> None:
        self._rate = max(0.0, per_second)
        self._tokens = self._rate
        self._last = time.monotonic()
        self.suppressed = 0

    def note(self, client: str | None, status: int, reason: str) -> None:
        log_event(logger, "http.bad_request.detail", logging.DEBUG, client=client, error=reason)
        now = time.monotonic()
        self._tokens = min(max(self._rate, 1.0), self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        log_event(
            logger,
            "http.bad_request",
            logging.WARNING,
            client=client,
            status=status,
            suppressed=self.suppressed,
        )
        self.suppressed = 0


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A complete `Connection: close` error response, for when no request object exists."""
    body = error_body(_CODES.get(status, "UNKNOWN"), message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        f"{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"
    )
    return head.encode() + body


class GatewayProtocol(RequestHandler):
    """aiohttp's per-connection protocol with the rules of the module docstring."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._bad_log = manager.bad_requests
        self._client: str | None = None
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None

    # -- connection limits -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else None
        limit = self._limits.max_connections_per_client
        server = self._server()
        if limit > 0 and self._client is not None and server is not None:
            if server.per_client[self._client] >= limit:
                log_event(logger, "http.client_limit", logging.INFO, client=self._client)
                self.force_close()
                return
            server.per_client[self._client] += 1
            self._counted = True

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._server()
        if self._counted and server is not None and self._client is not None:
            server.per_client[self._client] -= 1
            if server.per_client[self._client] <= 0:
                del server.per_client[self._client]
            self._counted = False
        self._cancel_header_timer()
        self._last_payload = None  # it refers back to this protocol: no cycle left behind
        super().connection_lost(exc)

    def _server(self) -> GatewayServer | None:
        manager = self._manager
        return manager if isinstance(manager, GatewayServer) else None

    # -- header timeout and HTTP/0.9 ---------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if (
            data
            and self._header_timer is None
            and (self._last_payload is None or self._last_payload.is_eof())
            and self._limits.header_timeout_seconds > 0
        ):
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout_seconds, self._headers_too_slow
            )
        parsed = self._request_count
        super().data_received(data)
        new = self._request_count - parsed
        if new <= 0:
            return
        self._cancel_header_timer()
        for index in range(len(self._messages) - new, len(self._messages)):
            message, payload = self._messages[index]
            version = getattr(message, "version", None)
            if version is not None and tuple(version) < (1, 0):
                error = BadHttpMessage("HTTP/0.9 requests are not supported")
                self._messages[index] = (
                    _ErrInfo(status=400, exc=error, message=error.message),
                    payload,
                )
        self._last_payload = self._messages[-1][1] if self._messages else None

    def _process_keepalive(self) -> None:
        if self._header_timer is not None:
            return  # headers are arriving: the header timeout decides (with a 408)
        super()._process_keepalive()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        self._bad_log.note(self._client, 408, "request headers too slow")
        transport.write(raw_error(408, "Request Timeout", "request headers not received in time"))
        self.force_close()

    # -- parser errors ---------------------------------------------------------------
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """OCI JSON instead of aiohttp's plain text, one quiet log line, connection closed."""
        if status >= 500:
            log_event(logger, "http.handler_error", logging.ERROR, status=status, error=repr(exc))
        else:
            self._bad_log.note(self._client, status, message or repr(exc))
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        text = "bad request" if status < 500 else "internal server error"
        response = web.Response(
            status=status,
            body=error_body(_CODES.get(status, "UNKNOWN"), text),
            content_type="application/json",
            headers={API_VERSION_HEADER: API_VERSION},
        )
        response.force_close()
        return response


class GatewayServer(web.Server):
    """aiohttp's `Server` making `GatewayProtocol`s; keeps the per-client counts."""

    def __init__(self, *args: Any, limits: GatewayConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.bad_requests = BadRequestLog(limits.bad_request_log_per_second)
        self.per_client: collections.Counter[str] = collections.Counter()

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An `AppRunner` whose server is a `GatewayServer` configured from `limits`."""

    def __init__(self, app: web.Application, limits: GatewayConfig, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.keepalive_timeout_seconds)
        kwargs.setdefault("read_bufsize", limits.read_buffer_bytes)
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GatewayServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            limits=self._limits,
            **server._kwargs,
        )
