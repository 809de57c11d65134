"""Fixtures of the cluster tests: three namespaced test hosts for partition tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster import netns
from cluster.netns import NetnsLab


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
