"""gRPC client channels to nodes: one place for credentials and channel options.

Gateways (`gateway/cluster.py`) and nodes talking to their peers (`node/peers.py`) open
their channels here, so message limits, HTTP/2 frame size, reconnect backoff and mTLS are
the same on every client side (the server side is `node/server.py`). Every channel carries
the current request id to the node (`cargohold.request_ids`).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from cargohold.config import Config
from cargohold.request_ids import RequestIdClientInterceptor


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


def open_channel(
    address: str, cfg: Config, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `address` with the cluster's options and credentials.

    Pass `credentials` from one `channel_credentials(cfg)` call when opening many channels,
    so the PEM files are read once.
    """
    options = channel_options(cfg)
    interceptors = [RequestIdClientInterceptor()]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
