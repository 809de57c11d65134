"""The Docker engine against the registry: push a fresh multi-layer image, push it under
a second repository (cross-repository mount), remove it locally, pull it back by tag and
by digest through the other gateway, and run it to check its files' content.

Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP works without any
daemon configuration; the engine runs in the host's network namespace here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.images import LayeredImage, build_layered
from clients.registries import RegistryTarget
from clients.tools import docker

pytestmark = [pytest.mark.clients, pytest.mark.docker, pytest.mark.cluster]

PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


@pytest.fixture
def fresh_image(docker_engine: None, tmp_path: Path) -> Iterator[LayeredImage]:
    """An image no other test has: its layers are unknown to the registry and engine."""
    image = build_layered(tmp_path)
    try:
        yield image
    finally:
        image.remove()


def _push(image: LayeredImage, ref: str) -> str:
    docker("tag", image.tag, ref)
    image.extra_tags.append(ref)
    out = docker("push", ref)
    match = PUSH_DIGEST.search(out)
    assert match, f"no digest in docker push output:\n{out}"
    return match.group(1)


def _run_cat(ref: str, path: str) -> str:
    return docker("run", "--rm", "--network", "none", ref, "cat", path)


def _run_sha256(ref: str, path: str) -> str:
    out = docker("run", "--rm", "--network", "none", ref, "sha256sum", path)
    return out.split()[0]


def test_push_mount_pull_run(
    registry_target: RegistryTarget, fresh_image: LayeredImage, unique_repo: str
) -> None:
    host, other = registry_target.host, registry_target.other_host
    ref_a = f"{host}/{unique_repo}/app:v1"
    ref_b = f"{host}/{unique_repo}/copy:v1"
    digest_a = _push(fresh_image, ref_a)
    digest_b = _push(fresh_image, ref_b)
    assert digest_a == digest_b, "the same image pushed twice must have one digest"
    # Pushing an unchanged image again uploads nothing and keeps the digest.
    assert _push(fresh_image, ref_a) == digest_a

    # Forget it locally (every tag, so its layers go too), then pull via the other gateway.
    fresh_image.remove()
    fresh_image.extra_tags.clear()
    by_tag = f"{other}/{unique_repo}/app:v1"
    docker("pull", by_tag)
    fresh_image.extra_tags.append(by_tag)
    repo_digests = docker("image", "inspect", "-f", "{{json .RepoDigests}}", by_tag)
    assert digest_a in repo_digests

    assert _run_cat(by_tag, "/data/hello.txt").encode() == fresh_image.files["/data/hello.txt"]
    assert _run_sha256(by_tag, "/data/big.bin") == fresh_image.sha256("/data/big.bin")

    # By digest, from the second repository, after dropping the tag-pulled copy.
    docker("rmi", "-f", by_tag)
    fresh_image.extra_tags.clear()
    by_digest = f"{other}/{unique_repo}/copy@{digest_b}"
    docker("pull", by_digest)
    fresh_image.extra_tags.append(by_digest)
    assert _run_sha256(by_digest, "/data/small.bin") == fresh_image.sha256("/data/small.bin")
    assert _run_sha256(by_digest, "/data/big.bin") == fresh_image.sha256("/data/big.bin")
