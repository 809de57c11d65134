"""`cargohold dev`: run a LocalCluster in the foreground and keep its processes up.

Before anything starts it takes the lock `<data>/LOCK` (a second `cargohold dev` on the
same data exits with status 3 naming the first) and checks every node's data directory
and every port (status 3 or 4, naming the holder). It prints "ready" once the processes
answering are its own children, then every process's addresses (metrics included). A
child that exits is restarted, unless it failed the same way at startup
`--max-start-failures` times in a row (a startup exit status, or an exit within
`--start-window` seconds): then it is left stopped and the reason printed. SIGINT,
SIGTERM and SIGHUP stop the gateways, then the nodes; the children also stop by
themselves if this process dies (cargohold_cli/lifeline.py).

`--auth` turns on token auth (the gateway's built-in token service, users and roles in
the cluster metadata): the signing key is `<data>/auth/token-key.pem`, and on the first
such start an `admin` cluster admin is created with a generated password written 0600 to
`<data>/admin-password` (printed once). Without `--auth` the registry is open.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cargohold.datadir_lock import DataDirLock
from cargohold.errors import StartupError
from cargohold_cli.exits import STARTUP_EXITS, describe_exit

if TYPE_CHECKING:
    from cargohold_cli.devcluster import LocalCluster


@dataclass
class _Streak:
    """Consecutive startup failures of one process with the same exit status."""

    status: int | None = None
    count: int = 0


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _print(text: str, error: bool = False) -> None:
    print(f"cargohold dev: {text}", file=sys.stderr if error else sys.stdout, flush=True)


def run_dev(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    try:
        lock = DataDirLock.acquire(data, "cargohold dev", gateway_port=args.port)
    except StartupError as exc:
        _print(f"not starting: {exc}", error=True)
        return exc.exit_code
    try:
        return _run_locked(args, data)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, data: Path) -> int:
    # Imported only now: a refused start (data in use) answers before loading gRPC.
    from cargohold_cli.devcluster import LocalCluster

    cluster = LocalCluster(
        data,
        nodes=args.nodes,
        gateways=1,
        gateway_port=args.port,
        node_base_port=args.node_base_port,
        log_level=args.log_level,
        host=args.host,
    )
    if args.auth:
        cluster.layout.extra["auth"] = _auth_section(data)
    else:
        cluster.layout.extra.pop("auth", None)
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        cluster.preflight()
    except StartupError as exc:
        _print(f"not starting: {exc}", error=True)
        return exc.exit_code
    _print(f"starting {cluster.node_count} nodes and a gateway (data in {data})")
    try:
        cluster.start(timeout=90)
    except StartupError as exc:
        _print(f"not starting: {exc}", error=True)
        cluster.stop()
        return exc.exit_code
    except (TimeoutError, RuntimeError) as exc:
        _print(f"cluster failed to start: {exc}", error=True)
        cluster.stop()
        return 1
    if args.auth:
        try:
            _ensure_admin(cluster, data)
        except Exception as exc:  # the registry runs; say why there is no admin
            _print(f"could not create the initial admin user: {exc}", error=True)
    print(
        f"cargohold dev: registry ready at {cluster.gateway_url}  (try: docker push "
        f"{cluster.gateway_url.removeprefix('http://')}/myimage:latest)"
    )
    for i in range(cluster.node_count):
        print(
            f"  node {cluster.node_id(i)}: grpc {cluster.node_grpc(i)}  raft "
            f"{cluster.node_raft(i)}  metrics http://{cluster.node_metrics(i)}/metrics  "
            f"data {cluster.node_data_dir(i)}"
        )
    for j in range(cluster.gateway_count):
        print(
            f"  gateway-{j + 1}: metrics http://{cluster.gateway_metrics(j)}/metrics  "
            f"ready http://{cluster.gateway_metrics(j)}/readyz"
        )
    print(
        f"  logs: {data / 'logs'}   status: cargohold admin --config "
        f"{cluster.admin_config_path()} status --nodes {','.join(cluster.node_grpc_addresses)}"
    )
    print("  Ctrl-C stops the cluster; data is kept for the next start.", flush=True)
    try:
        everything_failed = _supervise(cluster, args, data, lambda: stopping)
    finally:
        _print("stopping")
        cluster.stop()
    return 1 if everything_failed else 0


def _auth_section(data: Path) -> dict[str, Any]:
    """Token mode with a signing key kept in `<data>/auth/` (created 0700/0600 once)."""
    from gateway.auth.keys import generate_signing_key

    auth_dir = data / "auth"
    auth_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = auth_dir / "token-key.pem"
    if not key.exists():
        generate_signing_key(str(key))
    return {"mode": "token", "signing_key": str(key)}


def _ensure_admin(cluster: LocalCluster, data: Path) -> None:
    """On the first `--auth` start: a cluster admin `admin`, password in admin-password."""
    from cargohold.credentials import new_password
    from cargohold_cli.admin_access import add_user

    path = data / "admin-password"
    if path.exists():
        _print(f"admin password in {path}")
        return
    password = new_password()
    add_user(cluster.node_grpc_addresses, cluster.client_config("admin"), "admin", password, True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    _print(f"created user admin; password (shown once, kept in {path}): {password}")


def _supervise(cluster: LocalCluster, args: argparse.Namespace, data: Path, stopping: Any) -> bool:
    """Restart what exits until `stopping()`; give up on a process that keeps failing.
    True when it gave up on every process (nothing left to run)."""
    streaks: dict[str, _Streak] = {}
    given_up: set[str] = set()
    while not stopping():
        if len(given_up) == len(cluster._named_procs()):
            return True
        for name, proc in cluster._named_procs():
            if name in given_up or proc is None or proc.poll() is None:
                continue
            status = proc.returncode
            lived = time.monotonic() - cluster.spawned_at.get(name, 0.0)
            streak = streaks.setdefault(name, _Streak())
            if status in STARTUP_EXITS or lived < args.start_window:
                if streak.status == status:
                    streak.count += 1
                else:
                    streak.status, streak.count = status, 1
            else:
                streak.status, streak.count = None, 0
            if streak.count >= args.max_start_failures:
                given_up.add(name)
                why = _last_line(data / "logs" / f"{name}.log")
                _print(
                    f"{name} failed at startup {streak.count} times in a row "
                    f"({describe_exit(status)}); not restarting it. Last log line: {why}",
                    error=True,
                )
                continue
            _print(f"{name} exited ({describe_exit(status)}); restarting", error=True)
            if name.startswith("gateway"):
                cluster.start_gateway(int(name.split("-")[1]) - 1)
            else:
                cluster.start_node(int(name[1:]) - 1)
        time.sleep(0.5)
    return False
