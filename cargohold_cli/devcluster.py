"""A local cluster of real processes: N storage nodes and M gateways on 127.0.0.1.

`LocalCluster` is what `cargohold dev` (and so `make run`) starts, and what the test suite
and the benchmark harness use to get a real cluster: every node and gateway is its own
`python -m cargohold_cli ...` process with its own TOML config file, so tests exercise
the same code paths as a deployment.

Layout under `base_dir`:

    cluster.toml              what was chosen on first start (ports, secret, R/W); reused
                              on later starts so Raft identities and data stay valid
    config/node-<i>.toml      one config file per process
    config/gateway-<j>.toml    (each node serves /metrics on a port of its own, each
                              gateway on its listener: `metrics_addresses`; a gateway
                              with `gateway_workers` > 1 is a supervisor whose workers
                              each serve /metrics on a port of their own)
    nodes/n<i>/               each node's data directory (LMDB, Raft journal and dump)
    logs/<name>.log           each process's stderr/stdout

The secret is generated on first start (the only place a secret is ever made up), and
`base_dir`, `config/` and `cluster.toml` are private to the user (0700 directories, 0600
files): they hold it. Helpers that talk to the nodes (`channel`, `node_status`, `members`)
sign their calls like any client (cargohold/grpc_channels.py), as `admin` by default.

Process control (kill with any signal, restart, stop) is by index, for chaos tests.

Process hygiene: `start()` first checks that nothing else holds a node's data directory
or one of the ports (`DataDirInUse`/`AddressInUse` naming the holder); every child gets
the launcher's lifeline (cargohold_cli/lifeline.py) and stops when the launcher dies; and
`wait_ready` accepts only answers from sockets its own children listen on.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cargohold import datadir_lock
from cargohold.cluster_auth import format_credential
from cargohold.config import Config, load_config
from cargohold.errors import DataDirInUse
from cargohold.grpc_channels import open_sync_channel
from cargohold.metadata_api import Members
from cargohold.ports import ensure_bindable, listens
from cargohold_cli import lifeline
from protos import registry_pb2, registry_pb2_grpc

# Seconds between two readiness checks while waiting for processes to come up: every test
# of the cluster phase waits for at least one start, so the poll's slack adds up.
_READY_POLL = 0.05


def signal_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, wait: float = 10.0
) -> None:
    """Send `sig` and wait for the exit; SIGKILL what is still running after `wait` s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=wait)


# Ports handed out by this process (a port is never handed out twice).
_HANDED_OUT: set[int] = set()
# Where `free_port` picks from when the kernel's ephemeral range leaves room below it.
_LOWEST_PORT = 15000


def ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' local ports (0: unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen below the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the same range as the local ports
    of outgoing connections: between choosing it and the child binding it, a gRPC client
    connecting somewhere could take it ("address in use"). Below that range only listeners
    bind, so the window is shared with nothing but other listeners. Falls back to `bind(0)`
    where the range leaves no room below it."""
    top = ephemeral_low() - 1
    if top - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = random.randint(_LOWEST_PORT, top)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


def claim_ports(ports: list[int]) -> bool:
    """Hand out all of `ports` (as `free_port` would) when none of them was handed out
    already; False, handing out none, when one was. Whether they are bindable is the
    caller's to check: this only keeps two choices of this process apart."""
    if _HANDED_OUT.intersection(ports):
        return False
    _HANDED_OUT.update(ports)
    return True


def free_port_run(host: str, count: int) -> int:
    """The first of `count` consecutive ports nothing listens on now (a gateway's worker
    metrics ports: `gateway.metrics_address`'s port + k - 1)."""
    for _ in range(200):
        base = free_port(host)
        if base + count - 1 > 65535:
            continue
        if all(_bindable(host, base + k) for k in range(1, count)):
            _HANDED_OUT.update(range(base, base + count))
            return base
    raise RuntimeError(f"no run of {count} free ports on {host}")


def _bindable(host: str, port: int) -> bool:
    if port in _HANDED_OUT:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; empty where it cannot tell)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found += [int(c) for c in text.split()]
    return found


@dataclass
class ClusterLayout:
    """Addresses and cluster-wide settings, persisted as cluster.toml."""

    host: str = "127.0.0.1"
    secret: str = ""
    replicas: int = 3
    write_quorum: int = 2
    chunk_size: int = 4 * 1024 * 1024
    node_grpc_ports: list[int] = field(default_factory=list)
    node_raft_ports: list[int] = field(default_factory=list)
    # Each node's metrics HTTP port (`node.metrics_address`); filled in for layouts written
    # before there were any.
    node_metrics_ports: list[int] = field(default_factory=list)
    gateway_ports: list[int] = field(default_factory=list)
    # Per-node host addresses (test hosts in network namespaces); empty = all on `host`.
    node_hosts: list[str] = field(default_factory=list)
    # Mutual TLS on gRPC: a cluster CA and one certificate per role under tls/ (made on
    # first start, cargohold/certs.py); every process presents its role's certificate.
    mtls: bool = False
    # Extra settings per section merged into every process's config ({"node": {...}}).
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (e.g. `[mirror] proxies = [{...}]`)
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


# Config sections a gateway reads besides [cluster] and [gateway], passed from `extra`:
# auth, lifecycle (immutable tags, delete protection), the activity log, proxy namespaces,
# replication rules, SBOM scanning, the pull policy (signatures, vulnerabilities), webhook
# delivery.
_GATEWAY_SECTIONS = (
    "auth",
    "lifecycle",
    "audit",
    "mirror",
    "replication",
    "scanner",
    "policy",
    "webhooks",
)


def to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for flat sections of scalars and lists (all our configs are)."""
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict):
                    continue
                lines.append(f"{sub} = {_toml_value(subvalue)}")
    return "\n".join(lines) + "\n"


def _private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: it holds secrets."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class LocalCluster:
    """Start, inspect, kill and restart a cluster of real node and gateway processes."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        nodes: int = 3,
        gateways: int = 1,
        replicas: int | None = None,
        write_quorum: int | None = None,
        gateway_port: int | None = None,
        node_base_port: int | None = None,
        chunk_size: int | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
        log_level: str = "warning",
        host: str = "127.0.0.1",
        node_hosts: list[str] | None = None,
        node_exec_prefixes: list[list[str]] | None = None,
        orphan_grace: float = 3.0,
        mtls: bool = False,
        local_reads: bool = False,
        gateway_workers: int = 1,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        # Worker processes per gateway (`gateway.workers`, gateway/workers.py); with more
        # than one, gateway j's workers serve /metrics on gateway_metrics_ports[j] + k - 1
        # (chosen here, not persisted: gateways are stateless).
        self.gateway_workers = gateway_workers
        # Gateway j reads chunks from node j's LMDB (mod the node count) before gRPC, as a
        # gateway on a node's host may (gateway.local_node_data_dir); not persisted.
        self.local_reads = local_reads
        self.log_level = log_level
        # Seconds an orphaned child (its launcher died) gets to stop cleanly before it ends.
        self.orphan_grace = orphan_grace
        self.layout = self._load_or_create_layout(
            nodes,
            gateways,
            replicas,
            write_quorum,
            gateway_port,
            node_base_port,
            chunk_size,
            extra or {},
            host,
            node_hosts or [],
            mtls,
        )
        # Commands that wrap a node's process (e.g. `ip netns exec <ns>`); not persisted.
        self.node_exec_prefixes = node_exec_prefixes or [[] for _ in range(self.node_count)]
        self.node_procs: list[subprocess.Popen[bytes] | None] = [None] * self.node_count
        self.gateway_procs: list[subprocess.Popen[bytes] | None] = [None] * self.gateway_count
        self.gateway_metrics_ports: list[int] = (
            [free_port_run(self.layout.host, gateway_workers) for _ in range(self.gateway_count)]
            if gateway_workers > 1
            else []
        )
        # monotonic time each process (by name) was last spawned.
        self.spawned_at: dict[str, float] = {}

    # -- layout -----------------------------------------------------------------------
    def _load_or_create_layout(
        self,
        nodes: int,
        gateways: int,
        replicas: int | None,
        write_quorum: int | None,
        gateway_port: int | None,
        node_base_port: int | None,
        chunk_size: int | None,
        extra: dict[str, dict[str, Any]],
        host: str,
        node_hosts: list[str],
        mtls: bool = False,
    ) -> ClusterLayout:
        path = self.base_dir / "cluster.toml"
        if path.exists():
            data = tomllib.loads(path.read_text())
            layout = ClusterLayout(**data)
            # Gateways are stateless: their count and ports may change between starts.
            if gateway_port is not None:
                layout.gateway_ports = [gateway_port + j for j in range(gateways)]
            if len(layout.node_metrics_ports) < len(layout.node_grpc_ports):
                self._add_metrics_ports(layout, node_base_port)
                self._save_layout(layout)
            return layout
        r = replicas if replicas is not None else min(3, nodes)
        w = write_quorum if write_quorum is not None else min(2, r)
        if node_base_port is not None:
            grpc_ports = [node_base_port + i for i in range(nodes)]
            raft_ports = [node_base_port + 100 + i for i in range(nodes)]
        elif node_hosts:
            # Each node has its own address: the same well-known ports everywhere.
            grpc_ports = [7001] * nodes
            raft_ports = [7101] * nodes
        else:
            grpc_ports = [free_port(host) for _ in range(nodes)]
            raft_ports = [free_port(host) for _ in range(nodes)]
        if gateway_port is not None:
            gw_ports = [gateway_port + j for j in range(gateways)]
        else:
            gw_ports = [free_port(host) for _ in range(gateways)]
        layout = ClusterLayout(
            host=host,
            secret=secrets.token_hex(16),
            replicas=r,
            write_quorum=w,
            node_grpc_ports=grpc_ports,
            node_raft_ports=raft_ports,
            gateway_ports=gw_ports,
            node_hosts=list(node_hosts),
            extra=extra,
            mtls=mtls,
        )
        self._add_metrics_ports(layout, node_base_port)
        if chunk_size:
            layout.chunk_size = chunk_size
        self._save_layout(layout)
        return layout

    @staticmethod
    def _add_metrics_ports(layout: ClusterLayout, node_base_port: int | None) -> None:
        """A metrics port for every node that has none: base + 200 + i with a base port,
        9101 on per-node hosts, else a free one."""
        for i in range(len(layout.node_metrics_ports), len(layout.node_grpc_ports)):
            if node_base_port is not None:
                port = node_base_port + 200 + i
            elif layout.node_hosts:
                port = 9101
            else:
                port = free_port(layout.host)
            layout.node_metrics_ports.append(port)

    def _save_layout(self, layout: ClusterLayout) -> None:
        """cluster.toml, private to the user: it holds the secret."""
        _private_dir(self.base_dir)
        flat = {k: v for k, v in asdict(layout).items() if k != "extra"}
        _write_private(
            self.base_dir / "cluster.toml", to_toml(flat) + self._extra_toml(layout.extra)
        )

    @staticmethod
    def _extra_toml(extra: dict[str, dict[str, Any]]) -> str:
        if not extra:
            return ""
        return "\n[extra]\n" + "".join(
            f"{section} = {{ {', '.join(f'{k} = {_toml_value(v)}' for k, v in vals.items())} }}\n"
            for section, vals in extra.items()
        )

    @property
    def node_count(self) -> int:
        return len(self.layout.node_grpc_ports)

    @property
    def gateway_count(self) -> int:
        return len(self.layout.gateway_ports)

    def node_host(self, i: int) -> str:
        return self.layout.node_hosts[i] if self.layout.node_hosts else self.layout.host

    def node_grpc(self, i: int) -> str:
        return f"{self.node_host(i)}:{self.layout.node_grpc_ports[i]}"

    def node_raft(self, i: int) -> str:
        return f"{self.node_host(i)}:{self.layout.node_raft_ports[i]}"

    def node_metrics(self, i: int) -> str:
        """Node i's metrics address (`/metrics`, `/healthz`, `/readyz`)."""
        return f"{self.node_host(i)}:{self.layout.node_metrics_ports[i]}"

    def gateway_metrics(self, j: int) -> str:
        """Gateway j's metrics address: its own listener (`/metrics` next to `/v2/`); with
        several workers, its first worker's (see `gateway_worker_metrics`)."""
        if self.gateway_workers > 1:
            return self.gateway_worker_metrics(j)[0]
        return f"{self.layout.host}:{self.layout.gateway_ports[j]}"

    def gateway_worker_metrics(self, j: int) -> list[str]:
        """The metrics address of each of gateway j's processes (one without workers)."""
        if self.gateway_workers == 1:
            return [self.gateway_metrics(j)]
        base = self.gateway_metrics_ports[j]
        return [f"{self.layout.host}:{base + k}" for k in range(self.gateway_workers)]

    @property
    def metrics_addresses(self) -> dict[str, str]:
        """Every process's metrics address by process name (n1.., gateway-1.., or
        gateway-1-w1.. for a gateway's workers)."""
        found = {self.node_id(i): self.node_metrics(i) for i in range(self.node_count)}
        for j in range(self.gateway_count):
            if self.gateway_workers == 1:
                found[f"gateway-{j + 1}"] = self.gateway_metrics(j)
                continue
            for k, address in enumerate(self.gateway_worker_metrics(j)):
                found[f"gateway-{j + 1}-w{k + 1}"] = address
        return found

    def node_id(self, i: int) -> str:
        return f"n{i + 1}"

    def node_data_dir(self, i: int) -> Path:
        return self.base_dir / "nodes" / self.node_id(i)

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://{self.layout.host}:{p}" for p in self.layout.gateway_ports]

    @property
    def gateway_url(self) -> str:
        return self.gateway_urls[0]

    @property
    def node_grpc_addresses(self) -> list[str]:
        return [self.node_grpc(i) for i in range(self.node_count)]

    def _tls_section(self, role: str) -> dict[str, str]:
        """tls_ca/tls_cert/tls_key of `role` when the layout asks for mTLS (made once)."""
        if not self.layout.mtls:
            return {}
        tls = self.base_dir / "tls"
        if not (tls / "ca.pem").exists():
            from cargohold.certs import create_ca, issue

            create_ca(tls)
            hosts = sorted({self.layout.host, *self.layout.node_hosts, "localhost"})
            for name in ("node", "gateway", "admin"):
                issue(tls, name, name, hosts)
        return {
            "tls_ca": str(tls / "ca.pem"),
            "tls_cert": str(tls / f"{role}.pem"),
            "tls_key": str(tls / f"{role}-key.pem"),
        }

    def _cluster_section(self, role: str = "node") -> dict[str, Any]:
        section = {
            "secret": self.layout.secret,
            "replicas": self.layout.replicas,
            "write_quorum": self.layout.write_quorum,
            "chunk_size": self.layout.chunk_size,
        }
        section.update(self._tls_section(role))
        section.update(self.layout.extra.get("cluster", {}))
        return section

    def node_config_path(self, i: int) -> Path:
        path = self.base_dir / "config" / f"node-{i + 1}.toml"
        node = {
            "id": self.node_id(i),
            "data_dir": str(self.node_data_dir(i)),
            "grpc_listen": self.node_grpc(i),
            "raft_listen": self.node_raft(i),
            "metrics_address": self.node_metrics(i),
            "peers": [self.node_raft(k) for k in range(self.node_count) if k != i],
        }
        node.update(self.layout.extra.get("node", {}))
        data = {"log_level": self.log_level, "cluster": self._cluster_section(), "node": node}
        if self.layout.extra.get("lifecycle"):
            data["lifecycle"] = dict(self.layout.extra["lifecycle"])
        self._write_config(path, data)
        return path

    def gateway_config_path(self, j: int) -> Path:
        path = self.base_dir / "config" / f"gateway-{j + 1}.toml"
        gateway: dict[str, Any] = {
            "listen": f"{self.layout.host}:{self.layout.gateway_ports[j]}",
            "nodes": self.node_grpc_addresses,
        }
        if self.local_reads:
            local = j % self.node_count
            gateway["local_node_data_dir"] = str(self.node_data_dir(local))
            gateway["local_node_id"] = self.node_id(local)
        if self.gateway_workers > 1:
            gateway["workers"] = self.gateway_workers
            gateway["metrics_address"] = f"{self.layout.host}:{self.gateway_metrics_ports[j]}"
        gateway.update(self.layout.extra.get("gateway", {}))
        # A gateway holds its role's key, not the cluster secret (least privilege).
        cluster = self._cluster_section("gateway")
        cluster["credential"] = format_credential(str(cluster.pop("secret")), "gateway")
        data = {"log_level": self.log_level, "cluster": cluster, "gateway": gateway}
        for section in _GATEWAY_SECTIONS:
            if self.layout.extra.get(section):
                data[section] = dict(self.layout.extra[section])
        self._write_config(path, data)
        return path

    @staticmethod
    def _write_config(path: Path, data: dict[str, Any]) -> None:
        _private_dir(path.parent)
        _write_private(path, to_toml(data))

    def admin_config_path(self) -> Path:
        """config/admin.toml: the admin credential and TLS settings, for `cargohold admin
        --config` (no node or gateway section)."""
        path = self.base_dir / "config" / "admin.toml"
        cluster = self._cluster_section("admin")
        cluster["credential"] = format_credential(str(cluster.pop("secret")), "admin")
        self._write_config(path, {"cluster": cluster})
        return path

    def client_config(self, role: str = "admin") -> Config:
        """A Config that calls this cluster's nodes as `role` (secret, TLS settings)."""
        section = self._cluster_section(role)
        cfg = load_config(overrides={f"cluster.{k}": v for k, v in section.items()}, environ={})
        cfg.role = role
        return cfg

    def channel(self, node: int | str, role: str = "admin") -> grpc.Channel:
        """A blocking channel to node `node` (an index or a gRPC address) whose calls are
        signed as `role`."""
        address = self.node_grpc(node) if isinstance(node, int) else node
        return open_sync_channel(address, self.client_config(role))

    # -- processes ----------------------------------------------------------------------
    def _spawn(
        self, role: str, config: Path, name: str, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        logs = self.base_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        fd = lifeline.launcher_fd()
        command = [sys.executable, "-m", "cargohold_cli", role, "--config", str(config)]
        command += ["--lifeline-fd", str(fd), "--lifeline-grace", str(self.orphan_grace)]
        proc = subprocess.Popen(
            [*(prefix or []), *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=(fd,),
        )
        log.close()
        self.spawned_at[name] = time.monotonic()
        return proc

    def start_node(self, i: int) -> None:
        proc = self.node_procs[i]
        if proc is not None and proc.poll() is None:
            return
        self.node_procs[i] = self._spawn(
            "node", self.node_config_path(i), self.node_id(i), self.node_exec_prefixes[i]
        )

    def add_node(self) -> int:
        """Grow the layout by one node (persisted in cluster.toml) and start its process with
        `peers` = every other node's Raft address. It joins Raft only once the leader adds it
        (`cargohold admin nodes add`, `cargohold_cli.admin.member_change`). Returns its index."""
        if self.layout.node_hosts:
            raise RuntimeError("add_node does not support per-node test hosts")
        host = self.layout.host
        self.layout.node_grpc_ports.append(free_port(host))
        self.layout.node_raft_ports.append(free_port(host))
        self._add_metrics_ports(self.layout, None)
        self._save_layout(self.layout)
        self.node_exec_prefixes.append([])
        self.node_procs.append(None)
        i = self.node_count - 1
        self.start_node(i)
        return i

    def start_gateway(self, j: int) -> None:
        proc = self.gateway_procs[j]
        if proc is not None and proc.poll() is None:
            return
        self.gateway_procs[j] = self._spawn(
            "gateway", self.gateway_config_path(j), f"gateway-{j + 1}"
        )

    def preflight(self) -> None:
        """Before starting what is not running yet: DataDirInUse when another process holds
        a node's data directory, AddressInUse when one of the ports is taken (both name the
        holder). Nodes in other network namespaces (exec prefixes) skip the port check."""
        for i in range(self.node_count):
            proc = self.node_procs[i]
            if proc is not None and proc.poll() is None:
                continue
            held = datadir_lock.holder(self.node_data_dir(i))
            if held is not None:
                raise DataDirInUse(
                    f"{self.node_id(i)}: data directory {self.node_data_dir(i)} is in use by "
                    f"{held.describe()}"
                )
            if not self.node_exec_prefixes[i]:
                ensure_bindable(self.node_grpc(i), f"{self.node_id(i)} gRPC")
                ensure_bindable(self.node_raft(i), f"{self.node_id(i)} Raft")
                ensure_bindable(self.node_metrics(i), f"{self.node_id(i)} metrics")
        for j, proc in enumerate(self.gateway_procs):
            if proc is None or proc.poll() is not None:
                port = self.layout.gateway_ports[j]
                ensure_bindable(f"{self.layout.host}:{port}", f"gateway-{j + 1} HTTP")

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.preflight()
        self.admin_config_path()
        for i in range(self.node_count):
            self.start_node(i)
        for j in range(self.gateway_count):
            self.start_gateway(j)
        self.wait_ready(timeout)
        return self

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        signal_process(self.node_procs[i], sig)

    def kill_gateway(self, j: int, sig: int = signal.SIGKILL) -> None:
        signal_process(self.gateway_procs[j], sig)

    def restart_node(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.kill_node(i, sig)
        self.start_node(i)

    def restart_gateway(self, j: int, sig: int = signal.SIGTERM) -> None:
        self.kill_gateway(j, sig)
        self.start_gateway(j)

    def stop(self) -> None:
        """SIGTERM everything (gateways first), SIGKILL what does not exit in time."""
        for proc in [*self.gateway_procs, *self.node_procs]:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in [*self.gateway_procs, *self.node_procs]:
            signal_process(proc, signal.SIGTERM, wait=10.0)

    def kill_all(self) -> None:
        for proc in [*self.gateway_procs, *self.node_procs]:
            signal_process(proc, signal.SIGKILL)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- readiness and inspection ---------------------------------------------------------
    def node_status(self, i: int, timeout: float = 2.0) -> registry_pb2.StatusReply:
        with self.channel(i) as channel:
            stub = registry_pb2_grpc.AdminStub(channel)
            return stub.Status(registry_pb2.StatusRequest(), timeout=timeout)

    def members(self, i: int = 0, timeout: float = 2.0) -> list[dict[str, Any]]:
        with self.channel(i) as channel:
            stub = registry_pb2_grpc.MetadataStub(channel)
            reply = stub.Query(
                registry_pb2.MetadataRequest(op=Members.op, args=Members().args_json()),
                timeout=timeout,
            )
            return list(json.loads(reply.result))

    def leader_index(self) -> int | None:
        """Index of the node that reports itself Raft leader, if one answers. When two do
        (a deposed leader that has not heard of the new term yet), the one the most
        answering nodes name as their leader."""
        claims: list[tuple[int, str]] = []
        named: collections.Counter[str] = collections.Counter()
        for i in self.running_nodes():
            with contextlib.suppress(grpc.RpcError):
                status = self.node_status(i)
                if status.leader_raft_address:
                    named[status.leader_raft_address] += 1
                if status.is_leader:
                    claims.append((i, status.raft_address))
        if not claims:
            return None
        return max(claims, key=lambda claim: named[claim[1]])[0]

    def running_nodes(self) -> list[int]:
        return [i for i, p in enumerate(self.node_procs) if p is not None and p.poll() is None]

    def wait_answering(self, i: int, timeout: float = 60.0) -> None:
        """Until node i answers Admin.Status (a restarted node's gRPC port is up again)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.node_status(i, timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_READY_POLL)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until a leader exists, every running node joined, and every gateway answers /v2/."""
        deadline = time.monotonic() + timeout
        last_error = "not started"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                self._check_ready()
                return
            except (grpc.RpcError, OSError, urllib.error.URLError, AssertionError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(_READY_POLL)
        raise TimeoutError(f"cluster not ready after {timeout}s: {last_error}\n{self.tail_logs()}")

    def _check_ready(self) -> None:
        running = self.running_nodes()
        assert running, "no node running"
        assert self.leader_index() is not None, "no raft leader"
        # Every running node answers gRPC (a just-restarted one may not yet) ...
        for i in running:
            self.node_status(i)
        # ... and has joined (draining members are still members that serve reads).
        joined = {
            m["id"] for m in self.members(running[0]) if m.get("state") in ("active", "draining")
        }
        wanted = {self.node_id(i) for i in running}
        assert wanted <= joined, f"members joined {sorted(joined)}, want {sorted(wanted)}"
        for j, proc in enumerate(self.gateway_procs):
            if proc is None or proc.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"{self.gateway_urls[j]}/v2/", timeout=2) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code  # 401: [auth] is on, the gateway answers
            assert status in (200, 401), f"gateway {j} answered {status}"
            if self.gateway_workers > 1:
                # Every worker is up (the listener answers as soon as one is).
                for address in self.gateway_worker_metrics(j):
                    with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as r:
                        assert r.status == 200, f"gateway {j} worker at {address}: {r.status}"
        self._check_own_listeners()

    def _check_own_listeners(self) -> None:
        """What answered is ours: each running child holds its own listening socket (not a
        leftover process on the same port). Skipped where /proc cannot tell."""
        if not Path("/proc/self/net/tcp").exists():
            return
        owned = [
            (self.node_id(i), p, self.layout.node_grpc_ports[i])
            for i, p in enumerate(self.node_procs)
        ]
        owned += [
            (f"gateway-{j + 1}", p, self.layout.gateway_ports[j])
            for j, p in enumerate(self.gateway_procs)
        ]
        for name, proc, port in owned:
            if proc is None or proc.poll() is not None:
                continue
            if name.startswith("gateway-") and self.gateway_workers > 1:
                # A supervisor listens through its workers.
                assert any(listens(c, port) for c in child_pids(proc.pid)), (
                    f"{name} (pid {proc.pid}) has no worker listening on {port}"
                )
                continue
            assert listens(proc.pid, port), f"{name} (pid {proc.pid}) not listening on {port}"

    def _raise_if_exited(self) -> None:
        for name, proc in self._named_procs():
            if (
                proc is not None
                and proc.poll() is not None
                and proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM)
            ):
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.tail_logs()}")

    def _named_procs(self) -> list[tuple[str, subprocess.Popen[bytes] | None]]:
        return [(self.node_id(i), p) for i, p in enumerate(self.node_procs)] + [
            (f"gateway-{j + 1}", p) for j, p in enumerate(self.gateway_procs)
        ]

    def tail_logs(self, lines: int = 30) -> str:
        out = []
        for path in sorted((self.base_dir / "logs").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)
