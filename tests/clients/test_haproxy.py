"""deploy/haproxy.cfg, as shipped, in front of two real gateways (no Docker): requests
keep succeeding while one gateway is SIGKILLed, then the other, because the config
health-checks `GET /v2/` and replays failed connections on the other gateway.

Only the listen address and the `server` lines are rewritten to point at a private
LocalCluster on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
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
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> Iterator[tuple[LocalCluster, str]]:
    if not have("haproxy"):
        pytest.skip("haproxy missing: make system-deps")
    local = make_cluster(nodes=3, gateways=2)
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
