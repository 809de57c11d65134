"""Real clients against a token-mode cluster (built-in token service, one htpasswd user):
skopeo pushes with `--dest-creds` and pulls with `--src-creds`, is refused without
credentials; `docker login` stores an identity token and docker pushes and pulls with it;
podman against `cargohold dev --auth` logs in, pushes and pulls, pulls a public namespace
anonymously and is refused a push as a `reader` (403)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster.token_client import token_auth

from cargohold_cli.devcluster import LocalCluster
from clients.images import LayeredImage
from clients.oci_layout import read_blobs, write_image_layout
from clients.tools import Podman, ToolError, have, run, skopeo

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

USERS = {"alice": "alice-pw-1"}
NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


@pytest.fixture
def token_host(make_cluster: Callable[..., LocalCluster], tmp_path: Path) -> str:
    cluster = make_cluster(nodes=3, gateways=1, extra={"auth": token_auth(tmp_path, USERS)})
    return cluster.gateway_urls[0].removeprefix("http://")


def test_skopeo_with_creds(skopeo_tool: None, token_host: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_image_layout(layout, seed=uuid.uuid4().hex, big_size=1024 * 1024)
    dest = f"docker://{token_host}/team/app:v1"
    with pytest.raises(ToolError) as refused:
        skopeo("copy", "--quiet", *NO_TLS, f"oci:{layout}:v1", dest)
    # skopeo words the 401 after its anonymous token as "requested access ... is denied".
    assert "401" in refused.value.output or "unauthorized" in refused.value.output.lower()
    skopeo(
        "copy", "--quiet", "--preserve-digests", *NO_TLS,
        "--dest-creds", f"alice:{USERS['alice']}", f"oci:{layout}:v1", dest,
    )  # fmt: skip
    out = tmp_path / "out"
    skopeo(
        "copy", "--quiet", "--preserve-digests", *NO_TLS,
        "--src-creds", f"alice:{USERS['alice']}", dest, f"oci:{out}:v1",
    )  # fmt: skip
    assert read_blobs(out) == read_blobs(layout)
    with pytest.raises(ToolError):
        skopeo("inspect", "--tls-verify=false", "--creds", "alice:wrong", dest, timeout=60)


@pytest.mark.docker
def test_docker_login_push_pull(fresh_image: LayeredImage, token_host: str, tmp_path: Path) -> None:
    config = tmp_path / "docker-config"
    config.mkdir()

    def docker(*args: str, stdin: bytes | None = None) -> str:
        return run(["docker", "--config", str(config), *args], input_bytes=stdin)

    ref = f"{token_host}/team/app:v1"
    docker("tag", fresh_image.tag, ref)
    fresh_image.extra_tags.append(ref)
    with pytest.raises(ToolError) as refused:
        docker("push", ref)
    assert "unauthorized" in refused.value.output.lower() or "denied" in refused.value.output
    docker("login", "-u", "alice", "--password-stdin", token_host, stdin=USERS["alice"].encode())
    stored = json.loads((config / "config.json").read_text())["auths"][token_host]
    # docker keeps the refresh token (identity token) from the OAuth2 password grant.
    assert stored.get("identitytoken")
    docker("push", ref)
    docker("rmi", ref)
    docker("pull", ref)
    out = docker("run", "--rm", "--network", "none", ref, "cat", "/data/hello.txt")
    assert out.strip().encode() == fresh_image.files["/data/hello.txt"].strip()


@pytest.mark.docker
@pytest.mark.slow
def test_docker_login_against_dev_auth(fresh_image: LayeredImage, tmp_path: Path) -> None:
    """`cargohold dev --auth`: docker login as the generated admin, push, pull, run."""
    import socket

    from cluster.devprocess import DevProcess, free_node_base

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = tmp_path / "dev"
    dev = DevProcess(data, port, free_node_base(), "--auth")
    config = tmp_path / "docker-config"
    config.mkdir()

    def docker(*args: str, stdin: bytes | None = None) -> str:
        return run(["docker", "--config", str(config), *args], input_bytes=stdin)

    try:
        dev.wait_for("registry ready")
        password = (data / "admin-password").read_text().strip()
        host = f"127.0.0.1:{port}"
        ref = f"{host}/dev/app:v1"
        docker("tag", fresh_image.tag, ref)
        fresh_image.extra_tags.append(ref)
        with pytest.raises(ToolError):
            docker("push", ref)
        docker("login", "-u", "admin", "--password-stdin", host, stdin=password.encode())
        docker("push", ref)
        docker("rmi", ref)
        docker("pull", ref)
        out = docker("run", "--rm", "--network", "none", ref, "cat", "/data/hello.txt")
        assert out.strip().encode() == fresh_image.files["/data/hello.txt"].strip()
        assert dev.interrupt() == 0
    finally:
        dev.kill()


def _dev_admin(dev: object, *argv: str, stdin: str = "") -> str:
    """`cargohold admin ...` against the dev cluster (its printed --config and --nodes)."""
    import sys

    line = next(ln for ln in dev.seen if "status: cargohold admin --config" in ln)  # type: ignore[attr-defined]
    found = re.search(r"--config (\S+) status --nodes (\S+)", line)
    assert found, line
    config, nodes = found.groups()
    cmd = [sys.executable, "-m", "cargohold_cli", "admin", "--config", config, *argv[:2]]
    return run([*cmd, "--nodes", nodes, *argv[2:]], input_bytes=stdin.encode() or None)


@pytest.mark.slow
def test_podman_login_push_pull_public_and_reader(tmp_path: Path) -> None:
    """`cargohold dev --auth` with podman: login as the generated admin, push, pull; a
    public namespace pulls anonymously; a `reader` login pushes into 403."""
    import socket

    from cluster.devprocess import DevProcess, free_node_base

    if not have("podman"):
        pytest.skip("podman missing: make system-deps")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = tmp_path / "dev"
    layout = tmp_path / "layout"
    write_image_layout(layout, seed=uuid.uuid4().hex, big_size=1024 * 1024)
    podman = Podman(tmp_path / "podman")
    dev = DevProcess(data, port, free_node_base(), "--auth")
    try:
        dev.wait_for("Ctrl-C stops the cluster")  # after the addresses it prints
        password = (data / "admin-password").read_text().strip()
        host = f"127.0.0.1:{port}"
        _dev_admin(dev, "namespaces", "add", "pub", "public")
        _dev_admin(dev, "users", "add", "rita", "--password-stdin", stdin="rita-pw-1")
        _dev_admin(dev, "namespaces", "grant", "pub", "rita", "reader")

        podman("pull", "-q", f"oci:{layout}:v1")
        local = podman("images", "-q").split()[0]
        # Without a login: refused.
        refused = podman("push", "--tls-verify=false", local, f"{host}/pub/app:v1", check=False)
        assert re.search(r"unauthorized|authentication required", refused, re.I), refused

        out = podman(
            "login", "--tls-verify=false", "-u", "admin", "--password-stdin", host,
            stdin=password.encode(),
        )  # fmt: skip
        assert "Login Succeeded" in out
        podman("push", "-q", "--tls-verify=false", local, f"{host}/pub/app:v1")
        podman("push", "-q", "--tls-verify=false", local, f"{host}/team/app:v1")
        podman("rmi", "-a", "-f")
        podman("pull", "-q", "--tls-verify=false", f"{host}/team/app:v1")
        podman("logout", host)

        # Anonymous: the public namespace pulls, a private one does not.
        podman("rmi", "-a", "-f")
        podman("pull", "-q", "--tls-verify=false", f"{host}/pub/app:v1")
        private = podman("pull", "--tls-verify=false", f"{host}/team/app:v1", check=False)
        assert re.search(r"unauthorized|authentication required|denied", private, re.I), private

        # A reader may log in and pull, but its push is 403 DENIED.
        podman(
            "login", "--tls-verify=false", "-u", "rita", "--password-stdin", host,
            stdin=b"rita-pw-1",
        )  # fmt: skip
        local = podman("images", "-q").split()[0]
        denied = podman("push", "--tls-verify=false", local, f"{host}/pub/app:v2", check=False)
        assert re.search(r"denied|403|forbidden", denied, re.I), denied
        assert dev.interrupt() == 0
    finally:
        dev.kill()
        podman.close()
