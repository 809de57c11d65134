"""A real Prometheus scraping the compose cluster (cluster-compose.yml, issue 10): the
test's own `prometheus` process on the Docker host scrapes every node (`<ip>:9101`) and
gateway (`<ip>:9102`) on the compose network, with deploy/'s alert rules loaded. Every
target is up; after a few blobs pushed through the load balancer, `docker kill` of a node
makes `cargohold_node_repair_chunks_below_replicas` rise on the others, and once it is
started again and repair has run (`cargohold admin repair --wait`, inside a node), the
metric returns to 0. Every wait is a bounded poll.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from clients.compose import GATEWAYS, NODES, ComposeCluster, compose_command, ensure_image
from clients.tools import docker, docker_answers

from cargohold_cli.devcluster import free_port
from cluster.chunkcheck import push_blob
from cluster.prometheus import Prometheus, binary, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.cluster]

IMAGE = os.environ.get("CARGOHOLD_IMAGE", "cargohold:latest")
BELOW_R = "max(cargohold_node_repair_chunks_below_replicas)"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    if not docker_answers():
        pytest.skip("no Docker engine answering")
    if compose_command() is None:
        pytest.skip("neither `docker compose` nor `docker-compose` available")
    if binary() is None:
        pytest.skip("no prometheus binary (scripts/system-deps.sh installs it)")
    ensure_image(IMAGE)
    cluster = ComposeCluster(
        project=f"cargohold-prom-{uuid.uuid4().hex[:8]}",
        port=free_port(),
        net_prefix=f"172.29.{random.randint(100, 250)}",
        image=IMAGE,
        log_dir=tmp_path_factory.mktemp("compose-prom-logs"),
    )
    try:
        cluster.up()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def prometheus(compose: ComposeCluster, tmp_path: Path) -> Iterator[Prometheus]:
    jobs = {
        "cargohold-node": [f"{compose.ip(n)}:9101" for n in NODES],
        "cargohold-gateway": [f"{compose.ip(g)}:9102" for g in GATEWAYS],
    }
    prom = Prometheus(tmp_path / "prometheus", jobs)
    try:
        yield prom.start()
    finally:
        prom.close()


@pytest.fixture
async def http(compose: ComposeCluster) -> AsyncIterator[aiohttp.ClientSession]:
    # The cluster runs token auth: an admin token for the test repository on every request.
    auth = compose.bearer(["repository:metrics/compose:pull,push"])
    async with aiohttp.ClientSession(headers=auth) as session:
        yield session


def _repair(compose: ComposeCluster, nodes: tuple[str, ...]) -> None:
    """`cargohold admin repair --wait` on the given nodes, run inside the first of them."""
    addresses = ",".join(f"{compose.ip(n)}:7001" for n in nodes)
    docker(
        "exec",
        compose.container(nodes[0]),
        "cargohold",
        "admin",
        "repair",
        "--wait",
        "--nodes",
        addresses,
        timeout=300,
        check=False,
    )


def _all_up(prom: Prometheus, count: int) -> bool:
    targets = prom.targets()
    return len(targets) == count and all(t["health"] == "up" for t in targets)


async def test_prometheus_scrapes_the_compose_cluster_and_sees_chunks_below_r(
    compose: ComposeCluster, prometheus: Prometheus, http: aiohttp.ClientSession
) -> None:
    prom = prometheus
    wait_for(lambda: _all_up(prom, len(NODES) + len(GATEWAYS)), "every compose target up", 120)
    base = f"http://{compose.registry}"
    for k in range(3):
        await push_blob(http, base, "metrics/compose", os.urandom(5 * MiB + k))
    _repair(compose, NODES)
    wait_for(lambda: prom.scalar(BELOW_R) == 0, "every chunk at R copies before the kill", 120)

    victim = compose.container("node3")
    docker("kill", victim)
    try:
        _repair(compose, ("node1", "node2"))
        below = wait_for(lambda: prom.scalar(BELOW_R), "chunks below R after the kill", 120)
        assert below > 0
    finally:
        if not compose.running(victim):
            docker("start", victim)
    compose.wait_healthy("node3")
    compose.wait_ready()

    def repaired() -> bool:
        _repair(compose, NODES)
        return prom.scalar(BELOW_R) == 0 and _all_up(prom, len(NODES) + len(GATEWAYS))

    wait_for(repaired, "chunks below R back to 0 after restart and repair", 180, interval=2.0)
