"""`GET /_cargohold/api/v1/audit` (gateway/admin_api/audit.py): admin changes through the
API carry their caller; the log pages across sealed segments and the in-memory tail,
filtered; only cluster admins may read it."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from fakecluster import FakeCluster
from test_admin_api import api, cluster, gw, token  # noqa: F401 - fixtures

from cargohold import audit
from cargohold.config import Config
from gateway.activity import ACTIVITY, AuditSealer
from gateway.context import GatewayContext


async def _all(gw: TestClient, auth: str, query: str = "", n: int = 100) -> list[dict[str, Any]]:  # noqa: F811
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await api(gw, "GET", f"/audit?n={n}&after={after}{query}", auth)
        assert status == 200, page
        out += page["records"]
        if page["next"] is None:
            return out
        assert page["next"] > after
        after = page["next"]


async def test_audit_pages_across_segments_and_filters(
    gw: TestClient,  # noqa: F811
    cluster: FakeCluster,  # noqa: F811
) -> None:
    root = f"Bearer {await token(gw, 'root')}"
    lead = f"Bearer {await token(gw, 'lead')}"
    dev = f"Bearer {await token(gw, 'dev')}"
    assert (await api(gw, "POST", "/users", root, {"name": "eve"}))[0] == 201
    status, _ = await api(gw, "PUT", "/namespaces/team/grants/users/eve", lead, {"role": "reader"})
    assert status == 200
    meta = GatewayContext(cfg=Config(), cluster=cluster).meta  # type: ignore[arg-type]
    events = [
        audit.event("pull", time=100.0 + i, actor="ci", repository=f"team/app{i % 3}")
        for i in range(250)
    ]
    await meta.audit_append(events)
    cfg = Config().audit
    cfg.segment_records = 60
    assert await AuditSealer(cfg, meta, cluster.store_bytes).run_once() >= 3
    assert len(cluster.state.audit.segments) >= 3

    # The logins above wait in this gateway's batch: send them now, so that no flush lands
    # between the two listings below.
    await gw.app[ACTIVITY].flush()
    everything = await _all(gw, root)
    head = cluster.state.audit.head_seq
    assert [r["seq"] for r in everything] == list(range(1, head + 1))
    admin = [r for r in everything if r["action"] == "admin"]
    assert [(r["actor"], r["reference"], r["detail"]) for r in admin][-2:] == [
        ("root", "user:eve", "created disabled=false admin=false"),
        ("lead", "namespace:team", "grant eve reader"),
    ]
    assert {r["client"] for r in admin[-2:]} == {"127.0.0.1"}
    # Small pages give the same records; filters apply across segments and tail.
    assert await _all(gw, root, n=7) == everything
    app1 = await _all(gw, root, "&repo=team/app1&action=pull")
    assert len(app1) == len([e for e in events if e[6] == "team/app1"])
    since = await _all(gw, root, "&action=pull&since=300&until=310")
    assert [r["time"] for r in since] == [300.0 + i for i in range(10)]
    # Only cluster admins.
    status, _ = await api(gw, "GET", "/audit", dev)
    assert status == 403
    status, _ = await api(gw, "GET", "/audit?n=0", root)
    assert status == 400
