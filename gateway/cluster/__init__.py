"""The gateway's cluster client: the only code in the gateway that speaks gRPC to nodes.

Handlers use `ClusterClient` (`client.py`); the modules beside it each own one job:
`membership` (members, leader, refresh), `failures` (nodes that failed recently),
`placement` (where a chunk lives), `metadata` (commands and queries with retries),
`writes` (quorum writes with spill-over) and `reads` (hedged, shared, verified reads).
"""

from gateway.cluster.client import ClusterClient
from gateway.cluster.membership import Member

__all__ = ["ClusterClient", "Member"]
