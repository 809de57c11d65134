"""What every request handler may reach: the config, the cluster client, `meta` (the typed
metadata calls of cargohold/metadata_api.py over that client) and the running upload
hashes.

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
from gateway.config_infos import ConfigInfos
from gateway.hash_cache import HashCache
from gateway.quotas import QuotaView

if TYPE_CHECKING:
    from gateway.cluster import ClusterClient


@dataclass
class GatewayContext:
    cfg: Config
    cluster: ClusterClient
    # Typed metadata calls over the cluster client's raw command/query (linearizable reads).
    meta: Metadata = field(init=False)
    # The running sha256 of the uploads this gateway served (gateway/hash_cache.py).
    upload_hashes: HashCache = field(init=False)
    # The namespace quotas, for refusing an upload before reading it (gateway/quotas.py).
    quotas: QuotaView = field(init=False)
    # What search read from image config blobs, by config digest (gateway/config_infos.py).
    config_infos: ConfigInfos = field(init=False)

    def __post_init__(self) -> None:
        self.meta = Metadata(self.cluster)
        self.upload_hashes = HashCache(self.cfg.gateway.upload_hash_cache_entries)
        self.quotas = QuotaView(self.meta, self.cfg.lifecycle.quota_refresh_seconds)
        self.config_infos = ConfigInfos(self.cfg.gateway.config_info_cache_entries)


CONTEXT: web.AppKey[GatewayContext] = web.AppKey("cargohold_context", GatewayContext)


def context(request: web.Request) -> GatewayContext:
    return request.app[CONTEXT]
