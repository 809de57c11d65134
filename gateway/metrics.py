"""The gateway's Prometheus metrics: what it counts and the `/metrics` handler.

`metrics_middleware` (the outermost middleware) counts every routed request once, when it
ends: by route *template* (`/v2/{name}/blobs/{digest}`, never the path, so no repository
names or digests become label values), method (the standard ones, else `other`) and status;
its duration, request body bytes read and response bytes written (for a streamed
response, what went to the socket, headers included; else the body). Requests and uploads
in flight are gauges, and so is the body budget's use (`watch_budget`). Requests the HTTP
parser refuses before routing are not counted here (gateway/connection.py logs them).
gRPC calls to nodes are measured per node by `cargohold.grpc_metrics`, and the process
collector adds memory, CPU and open files.

Everything lives in prometheus_client's default registry: one gateway per process.
Series are looked up once per (route, method) and kept, so a request costs a few
uncontended observes, not a label lookup each.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.body import BodyBudget

# No `*_created` series: every series starts with the process anyway.
disable_created_metrics()

_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
_UPLOAD_SUFFIXES = ("/blobs/uploads/", "/blobs/uploads", "/blobs/uploads/{upload}")
# Status label of a request whose client went away before it was answered (nginx's 499).
CLIENT_CLOSED = "499"

REQUESTS = Counter(
    "cargohold_gateway_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "cargohold_gateway_request_seconds",
    "HTTP request duration (handler start to last byte written), by route template and method",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BYTES_IN = Counter(
    "cargohold_gateway_request_bytes_total",
    "Request body bytes read from clients, by route template and method",
    ["route", "method"],
)
BYTES_OUT = Counter(
    "cargohold_gateway_response_bytes_total",
    "Response bytes written to clients (a streamed response's headers included), by route "
    "template and method",
    ["route", "method"],
)
IN_FLIGHT = Gauge("cargohold_gateway_requests_in_flight", "HTTP requests being handled now")
UPLOADS_IN_FLIGHT = Gauge(
    "cargohold_gateway_uploads_in_flight",
    "Upload requests (POST, PATCH, PUT of a blob upload) being handled now",
)
BUFFERED_BYTES = Gauge(
    "cargohold_gateway_buffered_request_bytes",
    "Request body bytes reserved in the gateway's body budget now (gateway/body.py)",
)
BUFFERED_LIMIT = Gauge(
    "cargohold_gateway_buffered_request_bytes_limit",
    "The body budget, gateway.max_buffered_bytes (0 = no limit)",
)

# Access revisions an authenticated request was checked against (docs/security.md
# "Revocation at once"): `lease` trusted without a round trip, `read` a leader read
# (no fresh lease: the fallback).
AUTH_REVISIONS = Counter(
    "cargohold_gateway_auth_revisions_total",
    "Access revisions requests were checked against, by source (lease or read)",
    ["source"],
)
AUTH_REVISION_LEASED = AUTH_REVISIONS.labels(source="lease")
AUTH_REVISION_READ = AUTH_REVISIONS.labels(source="read")

# GET/HEAD by digest of a manifest or blob (`record`): existence answered from the
# gateway's cache under the lease's unlink revision, within the TTL without a lease, or
# by a linearizable query (gateway/manifest_cache.py `RecordCache`).
RECORD_LOOKUPS = Counter(
    "cargohold_gateway_record_lookups_total",
    "Blob and manifest lookups by digest, by record and how they were answered",
    ["record", "source"],
)


def watch_budget(budget: BodyBudget) -> None:
    """Report this gateway's body budget (read at scrape time, on the loop)."""
    BUFFERED_BYTES.set_function(lambda: budget.used)
    BUFFERED_LIMIT.set(budget.limit)


class _Series:
    """The metric children of one (route, method), looked up once."""

    __slots__ = ("bytes_in", "bytes_out", "method", "route", "seconds", "statuses", "upload")

    def __init__(self, route: str, method: str) -> None:
        self.route, self.method = route, method
        self.seconds = REQUEST_SECONDS.labels(route, method)
        self.bytes_in = BYTES_IN.labels(route, method)
        self.bytes_out = BYTES_OUT.labels(route, method)
        self.statuses: dict[int | str, Any] = {}
        self.upload = method in ("POST", "PATCH", "PUT") and route.endswith(_UPLOAD_SUFFIXES)

    def count(self, status: int | str) -> None:
        child = self.statuses.get(status)
        if child is None:
            child = self.statuses[status] = REQUESTS.labels(self.route, self.method, str(status))
        child.inc()


_SERIES: dict[tuple[str, str], _Series] = {}


def route_template(request: web.Request) -> str:
    """The matched route's template, or `unmatched` (a 404/405 from the router)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def series(route: str, method: str) -> _Series:
    method = method if method in _METHODS else "other"
    found = _SERIES.get((route, method))
    if found is None:
        found = _SERIES[(route, method)] = _Series(route, method)
    return found


def _bytes_out(request: web.Request, response: web.StreamResponse) -> int:
    if response.prepared:
        return response.body_length
    if request.method == "HEAD":
        return 0
    return response.content_length or 0


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    s = series(route_template(request), request.method)
    start = time.perf_counter()
    IN_FLIGHT.inc()
    if s.upload:
        UPLOADS_IN_FLIGHT.inc()
    status: int | str = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_CLOSED
        raise
    finally:
        IN_FLIGHT.dec()
        if s.upload:
            UPLOADS_IN_FLIGHT.dec()
        s.seconds.observe(time.perf_counter() - start)
        s.count(status)
        s.bytes_in.inc(request.content.total_bytes)
        if response is not None:
            s.bytes_out.inc(_bytes_out(request, response))


async def metrics_handler(request: web.Request) -> web.Response:
    """`GET /metrics`: the Prometheus text format."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
