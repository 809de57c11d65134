"""Latency of the gRPC calls this process makes to nodes, as a Prometheus histogram.

`LatencyInterceptor(address)` is installed on every client channel by
`cargohold.grpc_channels.open_channel`, so gateways (chunk and metadata calls) and nodes
(repair and scrub calls to peers) measure every unary call in the one place calls are made.
Labels: `target` (the channel's node address: bounded by the cluster size), `method` (the
RPC, e.g. `Chunks/Put`) and `code` (the gRPC status name). The histogram child of each
(method, code) is looked up once per channel and kept, so a call costs one clock read and
one uncontended observe. A cancelled call (a hedged read that lost) is counted as CANCELLED
and cancelled on the wire too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Histogram, disable_created_metrics

# No `*_created` series: every process's metrics start with the process anyway.
disable_created_metrics()

GRPC_CLIENT_SECONDS = Histogram(
    "cargohold_grpc_client_seconds",
    "Duration of unary gRPC calls to a node, by target node address, method and status",
    ["target", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def short_method(method: str | bytes) -> str:
    """'/cargohold.v1.Chunks/Put' -> 'Chunks/Put'."""
    text = method.decode() if isinstance(method, bytes) else method
    service, _, name = text.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}"


class LatencyInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Observes each unary call's duration into `GRPC_CLIENT_SECONDS`."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._children: dict[tuple[Any, str], Any] = {}

    def _child(self, method: Any, code: str) -> Any:
        key = (method, code)
        child = self._children.get(key)
        if child is None:
            child = GRPC_CLIENT_SECONDS.labels(self._address, short_method(method), code)
            self._children[key] = child
        return child

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        start = time.perf_counter()
        call = await continuation(client_call_details, request)
        code = "OK"
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except asyncio.CancelledError:
            code = "CANCELLED"
            call.cancel()
            raise
        finally:
            self._child(client_call_details.method, code).observe(time.perf_counter() - start)
        # Done: awaiting it again answers the same response or raises the same error.
        return call
