"""The one `cargohold` entry point: `dev`, `node`, `gateway` and `admin` verbs.

    cargohold dev [--data DIR] [--port 5000]       a local 3-node cluster + gateway
    cargohold node --config node.toml              one storage node (chunk store + Raft)
    cargohold gateway --config gateway.toml        one stateless HTTP gateway
    cargohold admin status [--nodes host:port,..]  members, leader, chunks and disk per node
    cargohold admin nodes add --id ID --grpc ADDR --raft ADDR   add a storage node
    cargohold admin nodes drain ID | undrain ID | remove ID [--force]
    cargohold admin repair [--scrub] [--wait]       run a repair (or scrub) pass now

Every verb has `--help`. Settings come from cargohold/config.py (file, environment,
then these flags).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cargohold.config import load_config
from cargohold.errors import CargoholdError
from cargohold.log import setup_logging


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file ([cluster], [node], [gateway])")
    parser.add_argument("--log-level", help="warning (default), info or debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cargohold", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    dev = sub.add_parser("dev", help="run a local cluster (3 nodes + a gateway)")
    dev.add_argument(
        "--data",
        default=os.environ.get("CARGOHOLD_DEV_DATA", "./data"),
        help="data directory (default ./data, env CARGOHOLD_DEV_DATA)",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    dev.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CARGOHOLD_DEV_PORT", 5000)),
        help="gateway port (default 5000, env CARGOHOLD_DEV_PORT)",
    )
    dev.add_argument("--nodes", type=int, default=3, help="storage nodes on first start")
    dev.add_argument(
        "--node-base-port",
        type=int,
        default=17001,
        help="first node gRPC port; Raft ports are +100 (first start only)",
    )
    dev.add_argument("--log-level", default="warning")

    node = sub.add_parser("node", help="run one storage node")
    _add_common(node)
    node.add_argument("--id", help="node id (overrides node.id)")
    node.add_argument("--data-dir", help="overrides node.data_dir")

    gateway = sub.add_parser("gateway", help="run one HTTP gateway")
    _add_common(gateway)
    gateway.add_argument("--listen", help="host:port (overrides gateway.listen)")
    gateway.add_argument("--nodes", help="comma-separated node gRPC addresses")

    admin = sub.add_parser("admin", help="inspect and manage a running cluster")
    admin_sub = admin.add_subparsers(dest="admin_verb", required=True)
    status = admin_sub.add_parser("status", help="members, Raft leader, chunks per node")
    status.add_argument(
        "--nodes",
        default=os.environ.get("CARGOHOLD_GATEWAY_NODES", "127.0.0.1:17001"),
        help="comma-separated node gRPC addresses to ask (default: dev)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    nodes_default = os.environ.get("CARGOHOLD_GATEWAY_NODES", "127.0.0.1:17001")
    nodes = admin_sub.add_parser("nodes", help="change the cluster membership")
    nodes.add_argument(
        "--nodes",
        default=nodes_default,
        help="comma-separated node gRPC addresses to ask (default: dev)",
    )
    nodes_sub = nodes.add_subparsers(dest="nodes_verb", required=True)
    add = nodes_sub.add_parser("add", help="add a started node (Raft member, then active)")
    add.add_argument("--id", required=True, help="the new node's id")
    add.add_argument("--grpc", required=True, help="its advertised gRPC address")
    add.add_argument("--raft", required=True, help="its advertised Raft address")
    for verb, text in (
        ("drain", "stop writes to a node; repair moves its chunks away"),
        ("undrain", "make a draining node active again"),
        ("remove", "remove a drained node that holds no chunks"),
    ):
        one = nodes_sub.add_parser(verb, help=text)
        one.add_argument("id", help="node id")
        if verb == "remove":
            one.add_argument(
                "--force",
                action="store_true",
                help="remove even if it does not answer (a dead host)",
            )

    repair = admin_sub.add_parser("repair", help="run a repair (or scrub) pass on every node")
    repair.add_argument(
        "--nodes",
        default=nodes_default,
        help="comma-separated node gRPC addresses to ask (default: dev)",
    )
    repair.add_argument("--scrub", action="store_true", help="scrub instead of repair")
    repair.add_argument("--wait", action="store_true", help="wait until the passes finish")
    repair.add_argument("--json", action="store_true", help="every progress counter, as JSON")
    return parser


def run_dev(args: argparse.Namespace) -> int:
    from cargohold_cli.devcluster import LocalCluster

    data = Path(args.data).resolve()
    cluster = LocalCluster(
        data,
        nodes=args.nodes,
        gateways=1,
        gateway_port=args.port,
        node_base_port=args.node_base_port,
        log_level=args.log_level,
        host=args.host,
    )
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"cargohold dev: starting {cluster.node_count} nodes and a gateway (data in {data})",
        flush=True,
    )
    try:
        cluster.start(timeout=90)
    except (TimeoutError, RuntimeError) as exc:
        print(f"cargohold dev: cluster failed to start: {exc}", file=sys.stderr)
        cluster.stop()
        return 1
    print(
        f"cargohold dev: registry ready at {cluster.gateway_url}  (try: docker push "
        f"{cluster.gateway_url.removeprefix('http://')}/myimage:latest)"
    )
    for i in range(cluster.node_count):
        print(
            f"  node {cluster.node_id(i)}: grpc {cluster.node_grpc(i)}  raft "
            f"{cluster.node_raft(i)}  data {cluster.node_data_dir(i)}"
        )
    print(
        f"  logs: {data / 'logs'}   status: cargohold admin status --nodes "
        f"{','.join(cluster.node_grpc_addresses)}"
    )
    print("  Ctrl-C stops the cluster; data is kept for the next start.", flush=True)
    try:
        while not stopping:
            for name, proc in cluster._named_procs():
                if proc is not None and proc.poll() is not None:
                    print(
                        f"cargohold dev: {name} exited ({proc.returncode}); restarting",
                        file=sys.stderr,
                        flush=True,
                    )
                    if name.startswith("gateway"):
                        cluster.start_gateway(int(name.split("-")[1]) - 1)
                    else:
                        cluster.start_node(int(name[1:]) - 1)
            time.sleep(0.5)
    finally:
        print("cargohold dev: stopping", flush=True)
        cluster.stop()
    return 0


def run_status(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import cluster_status, format_status

    status = cluster_status([a.strip() for a in args.nodes.split(",") if a.strip()])
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0 if status.get("leader") else 2


def _addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def run_nodes(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import member_change

    addresses = _addresses(args.nodes)
    try:
        if args.nodes_verb == "add":
            members = member_change(addresses, "AddMember", args.id, args.grpc, args.raft)
        elif args.nodes_verb in ("drain", "undrain"):
            state = "draining" if args.nodes_verb == "drain" else "active"
            members = member_change(addresses, "SetMemberState", args.id, state=state)
        else:
            members = member_change(addresses, "RemoveMember", args.id, force=args.force)
    except RuntimeError as exc:
        print(f"cargohold: {args.nodes_verb} {args.id}: {exc}", file=sys.stderr)
        return 1
    for m in members:
        print(f"{m['id']:<8} {m['state']:<9} grpc {m['grpc']:<22} raft {m['raft']}")
    return 0


def run_repair(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import cluster_status, trigger

    addresses = _addresses(args.nodes)
    members = cluster_status(addresses)["members"]
    targets = [m["grpc"] for m in members if m.get("state") != "removed"] or addresses
    results = trigger(targets, "scrub" if args.scrub else "repair", wait=args.wait)
    if args.json:
        print(json.dumps(results, indent=2))
    keys = (
        ("chunks_scrubbed", "corrupt_found", "repaired", "refetch_failed")
        if args.scrub
        else ("scanned", "under_replicated", "repaired_bytes", "moved_away_bytes", "copy_failures")
    )
    for address, progress in results.items():
        if args.json:
            break
        if "error" in progress:
            print(f"{address:<22} error {progress['error']}")
            continue
        detail = " ".join(f"{k}={progress.get(k)}" for k in keys)
        print(f"{address:<22} passes={progress.get('passes')} {detail}")
    return 1 if any("error" in r for r in results.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "dev":
            setup_logging(args.log_level)
            return run_dev(args)
        if args.verb == "admin":
            setup_logging("warning")
            if args.admin_verb == "status":
                return run_status(args)
            if args.admin_verb == "nodes":
                return run_nodes(args)
            if args.admin_verb == "repair":
                return run_repair(args)
            return 2
        overrides: dict[str, Any] = {}
        if args.verb == "node":
            overrides = {"node.id": args.id, "node.data_dir": args.data_dir}
        elif args.verb == "gateway":
            overrides = {"gateway.listen": args.listen, "gateway.nodes": args.nodes}
        cfg = load_config(args.config, overrides)
        setup_logging(args.log_level or cfg.log_level)
        if args.verb == "node":
            from node.server import main as node_main

            node_main(cfg)
        else:
            from gateway.server import main as gateway_main

            gateway_main(cfg)
        return 0
    except CargoholdError as exc:
        print(f"cargohold: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
