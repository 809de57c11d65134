"""`GET /_cargohold/api/v1/webhooks` and `.../dead-letters` (gateway/admin_api/webhooks.py):
the replicated endpoints with masked headers, dead letters; cluster admins only."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from fakecluster import FakeCluster
from test_admin_api import api, cluster, gw, token  # noqa: F401 - fixtures


async def test_webhooks_are_listed_masked_for_cluster_admins_only(
    gw: TestClient,  # noqa: F811
    cluster: FakeCluster,  # noqa: F811
) -> None:
    endpoint = {"name": "ci", "url": "http://ci.test/e", "headers": {"Authorization": "Bearer s"}}
    cluster.state.apply("webhook_put", {"endpoint": endpoint})
    cluster.state.apply("webhook_lease", {"holder": "gw1", "now": 0.0, "ttl": 15.0})
    head = cluster.state.audit.head_seq
    args = {"name": "ci", "holder": "gw1", "after": head, "to": head, "keep": 10}
    cluster.state.apply("webhook_advance", {**args, "dead": [[head, 5.0, 3, "HTTP 500"]]})
    root = f"Bearer {await token(gw, 'root')}"
    status, listing = await api(gw, "GET", "/webhooks", root)
    assert status == 200
    (row,) = listing["endpoints"]
    assert row["endpoint"]["headers"] == {"Authorization": "***"}
    assert row["endpoint"]["origin"] == "cluster" and row["dead_letters"] == 1
    assert listing["lease"]["holder"] == "gw1"
    status, letters = await api(gw, "GET", "/webhooks/ci/dead-letters", root)
    assert status == 200
    assert letters == [{"seq": head, "time": 5.0, "attempts": 3, "reason": "HTTP 500"}]
    lead = f"Bearer {await token(gw, 'lead')}"  # a namespace admin, not a cluster admin
    assert (await api(gw, "GET", "/webhooks", lead))[0] == 403
    assert (await api(gw, "GET", "/webhooks", None))[0] == 401
