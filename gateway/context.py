"""What every request handler may reach: the config and the cluster client.

One `GatewayContext` per gateway process, stored on the aiohttp application under
`CONTEXT`; handlers fetch it with `context(request)`. Nothing here outlives a restart
that matters: caches are only caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from cargohold.config import Config

if TYPE_CHECKING:
    from gateway.cluster import ClusterClient


@dataclass
class GatewayContext:
    cfg: Config
    cluster: ClusterClient


CONTEXT: web.AppKey[GatewayContext] = web.AppKey("cargohold_context", GatewayContext)


def context(request: web.Request) -> GatewayContext:
    return request.app[CONTEXT]
