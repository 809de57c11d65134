"""Real clients through a proxy namespace (gateway/mirror/, docs/mirroring.md), the
upstream being CNCF Distribution started here:

- skopeo copies an image out of `hub/...` byte for byte; from a two-platform index
  without `--all` only the chosen child is fetched upstream (children on demand), with
  `--all` both; root mirror mode answers `library/app` (no proxy prefix) from the root
  proxy;
- the Docker engine pulls a `docker build` image (pushed to Distribution by `docker
  push`) through `hub/...` and runs it;
- containerd's `ctr` pulls through `hub/...` with `--plain-http`, and as a `hosts.toml`
  mirror of docker.io (`?ns=docker.io`).

The Docker engine and containerd are the host's (run these under
`flock /tmp/cargohold-docker.lock`); Docker treats 127.0.0.0/8 registries as insecure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster.shapes import QUIET_ROLES
from cluster.upstreams import Distribution

from cargohold_cli.devcluster import LocalCluster
from clients.images import build_layered
from clients.oci_layout import read_blobs, write_image_layout, write_index_layout
from clients.tools import docker, have, run, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
CONTAINERD = "/var/run/docker/containerd/containerd.sock"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Distribution]:
    dist = Distribution(tmp_path / "distribution").start()
    try:
        yield dist
    finally:
        dist.stop()


@pytest.fixture
def proxy(make_cluster: Callable[..., LocalCluster], upstream: Distribution) -> str:
    """host:port of a gateway whose `hub` namespace (root, docker.io) is the upstream."""
    mirror = {
        "proxies": [{"namespace": "hub", "url": upstream.url, "hosts": ["docker.io"]}],
        "root": "hub",
    }
    cluster = make_cluster(nodes=3, gateways=1, extra={"node": dict(QUIET_ROLES), "mirror": mirror})
    return cluster.gateway_url.removeprefix("http://")


def _copy(src: str, dest: str, *extra: str) -> None:
    skopeo("copy", "--quiet", "--preserve-digests", *NO_TLS, *extra, src, dest)


def test_skopeo_through_proxy_index_on_demand_and_root_mode(
    skopeo_tool: None, upstream: Distribution, proxy: str, tmp_path: Path
) -> None:
    up = upstream.url.removeprefix("http://")
    image = write_image_layout(tmp_path / "image", uuid.uuid4().hex)
    index = write_index_layout(tmp_path / "index", uuid.uuid4().hex)
    _copy(f"oci:{image.path}:v1", f"docker://{up}/library/app:v1")
    _copy(f"oci:{index.path}:v1", f"docker://{up}/library/multi:v1", "--all")

    out = tmp_path / "out"
    _copy(f"docker://{proxy}/hub/library/app:v1", f"oci:{out}:v1")
    pulled = read_blobs(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data, digest

    # One platform of the index: only that child's manifest is fetched upstream.
    amd64, arm64 = index.manifest_digests
    one = tmp_path / "one"
    _copy(f"docker://{proxy}/hub/library/multi:v1", f"oci:{one}:v1", "--override-arch", "arm64")
    assert upstream.requests("GET", f"/library/multi/manifests/{arm64}") == 1
    assert upstream.requests("GET", f"/library/multi/manifests/{amd64}") == 0
    both = tmp_path / "both"
    _copy(f"docker://{proxy}/hub/library/multi:v1", f"oci:{both}:v1", "--all")
    pulled = read_blobs(both)
    for digest, data in index.blobs.items():
        assert pulled[digest] == data, digest
    assert upstream.requests("GET", f"/library/multi/manifests/{amd64}") == 1

    # Root mirror mode: a name outside every proxy namespace, not found locally.
    root = tmp_path / "root"
    _copy(f"docker://{proxy}/library/app:v1", f"oci:{root}:v1")
    assert read_blobs(root).keys() >= image.blobs.keys()
    inspected = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{proxy}/library/app:v1")
    )
    assert inspected["Digest"] == image.top_digest


@pytest.mark.docker
def test_docker_and_ctr_pull_through_proxy(
    docker_engine: None, upstream: Distribution, proxy: str, tmp_path: Path
) -> None:
    up = upstream.url.removeprefix("http://")
    repo = f"team/layered-{uuid.uuid4().hex[:8]}"
    image = build_layered(tmp_path)
    upstream_ref, proxied = f"{up}/{repo}:v1", f"{proxy}/hub/{repo}:v1"
    try:
        docker("tag", image.tag, upstream_ref)
        image.extra_tags.append(upstream_ref)
        docker("push", upstream_ref)
        image.remove()

        docker("pull", proxied)
        image.extra_tags.append(proxied)
        out = docker("run", "--rm", "--network", "none", proxied, "sha256sum", "/data/big.bin")
        assert out.split()[0] == image.sha256("/data/big.bin")
    finally:
        image.remove()

    if not (have("ctr") and Path(CONTAINERD).exists()):
        pytest.skip("no containerd socket for ctr")
    ns = f"cargohold-mirror-{uuid.uuid4().hex[:8]}"
    ctr = ("ctr", "--address", CONTAINERD, "--namespace", ns)
    hosts = tmp_path / "certs.d" / "docker.io"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."http://{proxy}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    pulled: list[str] = []
    try:
        run([*ctr, "images", "pull", "--plain-http", proxied])
        pulled.append(proxied)
        # containerd's mirror configuration: docker.io/<repo> asked with ?ns=docker.io.
        mirrored = f"docker.io/{repo}:v1"
        run([*ctr, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), mirrored])
        pulled.append(mirrored)
        listed = run([*ctr, "images", "ls", "-q"])
        assert proxied in listed and mirrored in listed
    finally:
        for ref in pulled:
            run([*ctr, "images", "rm", ref], check=False)
        run([*ctr, "content", "prune", "references"], check=False)
        run(["ctr", "--address", CONTAINERD, "namespaces", "rm", ns], check=False)
