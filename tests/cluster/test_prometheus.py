"""A real Prometheus scraping a real cluster (issue 10): 3 nodes and a gateway started by
LocalCluster, a `prometheus` process of the test's own (config, data dir and port under
tmp, 1 s scrapes, the project's alert rules loaded). Every target is up; every series the
dashboard and the rules in deploy/ name is exported, and each dashboard query evaluates.
After a few blobs, a SIGKILLed node makes `cargohold_node_repair_chunks_below_replicas`
rise on the others, and once it is back and repair has run, the metric returns to 0."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster, free_port
from cluster.admin_kit import admin
from cluster.chunkcheck import push_blob
from cluster.prometheus import (
    Prometheus,
    binary,
    dashboard_exprs,
    deploy_metric_names,
    wait_for,
)
from cluster.roles import trigger, wait_answering
from cluster.shapes import MiB

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.slow]

BELOW_R = "max(cargohold_node_repair_chunks_below_replicas)"


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, list[str]]], Prometheus]]:
    if binary() is None:
        pytest.skip("no prometheus binary (scripts/system-deps.sh installs it)")
    started: list[Prometheus] = []

    def start(jobs: dict[str, list[str]]) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", jobs)
        started.append(prom)
        return prom.start()

    try:
        yield start
    finally:
        for prom in started:
            prom.close()


def _jobs(cluster: LocalCluster) -> dict[str, list[str]]:
    return {
        "cargohold-node": [cluster.node_metrics(i) for i in range(cluster.node_count)],
        "cargohold-gateway": [cluster.gateway_metrics(j) for j in range(cluster.gateway_count)],
    }


def _repair(cluster: LocalCluster, nodes: list[int]) -> None:
    for i in nodes:
        trigger(cluster, i)


def _all_up(prom: Prometheus, count: int) -> bool:
    targets = prom.targets()
    return len(targets) == count and all(t["health"] == "up" for t in targets)


async def test_prometheus_sees_every_target_and_chunks_below_r_after_a_kill(
    quiet_cluster: Callable[..., LocalCluster],
    prometheus_factory: Callable[[dict[str, list[str]]], Prometheus],
    http: aiohttp.ClientSession,
) -> None:
    cluster = quiet_cluster(nodes=3, gateways=1)
    prom = prometheus_factory(_jobs(cluster))
    wait_for(lambda: _all_up(prom, 4), "all 4 targets up")
    assert {
        "CargoholdNodeDown",
        "CargoholdNoLeader",
        "CargoholdChunksBelowReplicas",
        "CargoholdNodeDiskAbove80Percent",
        "CargoholdGateway5xxRate",
    } <= prom.rule_names()
    async with http.get(f"{cluster.gateway_url}/readyz") as resp:
        assert resp.status == 200 and json.loads(await resp.read())["status"] == "ready"

    for k in range(3):
        await push_blob(http, cluster.gateway_url, "metrics/below-r", os.urandom(MiB + k))
    _repair(cluster, [0, 1, 2])
    wait_for(lambda: prom.scalar(BELOW_R) == 0, "every chunk at R copies before the kill")
    wait_for(
        lambda: prom.scalar('sum(cargohold_gateway_requests_total{method="PUT"})') or 0,
        "the gateway's pushes counted",
    )
    leaders = prom.scalar("sum(cargohold_node_raft_role{role='leader'})")
    assert leaders == 1
    # deploy/: every series the dashboard and the alert rules name is really exported,
    # and every dashboard expression is PromQL this Prometheus evaluates.
    # A webhook endpoint (nobody listens there), so that the webhook series the alert
    # rules name exist: they are per endpoint.
    await admin(cluster, "webhooks", "add", "alerts", f"http://127.0.0.1:{free_port()}/hook")
    names = deploy_metric_names()
    assert "cargohold_node_disk_free_bytes" in names and len(names) > 30
    for name in sorted(names):
        wait_for(lambda n=name: prom.query(f'count({{__name__="{n}"}})'), f"a {name} series")
    for expr in dashboard_exprs():
        prom.query(expr)  # raises on a query Prometheus refuses

    cluster.kill_node(2, signal.SIGKILL)
    _repair(cluster, [0, 1])
    below = wait_for(lambda: prom.scalar(BELOW_R), "chunks below R after the kill")
    assert below > 0
    wait_for(lambda: prom.scalar('sum(up{job="cargohold-node"})') == 2, "the dead node down")

    cluster.start_node(2)
    wait_answering(cluster, 2)
    cluster.wait_ready(60)

    def repaired() -> bool:
        # A peer channel may still be in its reconnect backoff for the first pass.
        _repair(cluster, [0, 1, 2])
        return prom.scalar(BELOW_R) == 0 and _all_up(prom, 4)

    wait_for(repaired, "chunks below R back to 0 after restart and repair", interval=2.0)
