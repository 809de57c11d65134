"""deploy/haproxy.cfg, as shipped, in front of two real gateways (no Docker): requests
keep succeeding while one gateway is SIGKILLed, then the other, because the config
health-checks `GET /v2/` and replays failed connections on the other gateway.

Only the listen address and the `server` lines are rewritten to point at a private
LocalCluster on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cargohold_cli.devcluster import LocalCluster, free_port, signal_process
from clients.registries import wait_v2
from clients.tools import have

pytestmark = [pytest.mark.clients, pytest.mark.cluster]

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
REQUESTS_PER_PHASE = 40


def _config_for(gateways: list[str], port: int) -> str:
    text = CONFIG.read_text()
    text = text.replace("bind :5000", f"bind 127.0.0.1:{port}")
    servers = "\n".join(
        f"    server gateway{k + 1} {addr} check" for k, addr in enumerate(gateways)
    )
    text, count = re.subn(r"(?m)^    server gateway\d+ \S+ check$\n?", "", text)
    assert count == 2, "deploy/haproxy.cfg no longer has the two gateway server lines"
    return text.rstrip("\n") + "\n" + servers + "\n"


@pytest.fixture
def lb_cluster(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[LocalCluster, str]]:
    if not have("haproxy"):
        pytest.skip("haproxy missing: make system-deps")
    shape = getattr(request, "param", {"nodes": 3, "gateways": 2})
    local = make_cluster(**shape)
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_config_for([u.removeprefix("http://") for u in local.gateway_urls], port))
    log = open(tmp_path / "haproxy.log", "wb")
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_v2(f"127.0.0.1:{port}")
        yield local, f"http://127.0.0.1:{port}"
    finally:
        signal_process(proc)
        log.close()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


def _push_blob(base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(
        f"{base}/v2/{repo}/blobs/uploads/?digest={digest}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
    return digest


def _all_succeed(base: str, repo: str, digest: str, data: bytes) -> None:
    for _ in range(REQUESTS_PER_PHASE):
        assert _get(f"{base}/v2/")[0] == 200
        status, body = _get(f"{base}/v2/{repo}/blobs/{digest}")
        assert status == 200 and body == data


def test_lb_rides_over_a_killed_gateway(
    lb_cluster: tuple[LocalCluster, str], repo_name: str
) -> None:
    local, base = lb_cluster
    data = b"through the load balancer\n" * 1000
    digest = _push_blob(base, repo_name, data)
    _all_succeed(base, repo_name, digest, data)

    local.kill_gateway(0)
    _all_succeed(base, repo_name, digest, data)

    local.start_gateway(0)
    wait_v2(local.gateway_urls[0].removeprefix("http://"))
    local.kill_gateway(1)
    _all_succeed(base, repo_name, digest, data)


def _get_from(source: str, port: int, path: str, forged: str) -> int:
    """GET from a chosen loopback source address with a forged X-Forwarded-For."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": forged})
        return conn.getresponse().status
    finally:
        conn.close()


def _access_clients(local: LocalCluster, repo: str, want: int) -> list[str]:
    log = local.base_dir / "logs" / "gateway-1.log"
    found: list[str] = []
    for _ in range(100):
        lines = log.read_text(errors="replace").splitlines()
        found = [
            m.group(1)
            for line in lines
            if "event=access" in line and f"repo={repo}" in line
            for m in [re.search(r"\bclient=(\S+)", line)]
            if m
        ]
        if len(found) >= want:
            break
        time.sleep(0.1)
    return found


@pytest.mark.parametrize(
    "lb_cluster",
    [{"nodes": 1, "gateways": 1, "extra": {"gateway": {"trusted_proxies": ["127.0.0.1/32"]}}}],
    indirect=True,
)
def test_forwarded_for_believed_from_haproxy_only(
    lb_cluster: tuple[LocalCluster, str], repo_name: str
) -> None:
    """HAProxy (`option forwardfor`, trusted) names the real client even when the client
    forges its own X-Forwarded-For; the same forgery sent straight to the gateway from an
    untrusted address is ignored."""
    local, base = lb_cluster
    lb_port = int(base.rsplit(":", 1)[1])
    gw_port = int(local.gateway_urls[0].rsplit(":", 1)[1])
    path = f"/v2/{repo_name}/manifests/missing"
    assert _get_from("127.0.0.5", lb_port, path, "203.0.113.9") == 404
    assert _get_from("127.0.0.6", gw_port, path, "203.0.113.9") == 404
    assert _access_clients(local, repo_name, 2) == ["127.0.0.5", "127.0.0.6"]
