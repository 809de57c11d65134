"""What the chunk writer and the chunk reader share: the client's parts, one log shape."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cargohold.config import Config
from cargohold.grpc_channels import ChannelPool
from cargohold.log import log_event
from gateway.cluster.background import BackgroundTasks
from gateway.cluster.membership import Member, MembershipView
from gateway.cluster.placement import Placement

logger = logging.getLogger("cargohold.gateway.cluster")


@dataclass(eq=False)
class ClusterParts:
    """Config, node channels, membership view, placement and background tasks."""

    cfg: Config
    pool: ChannelPool
    view: MembershipView
    placement: Placement
    background: BackgroundTasks

    def __post_init__(self) -> None:
        """Where a subclass sets up its own state."""


def log_chunk_event(event: str, level: int, member: Member, chunk_id: bytes, **fields: str) -> None:
    """One chunk-path event: which node, which chunk, and what else there is to say."""
    log_event(logger, event, level, node=member.id, chunk=chunk_id.hex(), **fields)
