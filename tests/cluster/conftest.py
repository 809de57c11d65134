"""Fixtures of the cluster tests: an HTTP session, clusters with quiet background roles,
the chaos summary writer, small filesystems (tmpfs) and three namespaced test hosts for
partition tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cargohold_cli.devcluster import LocalCluster
from cluster import netns
from cluster.netns import NetnsLab
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.summary import RecordSummary, Summary, summary_path
from cluster.tmpfs import Tmpfs


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def quiet_cluster(
    make_cluster: Callable[..., LocalCluster],
) -> Callable[..., LocalCluster]:
    """`make_cluster` with 256 KiB chunks and repair/scrub passes only when triggered."""

    def start(
        nodes: int = 3,
        gateways: int = 1,
        gateway: dict[str, Any] | None = None,
        **cluster: Any,
    ) -> LocalCluster:
        """`cluster`: further LocalCluster arguments (replicas, local_reads...)."""
        extra: dict[str, dict[str, Any]] = {"node": dict(QUIET_ROLES)}
        if gateway:
            extra["gateway"] = dict(gateway)
        return make_cluster(
            nodes=nodes, gateways=gateways, chunk_size=CHUNK, extra=extra, **cluster
        )

    return start


@pytest.fixture
def record_summary(tmp_path: Path) -> RecordSummary:
    """Merge one section into the chaos summary (`$CARGOHOLD_CHAOS_SUMMARY`, else a file in
    the test's tmp dir); returns the Markdown file's path."""

    def record(section: str, data: dict[str, Any]) -> Path:
        summary = Summary("Cargohold chaos suite")
        summary.add(section, data)
        return summary.write(summary_path(tmp_path))

    return record


@pytest.fixture
def tmpfs() -> Iterator[Tmpfs]:
    """Small filesystems for node data dirs. Request it before `make_cluster`, so its
    teardown (unmount) runs after the cluster's."""
    disks = Tmpfs()
    try:
        yield disks
    finally:
        disks.unmount_all()


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Three test hosts in network namespaces (skips, visibly, where the machine forbids)."""
    if not netns.available():
        pytest.skip("network namespaces need root, iproute2 and iptables")
    hosts = NetnsLab(3)
    try:
        hosts.setup()
        yield hosts
    finally:
        hosts.teardown()
