"""The one `cargohold` entry point: `dev`, `node`, `gateway` and `admin` verbs.

    cargohold dev [--data DIR] [--port 5000]       a local 3-node cluster + gateway
    cargohold node --config node.toml              one storage node (chunk store + Raft)
    cargohold gateway --config gateway.toml        one stateless HTTP gateway
    cargohold admin status [--nodes host:port,..]  members, leader, chunks and disk per node
    cargohold admin nodes add --id ID --grpc ADDR --raft ADDR   add a storage node
    cargohold admin nodes drain ID | undrain ID | remove ID [--force]
    cargohold admin repair [--scrub] [--wait]       run a repair (or scrub) pass now
    cargohold admin gc [--dry-run] [--wait] [--json]  garbage collection pass on every node
    cargohold admin retention [--dry-run] [--json]  apply (or report) the retention policies
    cargohold admin trash list [--repo R] [--json]  deleted manifests and tags, restorable
    cargohold admin trash restore REPO@DIGEST|REPO:TAG [--force]   put one back
    cargohold admin trash purge [--repo R] [--older-than S]        empty the trash now
    cargohold admin stop --data DIR                 stop the processes owning DIR's locks
    cargohold admin certs ca --dir DIR              create the cluster CA (mTLS)
    cargohold admin certs issue --dir DIR --role node|gateway|admin --name N [--host H]..
    cargohold admin keys gateway|admin              a role credential derived from the secret
    cargohold admin users add|passwd|disable|enable|list ...   registry users (token mode)
    cargohold admin namespaces add|set-visibility|grant|revoke|list ...   namespaces, roles
    cargohold admin audit [verify|export] [--repo R] [--actor A] [--action X] [--since T]
                          [--until T] [--json] [--anchor FILE]   list, JSON lines, verify
    cargohold admin namespaces quota set NS SIZE | unset NS | show [NS]   storage quotas
    cargohold admin trust add-key|remove-key|require-signature|list ...   signed images
    cargohold admin groups add|delete|add-member|remove-member|list ...   groups of users
    cargohold admin robots add|list|revoke ...      robot accounts for CI
    cargohold admin webhooks add|list|remove|dead-letters|retry ...   notifications
    cargohold admin replication list|status|run ...   replication rules
    cargohold admin sbom list [--repo R] [--state S] [--json] | rescan REPO@DIGEST   SBOM scans

Admin verbs authenticate as the `admin` role with the cluster secret or an admin
credential from `--config FILE` or the environment (CARGOHOLD_CLUSTER_SECRET[_FILE],
CARGOHOLD_CLUSTER_CREDENTIAL[_FILE]); `cargohold dev` writes one in
<data>/config/admin.toml. See docs/security.md.

Every verb has `--help`. Settings come from cargohold/config.py (file, environment,
then these flags). Exit statuses: cargohold_cli/exits.py (README.md, "Exit codes").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cargohold.cluster_auth import format_credential, require_secret
from cargohold.config import Config, load_config
from cargohold.errors import CargoholdError, ConfigError, RegistryError
from cargohold.log import setup_logging
from cargohold.memtune import tune_malloc
from cargohold.metadata_api import ROLES, VISIBILITIES
from cargohold_cli import (
    admin_replication,
    admin_robots,
    admin_sbom,
    admin_trust,
    admin_vulns,
    admin_webhooks,
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file ([cluster], [node], [gateway])")
    parser.add_argument("--log-level", help="warning (default), info or debug")
    # Given by a launcher (cargohold_cli/lifeline.py): stop when the launcher is gone.
    parser.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lifeline-grace", type=float, default=3.0, help=argparse.SUPPRESS)


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
    dev.add_argument(
        "--auth",
        action="store_true",
        help="token auth with users in the cluster; creates `admin` (password in "
        "<data>/admin-password)",
    )
    dev.add_argument(
        "--max-start-failures",
        type=int,
        default=3,
        help="stop restarting a process that failed the same way at startup this many "
        "times in a row (default 3)",
    )
    dev.add_argument(
        "--start-window",
        type=float,
        default=10.0,
        help="an exit within this many seconds of starting counts as a startup failure "
        "(default 10)",
    )

    node = sub.add_parser("node", help="run one storage node")
    _add_common(node)
    node.add_argument("--id", help="node id (overrides node.id)")
    node.add_argument("--data-dir", help="overrides node.data_dir")

    gateway = sub.add_parser("gateway", help="run one HTTP gateway")
    _add_common(gateway)
    gateway.add_argument("--listen", help="host:port (overrides gateway.listen)")
    gateway.add_argument("--nodes", help="comma-separated node gRPC addresses")

    admin = sub.add_parser("admin", help="inspect and manage a running cluster")
    admin.add_argument("--config", help="TOML config with [cluster] secret or credential")
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

    gc = admin_sub.add_parser(
        "gc", help="garbage collection pass on every node (the leader's first: it prunes)"
    )
    gc.add_argument(
        "--nodes",
        default=nodes_default,
        help="comma-separated node gRPC addresses to ask (default: dev)",
    )
    gc.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    gc.add_argument("--wait", action="store_true", help="wait until the passes finish")
    gc.add_argument("--json", action="store_true", help="every progress counter, as JSON")

    retention = admin_sub.add_parser(
        "retention", help="apply the retention policies now (on the Raft leader) and report"
    )
    retention.add_argument(
        "--nodes",
        default=nodes_default,
        help="comma-separated node gRPC addresses to ask (default: dev)",
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted, delete nothing"
    )
    retention.add_argument("--json", action="store_true", help="the whole report, as JSON")
    trash = admin_sub.add_parser(
        "trash", help="deleted manifests and tags, restorable until the retention ends"
    )
    trash_sub = trash.add_subparsers(dest="trash_verb", required=True)
    t_list = trash_sub.add_parser("list", help="what the trash holds")
    t_list.add_argument("--repo", help="one repository only")
    t_list.add_argument("--json", action="store_true", help="machine-readable output")
    t_restore = trash_sub.add_parser("restore", help="put a manifest or tag back")
    t_restore.add_argument("ref", help="REPO@DIGEST (the manifest and its tags) or REPO:TAG")
    t_restore.add_argument(
        "--force", action="store_true", help="move a tag back that now points elsewhere"
    )
    t_purge = trash_sub.add_parser("purge", help="forget trash entries now (GC reclaims next)")
    t_purge.add_argument("--repo", help="one repository only")
    t_purge.add_argument(
        "--older-than", type=float, default=0.0, help="only entries deleted this many seconds ago"
    )
    for one in (t_list, t_restore, t_purge):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")

    stop = admin_sub.add_parser(
        "stop", help="stop the processes that hold a data directory (launcher, gateways, nodes)"
    )
    stop.add_argument(
        "--data",
        default=os.environ.get("CARGOHOLD_DEV_DATA", "./data"),
        help="a `cargohold dev` data directory or a node's data_dir (default ./data)",
    )
    stop.add_argument(
        "--timeout", type=float, default=30.0, help="seconds after SIGTERM before SIGKILL"
    )
    certs = admin_sub.add_parser("certs", help="cluster CA and mTLS certificates")
    certs_sub = certs.add_subparsers(dest="certs_verb", required=True)
    ca = certs_sub.add_parser("ca", help="create the cluster CA (ca.pem, ca-key.pem)")
    ca.add_argument("--dir", required=True, help="directory for the CA (created 0700)")
    ca.add_argument("--days", type=int, default=3650, help="validity (default 10 years)")
    issue = certs_sub.add_parser("issue", help="issue a node, gateway or admin certificate")
    issue.add_argument("--dir", required=True, help="the CA's directory (output goes there)")
    issue.add_argument("--role", required=True, choices=("node", "gateway", "admin"))
    issue.add_argument("--name", required=True, help="CN and file name (n1, gateway-1, ...)")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="DNS name or IP clients dial (repeat; nodes need theirs)",
    )
    issue.add_argument("--days", type=int, default=730, help="validity (default 2 years)")
    keys = admin_sub.add_parser(
        "keys", help="print the credential of one role, derived from the cluster secret"
    )
    keys.add_argument("role", choices=("gateway", "admin", "node"))
    users = admin_sub.add_parser("users", help="registry users (token mode without htpasswd)")
    users_sub = users.add_subparsers(dest="users_verb", required=True)
    u_add = users_sub.add_parser("add", help="create a user (password generated unless given)")
    u_add.add_argument("name")
    u_add.add_argument("--admin", action="store_true", help="a cluster admin (everything)")
    u_passwd = users_sub.add_parser("passwd", help="set a new password")
    u_passwd.add_argument("name")
    for one in (u_add, u_passwd):
        one.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    u_disable = users_sub.add_parser("disable", help="refuse the user's logins and tokens")
    u_disable.add_argument("name")
    u_enable = users_sub.add_parser("enable", help="undo disable")
    u_enable.add_argument("name")
    u_list = users_sub.add_parser("list", help="users, admins and their roles")
    namespaces = admin_sub.add_parser("namespaces", help="namespaces (repository prefixes)")
    ns_sub = namespaces.add_subparsers(dest="ns_verb", required=True)
    ns_add = ns_sub.add_parser("add", help="create a namespace")
    ns_vis = ns_sub.add_parser("set-visibility", help="private or public (anonymous pull)")
    for one in (ns_add, ns_vis):
        one.add_argument("name")
        one.add_argument("visibility", nargs="?", default="private", choices=VISIBILITIES)
    ns_grant = ns_sub.add_parser("grant", help="give a user (or --group) a role in a namespace")
    ns_grant.add_argument("namespace")
    ns_grant.add_argument("user")
    ns_grant.add_argument("role", choices=ROLES)
    ns_revoke = ns_sub.add_parser("revoke", help="take a user's (or --group's) role away")
    ns_revoke.add_argument("namespace")
    ns_revoke.add_argument("user")
    for one in (ns_grant, ns_revoke):
        one.add_argument("--group", action="store_true", help="USER names a group")
    ns_list = ns_sub.add_parser("list", help="namespaces, visibility and grants")
    audit = admin_sub.add_parser(
        "audit", help="the activity log: list (default), export (JSON lines), verify"
    )
    audit.add_argument(
        "audit_verb", nargs="?", default="list", choices=("list", "export", "verify")
    )
    audit.add_argument("--repo", help="one repository, or a prefix ending in /")
    audit.add_argument("--actor", help="user or robot name ('' = anonymous)")
    audit.add_argument("--action", help="push, pull, delete, login, denied, admin, ...")
    audit.add_argument("--since", help="from this time (epoch seconds or ISO 8601, UTC)")
    audit.add_argument("--until", help="before this time")
    audit.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
    audit.add_argument("--json", action="store_true", help="JSON lines (as export)")
    audit.add_argument(
        "--anchor",
        metavar="FILE",
        help="export: also write the chain's head to FILE (keep it off the cluster); "
        "verify: also check the chain still passes through FILE's head",
    )
    ns_quota = ns_sub.add_parser("quota", help="storage quota of a namespace (any prefix)")
    quota_sub = ns_quota.add_subparsers(dest="quota_verb", required=True)
    q_set = quota_sub.add_parser("set", help="limit the namespace's stored bytes")
    q_set.add_argument("namespace")
    q_set.add_argument("size", help="bytes, or with a unit: 500MB, 10GiB, ...")
    q_unset = quota_sub.add_parser("unset", help="remove the namespace's quota")
    q_unset.add_argument("namespace")
    q_show = quota_sub.add_parser("show", help="quotas with their deduplicated usage")
    q_show.add_argument("namespace", nargs="?", help="only this namespace")
    access_verbs = (u_add, u_passwd, u_disable, u_enable, u_list, ns_add, ns_vis, ns_grant)
    for one in (*access_verbs, ns_revoke, ns_list, q_set, q_unset, q_show):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
        one.add_argument("--json", action="store_true", help="machine-readable list output")
    trust = admin_trust.add_parser(admin_sub, nodes_default)
    webhooks = admin_webhooks.add_parser(admin_sub, nodes_default)
    replication = admin_replication.add_parser(admin_sub, nodes_default)
    sbom = admin_sbom.add_parser(admin_sub, nodes_default)
    groups_robots = admin_robots.add_parsers(admin_sub, nodes_default)
    vulns = admin_vulns.add_parsers(admin_sub, nodes_default)
    for one in (
        status,
        nodes,
        repair,
        gc,
        retention,
        keys,
        users,
        namespaces,
        audit,
        trash,
        trust,
        webhooks,
        replication,
        sbom,
        *groups_robots,
        *vulns,
    ):
        one.add_argument("--config", default=argparse.SUPPRESS, help="as `admin --config`")
    return parser


def run_status(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import cluster_status, format_status

    status = cluster_status(_addresses(args.nodes), cfg=_admin_cfg(args))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0 if status.get("leader") else 2


def _addresses(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _admin_cfg(args: argparse.Namespace) -> Config:
    from cargohold_cli.admin import admin_config

    cfg = admin_config(args.config)
    require_secret(cfg, "admin")
    return cfg


def run_certs(args: argparse.Namespace) -> int:
    from cargohold.certs import create_ca, issue

    try:
        if args.certs_verb == "ca":
            print(create_ca(args.dir, days=args.days))
        else:
            for path in issue(args.dir, args.role, args.name, args.host, days=args.days):
                print(path)
    except (OSError, ValueError) as exc:
        print(f"cargohold: certs {args.certs_verb}: {exc}", file=sys.stderr)
        return 1
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import admin_config

    cfg = admin_config(args.config)
    if not cfg.cluster.secret:
        print("cargohold: keys needs cluster.secret (--config or environment)", file=sys.stderr)
        return 1
    print(format_credential(cfg.cluster.secret, args.role))
    return 0


def run_nodes(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import member_change

    addresses = _addresses(args.nodes)
    cfg = _admin_cfg(args)
    try:
        if args.nodes_verb == "add":
            members = member_change(addresses, "AddMember", args.id, args.grpc, args.raft, cfg=cfg)
        elif args.nodes_verb in ("drain", "undrain"):
            state = "draining" if args.nodes_verb == "drain" else "active"
            members = member_change(addresses, "SetMemberState", args.id, state=state, cfg=cfg)
        else:
            members = member_change(addresses, "RemoveMember", args.id, force=args.force, cfg=cfg)
    except RuntimeError as exc:
        print(f"cargohold: {args.nodes_verb} {args.id}: {exc}", file=sys.stderr)
        return 1
    for m in members:
        print(f"{m['id']:<8} {m['state']:<9} grpc {m['grpc']:<22} raft {m['raft']}")
    return 0


def run_repair(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import cluster_status, trigger

    addresses = _addresses(args.nodes)
    cfg = _admin_cfg(args)
    members = cluster_status(addresses, cfg=cfg)["members"]
    targets = [m["grpc"] for m in members if m.get("state") != "removed"] or addresses
    results = trigger(targets, "scrub" if args.scrub else "repair", wait=args.wait, cfg=cfg)
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


def run_gc(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import run_gc as gc_passes

    results = gc_passes(
        _addresses(args.nodes), dry_run=args.dry_run, wait=args.wait, cfg=_admin_cfg(args)
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 1 if any("error" in r for r in results.values()) else 0
    keys = ("swept_chunks", "swept_bytes", "spared_young", "pruned_blobs", "marked_chunks")
    for address, progress in results.items():
        if "error" in progress:
            print(f"{address:<22} error {progress['error']}")
            continue
        detail = " ".join(f"{k}={progress.get(k)}" for k in keys)
        dry = " (dry run)" if progress.get("dry_run") else ""
        print(f"{address:<22} passes={progress.get('passes')} {detail}{dry}")
    return 1 if any("error" in r for r in results.values()) else 0


def run_retention(args: argparse.Namespace) -> int:
    from cargohold_cli.admin import format_retention
    from cargohold_cli.admin import run_retention as retention_pass

    result = retention_pass(_addresses(args.nodes), dry_run=args.dry_run, cfg=_admin_cfg(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_retention(result))
    return 1 if "error" in result or "error" in (result.get("report") or {}) else 0


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    from cargohold.credentials import new_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise ConfigError("empty password on stdin")
        return password, False
    return new_password(), True


def run_quota(args: argparse.Namespace) -> int:
    from cargohold.quotas import parse_size
    from cargohold_cli import admin_quotas as quotas

    cfg, nodes = _admin_cfg(args), _addresses(args.nodes)
    if args.quota_verb == "set":
        quotas.set_quota(nodes, cfg, args.namespace, parse_size(args.size))
    elif args.quota_verb == "unset":
        quotas.set_quota(nodes, cfg, args.namespace, None)
    else:
        rows = [
            q
            for q in quotas.quota_list(nodes, cfg)
            if args.namespace is None or q.namespace == args.namespace
        ]
        if args.json:
            print(json.dumps([quotas.quota_json(q) for q in rows], indent=2))
        else:
            print(quotas.format_quotas(rows))
        if args.namespace is not None and not rows:
            print(f"cargohold: no quota on namespace {args.namespace}", file=sys.stderr)
            return 1
    return 0


def run_access(args: argparse.Namespace) -> int:
    from cargohold_cli import admin_access as access

    if getattr(args, "ns_verb", None) == "quota":
        return run_quota(args)
    cfg, nodes = _admin_cfg(args), _addresses(args.nodes)
    verb = f"{args.admin_verb} {getattr(args, 'users_verb', None) or args.ns_verb}"
    if verb in ("users add", "users passwd"):
        password, generated = _password(args)
        if verb == "users add":
            access.add_user(nodes, cfg, args.name, password, args.admin)
        else:
            access.set_password(nodes, cfg, args.name, password)
        if generated:
            print(f"password for {args.name} (shown once): {password}")
    elif verb in ("users disable", "users enable"):
        access.set_user(nodes, cfg, args.name, verb == "users disable", None)
    elif verb in ("namespaces add", "namespaces set-visibility"):
        access.put_namespace(nodes, cfg, args.name, args.visibility)
    elif verb in ("namespaces grant", "namespaces revoke"):
        role = args.role if verb == "namespaces grant" else None
        if args.group:
            access.grant_group(nodes, cfg, args.namespace, args.user, role)
        else:
            access.grant(nodes, cfg, args.namespace, args.user, role)
    else:
        data = access.access_list(nodes, cfg)
        if args.json:
            rows: Any = data.users if args.admin_verb == "users" else data.namespaces
            # Password hashes stay out of listings.
            out = [{k: v for k, v in r.to_json().items() if k != "password_hash"} for r in rows]
            print(json.dumps(out, indent=2))
        elif args.admin_verb == "users":
            print(access.format_users(data))
        else:
            print(access.format_namespaces(data))
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from cargohold_cli import admin_audit

    cfg, nodes = _admin_cfg(args), _addresses(args.nodes)
    if args.audit_verb == "verify":
        anchor = admin_audit.read_anchor(args.anchor) if args.anchor else None
        report = admin_audit.verify_cluster(nodes, cfg, anchor)
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            state = "intact" if report.ok else "TAMPERED OR DAMAGED"
            print(
                f"activity log {state}: {report.checked} records checked "
                f"({report.segments} sealed segments), head seq {report.head_seq} "
                f"hash {report.head_hash}"
            )
            if report.anchor_checked:
                print(f"  passes through the anchor in {args.anchor}")
            for problem in report.problems:
                print(f"  {problem}")
        return 0 if report.ok else 1
    if args.anchor and args.audit_verb == "export":
        # The head first: every record up to it is in the export that follows.
        written = admin_audit.write_anchor(nodes, cfg, args.anchor)
        print(f"anchor: seq {written['seq']} hash {written['hash']}", file=sys.stderr)
    records = admin_audit.query(
        nodes,
        cfg,
        repo=args.repo,
        actor=args.actor,
        action=args.action,
        since=admin_audit.parse_time(args.since),
        until=admin_audit.parse_time(args.until),
    )
    as_json = args.json or args.audit_verb == "export"
    for record in records:
        print(json.dumps(record) if as_json else admin_audit.format_record(record))
    return 0


def run_trash(args: argparse.Namespace) -> int:
    from cargohold_cli import admin_trash

    cfg, nodes = _admin_cfg(args), _addresses(args.nodes)
    retention = cfg.lifecycle.trash_retention_seconds
    try:
        if args.trash_verb == "list":
            entries = admin_trash.list_trash(nodes, cfg, args.repo)
            if args.json:
                print(json.dumps([admin_trash.entry_json(e, retention) for e in entries], indent=2))
            else:
                print(admin_trash.format_entries(entries, retention))
        elif args.trash_verb == "restore":
            repo, restored = admin_trash.restore(nodes, cfg, args.ref, args.force)
            for digest in restored.manifests:
                print(f"restored manifest {repo}@{digest}")
            for tag in restored.tags:
                print(f"restored tag {repo}:{tag}")
        else:
            purged = admin_trash.purge(nodes, cfg, args.repo, args.older_than)
            print(f"purged {purged} trash entries; `cargohold admin gc` reclaims their bytes")
    except RegistryError as exc:
        # A refusal of the state (not in the trash, a tag moved since): the admin call failed.
        print(f"cargohold admin trash {args.trash_verb}: {exc}", file=sys.stderr)
        return 1
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from cargohold_cli.stop import stop_data_dir

    data = Path(args.data)
    if not data.is_dir():
        print(f"cargohold: admin stop: no directory {data}", file=sys.stderr)
        return 2
    report = stop_data_dir(data, timeout=args.timeout)
    for line in report:
        print(line)
    if not report:
        print(f"nothing holds {data.resolve()}: no process to stop")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "dev":
            from cargohold_cli.dev import run_dev

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
            if args.admin_verb == "gc":
                return run_gc(args)
            if args.admin_verb == "retention":
                return run_retention(args)
            if args.admin_verb == "stop":
                return run_stop(args)
            if args.admin_verb == "certs":
                return run_certs(args)
            if args.admin_verb == "keys":
                return run_keys(args)
            if args.admin_verb in ("users", "namespaces"):
                return run_access(args)
            if args.admin_verb == "audit":
                return run_audit(args)
            if args.admin_verb == "trash":
                return run_trash(args)
            if args.admin_verb == "trust":
                return admin_trust.run(args, _admin_cfg(args), _addresses(args.nodes))
            if args.admin_verb == "webhooks":
                return admin_webhooks.run(args, _admin_cfg(args), _addresses(args.nodes))
            if args.admin_verb == "replication":
                return admin_replication.run(args, _admin_cfg(args), _addresses(args.nodes))
            if args.admin_verb == "sbom":
                return admin_sbom.run(args, _admin_cfg(args), _addresses(args.nodes))
            if args.admin_verb in ("groups", "robots"):
                return admin_robots.run(args, _admin_cfg(args), _addresses(args.nodes))
            if args.admin_verb in ("vulndb", "scan"):
                return admin_vulns.run(args, _admin_cfg(args), _addresses(args.nodes))
            return 2
        overrides: dict[str, Any] = {}
        if args.verb == "node":
            overrides = {"node.id": args.id, "node.data_dir": args.data_dir}
        elif args.verb == "gateway":
            overrides = {"gateway.listen": args.listen, "gateway.nodes": args.nodes}
        cfg = load_config(args.config, overrides)
        setup_logging(args.log_level or cfg.log_level)
        # Before any thread: a thread that allocates before M_ARENA_MAX is set gets an
        # arena of its own, which later threads then share (cargohold/memtune.py).
        section = cfg.node if args.verb == "node" else cfg.gateway
        tune_malloc(section.malloc_retain_bytes, section.malloc_arenas)
        if args.lifeline_fd is not None:
            from cargohold_cli.lifeline import watch

            watch(args.lifeline_fd, args.lifeline_grace)
        if args.verb == "node":
            from node.server import main as node_main

            node_main(cfg)
        else:
            from gateway.server import main as gateway_main

            return gateway_main(cfg)
        return 0
    except CargoholdError as exc:
        # One line, no traceback; the status says which kind (cargohold_cli/exits.py).
        print(f"cargohold {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
