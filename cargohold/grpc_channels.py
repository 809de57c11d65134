"""gRPC client channels to nodes: credentials, channel options and the per-node channel.

Gateways (`gateway/cluster/`) and nodes talking to their peers (`node/peers.py`) open
their channels here, so message limits, HTTP/2 frame size, reconnect backoff and mTLS are
the same on every client side (the server side is `node/server.py`), and both hold them
in the same `ChannelPool` of `NodeChannel`s. Every channel measures each call's latency
(`cargohold.grpc_metrics`); the gateway's calls pass the request id themselves
(`cargohold.request_ids.call_metadata`).

Every call is signed for the process's role (`cfg.role`: gateway, node or admin) with the
per-call token of cargohold/cluster_auth.py, added by `SignedChannel` when the config
holds a secret or a credential; with mTLS the client certificate names the role as well.
`open_sync_channel` is the same for blocking callers (the admin CLI, the dev launcher's
readiness checks, tests).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio

from cargohold.cluster_auth import METADATA_KEY, Credential, client_credential, sign
from cargohold.config import Config
from cargohold.grpc_metrics import TimedChannel
from protos import registry_pb2, registry_pb2_grpc

# The status codes of a call that did not reach a node, or got no answer in time: the
# node may be down; another node may serve the call.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def channel_credentials(cfg: Config) -> grpc.ChannelCredentials | None:
    """mTLS credentials when `cluster.tls_ca` is set, else None (plaintext)."""
    c = cfg.cluster
    if not c.tls_ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(c.tls_ca).read_bytes(),
        private_key=Path(c.tls_key).read_bytes() if c.tls_key else None,
        certificate_chain=Path(c.tls_cert).read_bytes() if c.tls_cert else None,
    )


def channel_options(cfg: Config) -> list[tuple[str, int]]:
    limit = cfg.node.grpc_max_message
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Large HTTP/2 frames: MiB-sized chunk messages in few frames (the node's server
        # sets the same; bench/README.md has what it gained).
        ("grpc.http2.max_frame_size", cfg.node.grpc_max_frame_size),
        # Come back quickly when a restarted node listens again.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _method(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _signed(metadata: Any, credential: Credential, method: str | bytes) -> list[tuple[str, str]]:
    return [*(metadata or ()), (METADATA_KEY, sign(credential, _method(method)))]


class _SignedCallable:
    """A multicallable that adds a fresh token to every call's metadata."""

    __slots__ = ("_credential", "_inner", "_method")

    def __init__(self, inner: Any, method: str, credential: Credential) -> None:
        self._inner = inner
        self._method = method
        self._credential = credential

    def __call__(self, *request: Any, metadata: Any = None, **kwargs: Any) -> Any:
        token = (METADATA_KEY, sign(self._credential, self._method))
        return self._inner(*request, metadata=(*(metadata or ()), token), **kwargs)


class SignedChannel:
    """A grpc.aio channel whose unary-unary, unary-stream and stream-stream calls are signed.

    Wrapping the multicallables the stubs create costs one Python call per RPC; a grpc.aio
    client interceptor runs every call through an extra task (bench/auth_cost.py measures).
    """

    def __init__(self, channel: grpc.aio.Channel, credential: Credential) -> None:
        self._channel = channel
        self._credential = credential

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        return _SignedCallable(inner, _method(method), self._credential)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _SignedCallable(inner, _method(method), self._credential)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _SignedCallable(inner, _method(method), self._credential)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> SignedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class _SyncDetails(
    collections.namedtuple(
        "_SyncDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncSigner(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, credential: Credential) -> None:
        self._credential = credential

    def _details(self, d: Any) -> grpc.ClientCallDetails:
        return _SyncDetails(
            d.method,
            d.timeout,
            _signed(d.metadata, self._credential, d.method),
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def open_channel(
    address: str,
    cfg: Config,
    credentials: grpc.ChannelCredentials | None = None,
    role: str | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `address` with the cluster's options and credentials, its
    calls signed as `role` (default `cfg.role`; a `SignedChannel` when there is a key).

    Pass `credentials` from one `channel_credentials(cfg)` call when opening many channels,
    so the PEM files are read once.
    """
    options = channel_options(cfg)
    if credentials is None:
        raw = grpc.aio.insecure_channel(address, options=options)
    else:
        raw = grpc.aio.secure_channel(address, credentials, options=options)
    channel = cast(grpc.aio.Channel, TimedChannel(raw, address))
    credential = client_credential(cfg, role or cfg.role)
    if credential is None:
        return channel
    return cast(grpc.aio.Channel, SignedChannel(channel, credential))


def open_sync_channel(address: str, cfg: Config, role: str | None = None) -> grpc.Channel:
    """A blocking channel to `address`, TLS and call signing as in `open_channel`."""
    options = channel_options(cfg)
    credentials = channel_credentials(cfg)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    credential = client_credential(cfg, role or cfg.role)
    if credential is None:
        return channel
    return grpc.intercept_channel(channel, _SyncSigner(credential))


class NodeChannel:
    """One node's channel and the stubs every client side uses on it.

    Besides the generated stubs, three raw Chunks calls skip the protobuf runtime for the
    chunk bytes (`cargohold.wire`): `put_serialized` takes an already serialized
    PutChunkRequest (a chunk is encoded once and the same bytes go to all R replicas),
    `put_many_serialized` a PutManyRequest framing such requests (`encode_put_many`), and
    `get_serialized` answers the serialized GetChunkReply for `decode_get_reply`.
    """

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.chunks = registry_pb2_grpc.ChunksStub(channel)
        self.metadata = registry_pb2_grpc.MetadataStub(channel)
        self.admin = registry_pb2_grpc.AdminStub(channel)
        self.put_serialized = channel.unary_unary(
            "/cargohold.v1.Chunks/Put",
            request_serializer=None,
            response_deserializer=registry_pb2.PutChunkReply.FromString,
        )
        # A pack of serialized PutChunkRequests (`cargohold.wire.encode_put_many`).
        self.put_many_serialized = channel.unary_unary(
            "/cargohold.v1.Chunks/PutMany",
            request_serializer=None,
            response_deserializer=registry_pb2.PackReply.FromString,
        )
        self.get_serialized = channel.unary_unary(
            "/cargohold.v1.Chunks/Get",
            request_serializer=registry_pb2.GetChunkRequest.SerializeToString,
            response_deserializer=None,
        )


class ChannelPool:
    """One `NodeChannel` per node address, opened on first use, closed together."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._credentials = channel_credentials(cfg)
        self._nodes: dict[str, NodeChannel] = {}

    def node(self, address: str) -> NodeChannel:
        node = self._nodes.get(address)
        if node is None:
            channel = open_channel(address, self._cfg, self._credentials)
            node = self._nodes[address] = NodeChannel(address, channel)
        return node

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.channel.close()
