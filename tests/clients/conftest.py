"""Fixtures of the real-client tests: the registry under test, tools, offline images."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.images import LayeredImage, build_layered
from clients.registries import RegistryTarget, distribution, target_kind
from clients.tools import docker_answers, have


@pytest.fixture(scope="session")
def registry_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryTarget]:
    """The registry clients talk to: Cargohold's shared cluster, or Distribution."""
    if target_kind() == "distribution":
        with distribution(tmp_path_factory.mktemp("distribution")) as target:
            yield target
        return
    cluster = request.getfixturevalue("cluster")
    hosts = tuple(url.removeprefix("http://") for url in cluster.gateway_urls)
    yield RegistryTarget("cargohold", hosts)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not docker_answers():
        pytest.skip("no Docker engine answering (docker info failed)")


@pytest.fixture(scope="session")
def skopeo_tool() -> None:
    if not have("skopeo"):
        pytest.skip("skopeo missing: make system-deps")


@pytest.fixture(scope="session")
def layered_image(
    docker_engine: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LayeredImage]:
    """One three-layer image shared by the tests that only read it."""
    image = build_layered(tmp_path_factory.mktemp("image-ctx"))
    try:
        yield image
    finally:
        image.remove()


@pytest.fixture
def fresh_image(docker_engine: None, tmp_path: Path) -> Iterator[LayeredImage]:
    """A three-layer image of this test's own (1 MiB largest layer), removed after."""
    image = build_layered(tmp_path, big_size=1024 * 1024)
    try:
        yield image
    finally:
        image.remove()


@pytest.fixture
def unique_repo() -> str:
    return f"clients/{uuid.uuid4().hex[:10]}"
