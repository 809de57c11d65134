"""gateway/server.py: listening (plain and TLS), graceful stop, closing the cluster client."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from cargohold.config import Config
from cargohold_cli.devcluster import free_port
from gateway import server


class _FakeClient:
    instances: list[_FakeClient] = []

    def __init__(self) -> None:
        self.closed = False

    @classmethod
    async def connect(cls, cfg: Config) -> _FakeClient:
        client = cls()
        cls.instances.append(client)
        return client

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[_FakeClient]:
    _FakeClient.instances = []
    monkeypatch.setattr(server, "ClusterClient", _FakeClient)
    return _FakeClient


async def _serve_and_get(
    cfg: Config, url: str, ssl_ctx: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str]]:
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(cfg, stop))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(url, ssl=ssl_ctx) as resp:
                        return resp.status, dict(resp.headers)
                except aiohttp.ClientConnectorError:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.05)
            raise AssertionError("gateway never listened")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_serves_v2_and_stops_cleanly(fake_client) -> None:
    cfg = Config()
    port = free_port()
    cfg.gateway.listen = f"127.0.0.1:{port}"
    status, headers = await _serve_and_get(cfg, f"http://127.0.0.1:{port}/v2/")
    assert status == 200
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
    [client] = fake_client.instances
    assert client.closed


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_serves_tls_when_configured(fake_client, self_signed) -> None:
    cert, key = self_signed
    cfg = Config()
    port = free_port()
    cfg.gateway.listen = f"127.0.0.1:{port}"
    cfg.gateway.tls_cert, cfg.gateway.tls_key = str(cert), str(key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    status, _ = await _serve_and_get(cfg, f"https://127.0.0.1:{port}/v2/", client_ctx)
    assert status == 200
    assert fake_client.instances[0].closed


_SIGTERM_SCRIPT = """
import sys
from cargohold.config import Config
from gateway import server

class Fake:
    @classmethod
    async def connect(cls, cfg):
        return cls()
    async def close(self):
        print("closed", flush=True)

server.ClusterClient = Fake
cfg = Config()
cfg.gateway.listen = sys.argv[1]
cfg.cluster.secret = "test-secret"
server.main(cfg)
print("exited", flush=True)
"""


def test_sigterm_stops_the_process_gracefully() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_SCRIPT, f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert out.decode().split() == ["closed", "exited"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("enabled", [True, False])
async def test_access_log_only_when_enabled(
    fake_client, caplog: pytest.LogCaptureFixture, enabled: bool
) -> None:
    cfg = Config()
    port = free_port()
    cfg.gateway.listen = f"127.0.0.1:{port}"
    cfg.gateway.access_log = enabled
    status, _ = await _serve_and_get(cfg, f"http://127.0.0.1:{port}/v2/")
    assert status == 200
    access = [r for r in caplog.records if r.name == "cargohold.access"]
    assert len(access) == (1 if enabled else 0)
    if enabled:
        fields = access[0].fields  # type: ignore[attr-defined]
        assert (fields["method"], fields["route"], fields["status"]) == ("GET", "/v2/", 200)
