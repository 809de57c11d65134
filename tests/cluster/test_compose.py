"""Issue-4 acceptance on cluster-compose.yml: 3 nodes, 2 gateways and HAProxy in Docker.

One compose project (own name, port and network) is started for the module from the
offline-built image and removed afterwards with its volumes. The tests push real images
with the Docker engine through the load balancer and check what comes back:

The cluster runs as deployed: token auth, the generated `admin` (read from the node
that created it), `docker login` before the rest:

- push a multi-layer image, remove it locally, pull it, run it;
- without credentials a push is refused: 401 with the Bearer challenge naming the
  load balancer's token realm and the push scope, and `docker push` fails; the gateway
  logs the real client, not the load balancer (X-Forwarded-For from trusted HAProxy);
- `docker kill` one gateway and one node, pull again;
- `docker network disconnect` the Raft leader while images are being pushed, reconnect:
  every push that was acknowledged pulls back intact;
- restart every node and gateway one container at a time while a client pulls in a
  loop: not one pull fails.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients.compose import GATEWAYS, NODES, ComposeCluster, compose_command, ensure_image
from clients.images import LayeredImage, build_layered
from clients.tools import ToolError, docker, docker_answers, run

from cargohold_cli.devcluster import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.cluster]

IMAGE = os.environ.get("CARGOHOLD_IMAGE", "cargohold:latest")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    if not docker_answers():
        pytest.skip("no Docker engine answering")
    if compose_command() is None:
        pytest.skip("neither `docker compose` nor `docker-compose` available")
    ensure_image(IMAGE)
    suffix = uuid.uuid4().hex[:8]
    cluster = ComposeCluster(
        project=f"cargohold-test-{suffix}",
        port=free_port(),
        net_prefix=f"172.29.{random.randint(100, 250)}",
        image=IMAGE,
        log_dir=tmp_path_factory.mktemp("compose-logs"),
    )
    try:
        cluster.up()
        cluster.login()  # token auth is the compose default
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def images(tmp_path: Path) -> Iterator[list[LayeredImage]]:
    """Images built by a test; every tag they got is removed afterwards."""
    built: list[LayeredImage] = []
    try:
        yield built
    finally:
        for image in built:
            image.remove()


def _new_image(images: list[LayeredImage], tmp_path: Path, big_size: int = 9 * MiB) -> LayeredImage:
    image = build_layered(tmp_path, big_size=big_size)
    images.append(image)
    return image


def _push(image: LayeredImage, ref: str) -> None:
    docker("tag", image.tag, ref)
    image.extra_tags.append(ref)
    docker("push", ref)


def _forget_locally(image: LayeredImage) -> None:
    image.remove()
    image.extra_tags.clear()


def _pull_and_check(image: LayeredImage, ref: str) -> None:
    docker("pull", ref)
    image.extra_tags.append(ref)
    # One container: the hello text on its own line, then the checksums.
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        ref,
        "sh",
        "-c",
        "cat /data/hello.txt; sha256sum /data/big.bin /data/small.bin",
    )
    hello, *sum_lines = out.strip().splitlines()
    assert (hello + "\n").encode() == image.files["/data/hello.txt"]
    sums = {path: digest for digest, path in (line.split() for line in sum_lines)}
    assert sums["/data/big.bin"] == image.sha256("/data/big.bin")
    assert sums["/data/small.bin"] == image.sha256("/data/small.bin")


def test_push_pull_run_through_lb(
    compose: ComposeCluster, images: list[LayeredImage], tmp_path: Path
) -> None:
    image = _new_image(images, tmp_path)
    ref = f"{compose.registry}/accept/basic:v1"
    _push(image, ref)
    _forget_locally(image)
    _pull_and_check(image, ref)


def test_anonymous_push_is_refused_with_the_challenge(
    compose: ComposeCluster, images: list[LayeredImage], tmp_path: Path
) -> None:
    req = urllib.request.Request(
        f"http://{compose.registry}/v2/accept/anon/blobs/uploads/", data=b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{compose.registry}/auth/token",service="cargohold",'
        'scope="repository:accept/anon:pull,push"'
    )
    # A real client without credentials (its own empty config) cannot push either.
    image = _new_image(images, tmp_path, big_size=MiB)
    ref = f"{compose.registry}/accept/anon:v1"
    docker("tag", image.tag, ref)
    image.extra_tags.append(ref)
    out = run(["docker", "--config", str(tmp_path / "anon"), "push", ref], check=False)
    # docker words the 401 after its anonymous token as "requested access ... is denied".
    assert re.search(
        r"unauthorized|authentication required|access to the resource is denied", out, re.I
    ), out
    # The gateways name the client HAProxy saw, never HAProxy itself.
    clients: set[str] = set()
    for gateway in GATEWAYS:
        logs = docker("logs", compose.container(gateway), check=False)
        clients |= set(re.findall(r"event=access .*?client=(\S+).*?repo=accept/anon", logs))
    assert clients and compose.ip("lb") not in clients, clients


def test_pull_after_killing_a_gateway_and_a_node(
    compose: ComposeCluster, images: list[LayeredImage], tmp_path: Path
) -> None:
    image = _new_image(images, tmp_path)
    ref = f"{compose.registry}/accept/kill:v1"
    _push(image, ref)
    _forget_locally(image)

    killed = ["gateway1", "node2"]
    for service in killed:
        docker("kill", compose.container(service))
    try:
        _pull_and_check(image, ref)
    finally:
        for service in killed:
            cid = compose.container(service)
            if not compose.running(cid):
                docker("start", cid)
        compose.wait_ready()


def test_partitioned_leader_during_pushes_loses_nothing_acknowledged(
    compose: ComposeCluster, images: list[LayeredImage], tmp_path: Path
) -> None:
    pushes = [_new_image(images, tmp_path, big_size=6 * MiB) for _ in range(4)]
    acknowledged: list[tuple[LayeredImage, str]] = []
    failed: list[str] = []

    def pusher() -> None:
        for k, image in enumerate(pushes):
            ref = f"{compose.registry}/accept/partition:v{k}"
            try:
                _push(image, ref)
                acknowledged.append((image, ref))
            except ToolError as exc:
                failed.append(f"{ref}: {exc.output[-300:]}")

    victim = compose.leader_service()
    victim_cid = compose.container(victim)
    thread = threading.Thread(target=pusher)
    thread.start()
    time.sleep(1.0)
    docker("network", "disconnect", "-f", compose.network, victim_cid)
    try:
        time.sleep(5.0)
    finally:
        docker("network", "connect", "--ip", compose.ip(victim), compose.network, victim_cid)
    thread.join(timeout=600)
    assert not thread.is_alive(), "pushes did not finish"
    compose.wait_ready()

    assert acknowledged, f"no push was acknowledged: {failed}"
    for image, ref in acknowledged:
        _forget_locally(image)
        _pull_and_check(image, ref)


def test_rolling_restart_while_pulling_has_no_failed_pull(
    compose: ComposeCluster, images: list[LayeredImage], tmp_path: Path
) -> None:
    image = _new_image(images, tmp_path, big_size=4 * MiB)
    ref = f"{compose.registry}/accept/rolling:v1"
    _push(image, ref)
    _forget_locally(image)
    image_id = ""
    stop = threading.Event()
    pulls: list[str] = []
    failures: list[str] = []

    def puller() -> None:
        nonlocal image_id
        while not stop.is_set():
            try:
                docker("pull", ref, timeout=120)
                got = docker("image", "inspect", "-f", "{{.Id}}", ref).strip()
                image_id = image_id or got
                if got != image_id:
                    failures.append(f"pulled image id {got}, expected {image_id}")
                pulls.append(got)
                docker("rmi", ref, check=False)
            except ToolError as exc:
                failures.append(exc.output[-500:])

    thread = threading.Thread(target=puller)
    thread.start()
    try:
        for service in (*NODES, *GATEWAYS):
            docker("restart", "-t", "15", compose.container(service), timeout=120)
            compose.wait_healthy(service)
            compose.wait_ready()
    finally:
        stop.set()
        thread.join(timeout=300)
    image.extra_tags.append(ref)
    assert not failures, (
        f"{len(failures)} of {len(pulls) + len(failures)} pulls failed: {failures[:3]}"
    )
    assert len(pulls) >= len(NODES) + len(GATEWAYS), f"only {len(pulls)} pulls ran"
