"""cluster-compose.yml with mutual TLS on gRPC (cluster-compose.tls.yml), in Docker.

One compose project (own name, port, network and image tag) runs with certificates issued
on the host by `cargohold admin certs` (scripts/cluster-certs.sh) into a 0700 temporary
directory: each node has its own certificate naming its address on the cluster network,
the gateways share the gateway one, the nodes also mount the admin one. The test shows:

- a blob (more than one chunk) and a manifest pushed through the load balancer pull back
  byte-exact (gateways -> nodes and node -> node calls all go over mTLS);
- `cargohold admin status` run inside a node container with the admin certificate sees
  three members and a Raft leader;
- from a container on the cluster network, a call without a client certificate is
  refused (plaintext with a valid cluster-secret token, TLS without a certificate),
  while the same call with the admin certificate answers; the gateway certificate may
  not remove a member (the role is the certificate's).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message

import pytest
from clients.compose import NODES, REPO_ROOT, ComposeCluster, compose_command, ensure_image
from clients.tools import docker, docker_answers

from cargohold_cli.devcluster import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.clients, pytest.mark.cluster]

IMAGE = os.environ.get("CARGOHOLD_IMAGE", "cargohold:latest")
MiB = 1024 * 1024
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
# The cluster runs token auth: an admin token for the test repository, sent on every call.
_AUTH: dict[str, str] = {}


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    if not docker_answers():
        pytest.skip("no Docker engine answering")
    if compose_command() is None:
        pytest.skip("neither `docker compose` nor `docker-compose` available")
    ensure_image(IMAGE)
    suffix = uuid.uuid4().hex[:8]
    tls_dir = tmp_path_factory.mktemp("compose-tls") / "tls"
    cluster = ComposeCluster(
        project=f"cargohold-tls-{suffix}",
        port=free_port(),
        net_prefix=f"172.29.{random.randint(100, 250)}",
        image=IMAGE,
        log_dir=tmp_path_factory.mktemp("compose-tls-logs"),
        tls_dir=tls_dir,
    )
    try:
        cluster.up()
        _AUTH.update(cluster.bearer(["repository:tls/app:pull,push"]))
        yield cluster
    finally:
        _AUTH.clear()
        cluster.down()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _call(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """One HTTP call; the headers are case-insensitive (HAProxy lowercases names)."""
    headers = {**_AUTH, **(headers or {})}
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.headers, resp.read()


def _push_blob(base: str, repo: str, data: bytes) -> str:
    digest = _sha(data)
    status, headers, _ = _call("POST", f"{base}/v2/{repo}/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    status, _, _ = _call(
        "PUT",
        f"{location}{sep}digest={digest}",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 201
    return digest


def test_push_pull_through_lb_over_mtls(compose: ComposeCluster) -> None:
    base = f"http://{compose.registry}"
    repo = "tls/app"
    layer = random.randbytes(9 * MiB + 12345)  # three chunks of 4 MiB
    config = json.dumps({"architecture": "amd64", "os": "linux", "tls": True}).encode()
    layer_digest = _push_blob(base, repo, layer)
    config_digest = _push_blob(base, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    status, headers, _ = _call(
        "PUT", f"{base}/v2/{repo}/manifests/v1", manifest, {"Content-Type": MANIFEST_TYPE}
    )
    assert status == 201
    assert headers["Docker-Content-Digest"] == _sha(manifest)

    # Several pulls, so both gateways behind the load balancer serve some.
    for _ in range(4):
        status, headers, body = _call(
            "GET", f"{base}/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_TYPE}
        )
        assert status == 200 and body == manifest
        status, _, body = _call("GET", f"{base}/v2/{repo}/blobs/{layer_digest}")
        assert status == 200 and body == layer
        status, _, body = _call("GET", f"{base}/v2/{repo}/blobs/{config_digest}")
        assert status == 200 and body == config


def test_admin_status_in_a_node_with_the_admin_certificate(compose: ComposeCluster) -> None:
    assert compose.admin_env(), "status() must present the admin certificate"
    status = compose.status()
    assert status is not None
    nodes = status["nodes"]
    assert isinstance(nodes, list)
    assert sorted(n["address"] for n in nodes) == sorted(f"{compose.ip(n)}:7001" for n in NODES)
    assert sum(1 for n in nodes if n["is_leader"]) == 1


# Run inside a container on the cluster network: one call per way of calling, printing
# each call's outcome (OK or the gRPC status code).
_PROBE = """
import json, os, sys, grpc
from cargohold.config import load_config
from cargohold.grpc_channels import open_sync_channel
from protos import registry_pb2, registry_pb2_grpc
address = sys.argv[1]
def certs(d):
    return {
        "CARGOHOLD_CLUSTER_TLS_CA": d + "/ca.pem",
        "CARGOHOLD_CLUSTER_TLS_CERT": d + "/cert.pem",
        "CARGOHOLD_CLUSTER_TLS_KEY": d + "/key.pem",
    }
status = ("Status", registry_pb2.StatusRequest())
remove = ("RemoveMember", registry_pb2.MemberRequest(id="n1", force=True))
ways = {
    "plaintext_with_token": ({}, status),
    "tls_without_client_cert": ({"CARGOHOLD_CLUSTER_TLS_CA": "/ca.pem"}, status),
    "tls_with_admin_cert": (certs("/admin"), status),
    "gateway_cert_remove_member": (certs("/gateway"), remove),
}
out = {}
for way, (env, (method, request)) in ways.items():
    cfg = load_config(None, environ={**os.environ, **env})
    with open_sync_channel(address, cfg, "admin") as channel:
        try:
            getattr(registry_pb2_grpc.AdminStub(channel), method)(request, timeout=10)
            out[way] = "OK"
        except grpc.RpcError as err:
            out[way] = err.code().name
print(json.dumps(out))
"""


def test_call_without_client_certificate_is_refused(compose: ComposeCluster) -> None:
    assert compose.tls_dir is not None
    node_env = REPO_ROOT / "deploy" / "secrets" / "node.env"
    out = docker(
        "run",
        "--rm",
        "--network",
        compose.network,
        # The cluster secret: a valid per-call token must not be enough under mTLS.
        "--env-file",
        str(node_env),
        "-v",
        f"{compose.tls_dir / 'ca' / 'ca.pem'}:/ca.pem:ro",
        "-v",
        f"{compose.tls_dir / 'admin'}:/admin:ro",
        "-v",
        f"{compose.tls_dir / 'gateway'}:/gateway:ro",
        "--entrypoint",
        "python3",
        compose.image,
        "-c",
        _PROBE,
        f"{compose.ip('node1')}:7001",
        timeout=120,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["plaintext_with_token"] in ("UNAVAILABLE", "UNAUTHENTICATED")
    assert result["tls_without_client_cert"] in ("UNAVAILABLE", "UNAUTHENTICATED")
    assert result["tls_with_admin_cert"] == "OK"
    # The role comes from the certificate: a gateway's may not change membership.
    assert result["gateway_cert_remove_member"] == "PERMISSION_DENIED"
    status = compose.status()
    assert status is not None and len(status["nodes"]) == len(NODES)  # type: ignore[arg-type]
