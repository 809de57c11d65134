"""Namespace quotas with real clients (docs/operations.md "Quotas"): a limit set with
`cargohold admin namespaces quota set`, a push past it refused with the message naming the
namespace, its usage and its limit, shown as is by skopeo and by docker; raising the
limit lets the same push through, and the usage appears in `admin namespaces quota show`
and `admin status --json`."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from pathlib import Path

import pytest

from cargohold_cli.cli import main
from cargohold_cli.devcluster import LocalCluster
from clients.images import LayeredImage, build_layered
from clients.oci_layout import write_image_layout
from clients.registries import RegistryTarget
from clients.tools import ToolError, docker, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

MiB = 1024 * 1024
NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


@pytest.fixture
def shared_cluster(registry_target: RegistryTarget, request: pytest.FixtureRequest) -> LocalCluster:
    if registry_target.kind != "cargohold":
        pytest.skip("quotas are Cargohold's own")
    cluster: LocalCluster = request.getfixturevalue("cluster")
    return cluster


def admin(cluster: LocalCluster, *argv: str) -> str:
    """One `cargohold admin` command against the shared cluster; its stdout."""
    nodes = ",".join(cluster.node_grpc_addresses)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            ["admin", "--config", str(cluster.admin_config_path()), *argv[:3], "--nodes", nodes,
             *argv[3:]]
        )  # fmt: skip
    assert rc == 0, out.getvalue()
    return out.getvalue()


def usage(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    [row] = json.loads(admin(cluster, "namespaces", "quota", "show", namespace, "--json"))
    return dict(row)


def test_skopeo_shows_the_quota_refusal(
    shared_cluster: LocalCluster, skopeo_tool: None, tmp_path: Path, unique_repo: str
) -> None:
    namespace = unique_repo
    layout = write_image_layout(tmp_path / "src", uuid.uuid4().hex, big_size=3 * MiB)
    admin(shared_cluster, "namespaces", "quota", "set", namespace, "2MiB")
    host = f"{shared_cluster.gateway_urls[0].removeprefix('http://')}"
    dest = f"docker://{host}/{namespace}/app:v1"
    with pytest.raises(ToolError) as refused:
        skopeo("copy", "--quiet", "--retry-times=0", *NO_TLS, f"oci:{layout.path}:v1", dest)
    output = refused.value.output
    assert f"quota exceeded for namespace {namespace}" in output, output
    assert "of 2.0 MiB" in output, output
    assert usage(shared_cluster, namespace)["used"] <= 2 * MiB

    admin(shared_cluster, "namespaces", "quota", "set", namespace, "20MiB")
    skopeo("copy", "--quiet", *NO_TLS, f"oci:{layout.path}:v1", dest)
    used = usage(shared_cluster, namespace)
    stored = sum(len(data) for data in layout.blobs.values())
    assert used["used"] == stored and used["limit"] == 20 * MiB, (used, stored)
    # A second repository of the namespace with the same image adds nothing (deduplicated).
    skopeo("copy", "--quiet", *NO_TLS, dest, f"docker://{host}/{namespace}/copy:v1")
    assert usage(shared_cluster, namespace)["used"] == stored
    status = json.loads(admin(shared_cluster, "status", "--json"))
    [row] = [q for q in status["quotas"] if q["namespace"] == namespace]
    assert row["used"] == stored and row["free"] == 20 * MiB - stored
    admin(shared_cluster, "namespaces", "quota", "unset", namespace)


@pytest.mark.docker
def test_docker_shows_the_quota_refusal(
    shared_cluster: LocalCluster, docker_engine: None, tmp_path: Path, unique_repo: str
) -> None:
    namespace = unique_repo
    image: LayeredImage = build_layered(tmp_path, big_size=4 * MiB)
    try:
        admin(shared_cluster, "namespaces", "quota", "set", namespace, "1MiB")
        host = shared_cluster.gateway_urls[0].removeprefix("http://")
        ref = f"{host}/{namespace}/app:v1"
        docker("tag", image.tag, ref)
        image.extra_tags.append(ref)
        with pytest.raises(ToolError) as refused:
            docker("push", ref)
        output = refused.value.output
        assert f"denied: quota exceeded for namespace {namespace}" in output, output
        admin(shared_cluster, "namespaces", "quota", "set", namespace, "50MiB")
        docker("push", ref)
        assert 4 * MiB < usage(shared_cluster, namespace)["used"] <= 50 * MiB
    finally:
        image.remove()
        admin(shared_cluster, "namespaces", "quota", "unset", namespace)
