"""The systems under test, each started and stopped by the harness itself.

- `Distribution`: CNCF Distribution (`/usr/bin/docker-registry serve <yaml>`, Debian package
  `docker-registry`, installed by `make system-deps`), filesystem storage in a temp dir,
  listening on a free 127.0.0.1 port; never the system service on port 5000.
- `Cargohold`: a `cargohold_cli.devcluster.LocalCluster` of real node and gateway processes
  (1 node R=1 W=1, or 3 nodes R=3 W=2), with one or more gateways; the client spreads its
  connections over the gateways as a load balancer would. `gateway_workers` > 1 runs each
  gateway as that many worker processes on one port (`gateway.workers`), each of them
  counted as a process of its own.
  The `auth` variant runs it in token mode (the gateways' built-in token service, a
  cluster-admin user `bench` created after start) and gives the client its `credentials`,
  so requests carry Bearer tokens as docker's do (bench/auth.py).
- `Trivial`: `bench.trivial_server`, an in-memory aiohttp registry that does no work, to
  measure the client's own ceiling.

A system reports the bytes it stores (`stored_bytes`) for the dedup workload, whether it
exposes Cargohold's gRPC metadata service (`raft_addresses`), and its server processes
(`processes`: name -> PID), whose CPU and peak RSS the harness reads from /proc. It also
says how many replica copies it is still writing after acknowledged pushes
(`copies_in_flight`: always 0 for Distribution, which has written everything when it
answers) and how it read chunks (`read_counts`: Cargohold's gateway counters, empty for
the others), both from bench/cluster_counters.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench import cluster_counters
from bench.cluster_counters import ReadCounts
from cargohold_cli.devcluster import LocalCluster, child_pids, free_port, signal_process

DISTRIBUTION_BIN = "/usr/bin/docker-registry"


class SystemUnderTest(Protocol):
    name: str
    label: str

    @property
    def urls(self) -> list[str]: ...

    @property
    def grpc_addresses(self) -> list[str]: ...

    @property
    def replicas(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def stored_bytes(self) -> int | None: ...

    async def copies_in_flight(self) -> int:
        """Replica copies still being written after acknowledged writes (0: none)."""
        ...

    async def read_counts(self) -> ReadCounts:
        """Counters of how chunks were read (bench/cluster_counters.py); {} if none."""
        ...

    def processes(self) -> dict[str, int]:
        """PID of every server process of the system by name (bench/procstats.py)."""
        ...


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Poll `url` until it answers 200 (start-up only; not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[0]} exited with {proc.returncode}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def system_service_pids() -> list[int]:
    """PIDs of a `docker-registry` serving the package's own config (the system service,
    which takes port 5000, the gateway's default). The harness never uses it and never
    stops what it did not start; it warns, and `make system-deps` stops it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"docker-registry") and b"/etc/docker/registry" in b" ".join(
                argv[1:]
            ):
                pids.append(int(entry.name))
    return pids


def _dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@dataclass
class Distribution:
    """CNCF Distribution 2.x with filesystem storage under a private temp dir."""

    workdir: Path
    name: str = "distribution"
    label: str = "Distribution"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port}"]

    @property
    def grpc_addresses(self) -> list[str]:
        return []

    @property
    def replicas(self) -> int:
        return 1

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    def _start_blocking(self) -> None:
        if not os.access(DISTRIBUTION_BIN, os.X_OK):
            raise RuntimeError(
                f"{DISTRIBUTION_BIN} missing: run `make system-deps` "
                "(Debian package docker-registry)"
            )
        for pid in system_service_pids():
            print(
                f"warning: the docker-registry system service runs (pid {pid}) on port "
                "5000; stop it (`make system-deps` does) to free the machine for the "
                "benchmark",
                file=sys.stderr,
            )
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage_dir}\n"
            "  delete:\n    enabled: true\n"
            "  cache:\n    blobdescriptor: inmemory\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.proc = _start_http_server(
            [DISTRIBUTION_BIN, "serve", str(config)],
            self.workdir / "distribution.log",
            self.urls[0],
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

    async def stop(self) -> None:
        await asyncio.to_thread(signal_process, self.proc)

    async def stored_bytes(self) -> int | None:
        return await asyncio.to_thread(_dir_bytes, self.storage_dir)

    async def copies_in_flight(self) -> int:
        return 0

    async def read_counts(self) -> ReadCounts:
        return {}

    def processes(self) -> dict[str, int]:
        return _running({"docker-registry": self.proc})


@dataclass
class Cargohold:
    """A LocalCluster of real processes."""

    workdir: Path
    nodes: int
    replicas_: int
    write_quorum: int
    gateways: int = 1
    # Worker processes per gateway (`gateway.workers`: a supervisor and N workers sharing
    # the listen address with SO_REUSEPORT; gateway/workers.py).
    gateway_workers: int = 1
    name: str = "cargohold"
    label: str = "Cargohold"
    cluster: LocalCluster | None = None
    # [node] settings that differ from the defaults (a variant such as raft_fsync off).
    node_settings: dict[str, object] = field(default_factory=dict)
    # [gateway] settings that differ from the defaults (a variant such as access_log off).
    gateway_settings: dict[str, object] = field(default_factory=dict)
    # Token auth on (module docstring); then `credentials` is (user, password).
    auth: bool = False
    # [auth] settings on top of the token-mode ones (bench/auth_requests.py --auth-setting).
    auth_settings: dict[str, object] = field(default_factory=dict)
    credentials: tuple[str, str] | None = None
    # [lifecycle] settings (bench/gc_cost.py: GC passes back to back during the workloads).
    lifecycle_settings: dict[str, object] = field(default_factory=dict)
    # Each gateway reads chunks from its host's node's LMDB first (the documented
    # deployment: a node and a gateway on every host; gateway.local_node_data_dir).
    local_reads: bool = True

    @property
    def urls(self) -> list[str]:
        assert self.cluster is not None
        return self.cluster.gateway_urls

    @property
    def grpc_addresses(self) -> list[str]:
        assert self.cluster is not None
        return self.cluster.node_grpc_addresses

    @property
    def replicas(self) -> int:
        return self.replicas_

    def _auth_settings(self) -> dict[str, object]:
        from gateway.auth.keys import generate_signing_key

        key = self.workdir / "token-key.pem"
        generate_signing_key(str(key))
        # Tokens live an hour: a token's lifetime does not change what a request costs
        # (verified tokens are cached until they expire), and the run needs no refresh.
        return {
            "mode": "token",
            "signing_key": str(key),
            "token_ttl_seconds": 3600,
            **self.auth_settings,
        }

    def _start_blocking(self) -> None:
        self.cluster = LocalCluster(
            self.workdir / "cluster",
            nodes=self.nodes,
            gateways=self.gateways,
            replicas=self.replicas_,
            write_quorum=self.write_quorum,
            extra=self._extra(),
            local_reads=self.local_reads,
            gateway_workers=self.gateway_workers,
        )
        try:
            self.cluster.start(timeout=90)
            if self.auth:
                from cargohold_cli.admin_access import add_user

                password = secrets.token_urlsafe(18)
                cfg = self.cluster.client_config("admin")
                add_user(self.cluster.node_grpc_addresses, cfg, "bench", password, True)
                self.credentials = ("bench", password)
        except BaseException:
            self.cluster.kill_all()
            raise

    def _extra(self) -> dict[str, dict[str, object]] | None:
        sections = {
            "node": self.node_settings,
            "gateway": self.gateway_settings,
            "lifecycle": self.lifecycle_settings,
        }
        extra = {name: dict(values) for name, values in sections.items() if values}
        if self.auth:
            extra["auth"] = self._auth_settings()
        return extra or None

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

    async def stop(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)

    def _chunk_bytes(self) -> int:
        assert self.cluster is not None
        return sum(
            self.cluster.node_status(i, timeout=5).chunk_bytes
            for i in range(self.cluster.node_count)
        )

    async def stored_bytes(self) -> int | None:
        """Chunk bytes on all nodes together (every replica counted)."""
        return await asyncio.to_thread(self._chunk_bytes)

    def _gateway_metrics(self) -> list[str]:
        assert self.cluster is not None
        c = self.cluster
        return [a for j in range(c.gateway_count) for a in c.gateway_worker_metrics(j)]

    async def copies_in_flight(self) -> int:
        return await asyncio.to_thread(cluster_counters.copies_in_flight, self._gateway_metrics())

    async def read_counts(self) -> ReadCounts:
        return await asyncio.to_thread(cluster_counters.read_counts, self._gateway_metrics())

    def processes(self) -> dict[str, int]:
        if self.cluster is None:
            return {}
        c = self.cluster
        named = {c.node_id(i): p for i, p in enumerate(c.node_procs)}
        named |= {f"gateway-{j + 1}": p for j, p in enumerate(c.gateway_procs)}
        running = _running(named)
        if self.gateway_workers > 1:
            # A supervisor's workers are alive: their CPU is not in its cutime; count each.
            for j in range(c.gateway_count):
                supervisor = running.get(f"gateway-{j + 1}")
                if supervisor is not None:
                    for k, pid in enumerate(sorted(child_pids(supervisor))):
                        running[f"gateway-{j + 1}-w{k + 1}"] = pid
        return running


@dataclass
class Trivial:
    """The do-nothing registry of bench.trivial_server, in its own process."""

    workdir: Path
    name: str = "trivial"
    label: str = "trivial aiohttp server"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port}"]

    @property
    def grpc_addresses(self) -> list[str]:
        return []

    @property
    def replicas(self) -> int:
        return 1

    def _start_blocking(self) -> None:
        self.port = free_port()
        self.proc = _start_http_server(
            [sys.executable, "-m", "bench.trivial_server", "--port", str(self.port)],
            self.workdir / "trivial.log",
            self.urls[0],
            cwd=Path(__file__).resolve().parent.parent,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._start_blocking)

    async def stop(self) -> None:
        await asyncio.to_thread(signal_process, self.proc)

    async def stored_bytes(self) -> int | None:
        return None

    async def copies_in_flight(self) -> int:
        return 0

    async def read_counts(self) -> ReadCounts:
        return {}

    def processes(self) -> dict[str, int]:
        return _running({"trivial": self.proc})


def _running(procs: dict[str, subprocess.Popen[bytes] | None]) -> dict[str, int]:
    return {name: p.pid for name, p in procs.items() if p is not None and p.poll() is None}


def _start_http_server(
    argv: list[str], log_path: Path, url: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a registry-like server process and wait until `url`/v2/ answers (stopped again
    if it never does)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        _wait_http(f"{url}/v2/", proc, 30, log_path)
    except BaseException:
        signal_process(proc)
        raise
    return proc


def make_workdir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
