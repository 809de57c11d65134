"""Fixtures shared by the whole suite: real clusters started with LocalCluster.

`cluster` is one 3-node (R=3, W=2) cluster with two gateways, started once per test session
and shared by every test that only needs "a working registry" (tests use unique repository
names, so they do not see each other). Tests that kill or restart processes must start
their own with `make_cluster` so that they never disturb the shared one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hang_watch import HangWatch

from cargohold_cli.devcluster import LocalCluster

_HANG_WATCH = HangWatch()


def pytest_configure(config: pytest.Config) -> None:
    # Output capture is off while plugins configure: this is the real stderr, kept past
    # the capture of each test (as pytest's faulthandler keeps it).
    stderr = os.dup(2)
    _HANG_WATCH.write = lambda text: os.write(stderr, text.encode(errors="replace")) and None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Each test (set-up and teardown included) is timed by the hang watch (hang_watch.py)."""
    _HANG_WATCH.begin(item.nodeid)
    try:
        return (yield)
    finally:
        _HANG_WATCH.end()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("shared-cluster"), nodes=3, gateways=2)
    try:
        local.start(timeout=90)
        yield local
    finally:
        local.stop()


@pytest.fixture
def registry(cluster: LocalCluster) -> str:
    """Base URL of the shared cluster's first gateway."""
    return cluster.gateway_url


@pytest.fixture
def repo_name() -> str:
    """A repository name no other test uses."""
    return f"test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start private clusters for tests that break things; all are stopped afterwards."""
    started: list[LocalCluster] = []

    def _make(start: bool = True, **kwargs: Any) -> LocalCluster:
        local = LocalCluster(tmp_path / f"cluster-{len(started)}", **kwargs)
        started.append(local)
        if start:
            local.start(timeout=90)
        return local

    try:
        yield _make
    finally:
        for local in started:
            local.kill_all()
