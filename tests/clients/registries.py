"""The registries real-client tests talk to.

By default the target is Cargohold: the suite's shared `LocalCluster` (3 nodes, 2
gateways), addressed as `127.0.0.1:<port>` so that Docker treats it as an insecure
(plain HTTP) registry. With `CARGOHOLD_CLIENT_TARGET=distribution` the same tests run
against CNCF Distribution (`/usr/bin/docker-registry`, Debian's docker-registry package)
started here on a free loopback port: that checks the test harness itself against the
reference implementation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cargohold_cli.devcluster import free_port, signal_process

DISTRIBUTION_BIN = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class RegistryTarget:
    """Where clients push and pull: one or more equivalent `host:port` endpoints."""

    kind: str
    hosts: tuple[str, ...]

    @property
    def host(self) -> str:
        return self.hosts[0]

    @property
    def other_host(self) -> str:
        """A second gateway when there is one (read-your-writes across gateways)."""
        return self.hosts[-1]


def target_kind() -> str:
    return os.environ.get("CARGOHOLD_CLIENT_TARGET", "cargohold").strip().lower()


def wait_v2(host: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"registry {host} not answering /v2/: {last}")


@contextlib.contextmanager
def distribution(workdir: Path) -> Iterator[RegistryTarget]:
    """Run CNCF Distribution on 127.0.0.1:<free port> with deletes enabled."""
    if not shutil.which(DISTRIBUTION_BIN):
        raise FileNotFoundError(f"{DISTRIBUTION_BIN} missing: make system-deps")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(workdir / "registry.log", "ab")
    proc = subprocess.Popen(
        [DISTRIBUTION_BIN, "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_v2(f"127.0.0.1:{port}")
        yield RegistryTarget("distribution", (f"127.0.0.1:{port}",))
    finally:
        signal_process(proc)
        log.close()
