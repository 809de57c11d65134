"""Latency of the gRPC calls this process makes to nodes, as a Prometheus histogram.

`TimedChannel(channel, address)` wraps every client channel `cargohold.grpc_channels`
opens, so gateways (chunk and metadata calls) and nodes (repair and scrub calls to peers)
measure every unary call in the one place channels are made. Like the call signing there,
it wraps the multicallables the stubs create instead of installing a grpc.aio client
interceptor (which costs several times more per call, bench/auth_cost.py): a call is timed
from its creation until its `await` ends. Labels: `target` (the node address: bounded by
the cluster size), `method` (the RPC, e.g. `Chunks/Put`) and `code` (the gRPC status
name; CANCELLED for a hedged read that lost). The histogram child of each (method, code)
is looked up once per channel and kept, so a call costs one clock read and one
uncontended observe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
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


class _Series:
    """The histogram children of one channel, by (method, code), looked up once."""

    __slots__ = ("_address", "_children")

    def __init__(self, address: str) -> None:
        self._address = address
        self._children: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        child = self._children.get(key)
        if child is None:
            child = GRPC_CLIENT_SECONDS.labels(self._address, short_method(method), code)
            self._children[key] = child
        child.observe(seconds)


class _TimedCall:
    """A unary call whose `await` is timed; everything else is the call's own."""

    __slots__ = ("_call", "_method", "_series", "_start")

    def __init__(self, call: Any, series: _Series, method: str, start: float) -> None:
        self._call = call
        self._series = series
        self._method = method
        self._start = start

    def __await__(self) -> Generator[Any, None, Any]:
        code = "OK"
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self._series.observe(self._method, code, time.perf_counter() - self._start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _TimedCallable:
    __slots__ = ("_inner", "_method", "_series")

    def __init__(self, inner: Any, method: str, series: _Series) -> None:
        self._inner = inner
        self._method = method
        self._series = series

    def __call__(self, *args: Any, **kwargs: Any) -> _TimedCall:
        start = time.perf_counter()
        return _TimedCall(self._inner(*args, **kwargs), self._series, self._method, start)


class TimedChannel:
    """A grpc.aio channel whose unary-unary calls are timed into `GRPC_CLIENT_SECONDS`."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self._channel = channel
        self._series = _Series(address)

    def unary_unary(self, method: str | bytes, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        name = method.decode() if isinstance(method, bytes) else method
        return _TimedCallable(inner, name, self._series)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> TimedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)
