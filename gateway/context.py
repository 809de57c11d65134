"""What every request handler may reach: the config, the cluster client and `meta`, the
typed metadata calls (cargohold/metadata_api.py) over that client.

One `GatewayContext` per gateway process, stored on the aiohttp application under
`CONTEXT`; handlers fetch it with `context(request)`. Nothing here outlives a restart
that matters: caches are only caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from cargohold.config import Config
from cargohold.metadata_api import Metadata

if TYPE_CHECKING:
    from gateway.cluster import ClusterClient


@dataclass
class GatewayContext:
    cfg: Config
    cluster: ClusterClient
    # Typed metadata calls over the cluster client's raw command/query (linearizable reads).
    meta: Metadata = field(init=False)

    def __post_init__(self) -> None:
        self.meta = Metadata(self.cluster)


CONTEXT: web.AppKey[GatewayContext] = web.AppKey("cargohold_context", GatewayContext)


def context(request: web.Request) -> GatewayContext:
    return request.app[CONTEXT]
