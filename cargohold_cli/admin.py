"""Admin operations against a running cluster, over the nodes' gRPC Admin/Metadata services.

`cluster_status` asks every member it can find (starting from the given addresses) for its
`Admin.Status` and the replicated member list, and returns one plain dict; `format_status`
renders it for a terminal. `member_change` runs a membership change on the Raft leader
(`admin nodes add|drain|remove`), `trigger` starts repair, scrub or gc passes (`admin
repair`, `admin gc`). Synchronous on purpose: this is a CLI path. Every call is signed as
the `admin` role from `cfg` (its `cluster.secret` or admin `cluster.credential`, see
cargohold/cluster_auth.py); without one, the nodes answer UNAUTHENTICATED.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import grpc

from cargohold.config import Config, load_config
from cargohold.grpc_channels import open_sync_channel
from cargohold.metadata_api import Members, QuotaList
from cargohold.node_status import status_record
from cargohold.quotas import human
from protos import registry_pb2, registry_pb2_grpc


def admin_config(path: str | None = None) -> Config:
    """The admin CLI's Config: `path` (`--config`), then CARGOHOLD_* environment."""
    cfg = load_config(path)
    cfg.role = "admin"
    return cfg


def _channel(address: str, cfg: Config | None) -> grpc.Channel:
    return open_sync_channel(address, cfg or admin_config(), "admin")


def _status(address: str, timeout: float, cfg: Config | None) -> dict[str, Any]:
    with _channel(address, cfg) as channel:
        reply = registry_pb2_grpc.AdminStub(channel).Status(
            registry_pb2.StatusRequest(), timeout=timeout
        )
    return status_record(address, reply)


def _members(address: str, timeout: float, cfg: Config | None) -> list[dict[str, Any]]:
    with _channel(address, cfg) as channel:
        reply = registry_pb2_grpc.MetadataStub(channel).Query(
            registry_pb2.MetadataRequest(op=Members.op, args=Members().args_json()), timeout=timeout
        )
    return list(json.loads(reply.result))


def _quotas(addresses: list[str], timeout: float, cfg: Config | None) -> list[dict[str, Any]]:
    """The namespace quotas with their usage (docs/operations.md "Quotas"); [] when none
    or no node answers."""
    for address in addresses:
        try:
            with _channel(address, cfg) as channel:
                reply = registry_pb2_grpc.MetadataStub(channel).Query(
                    registry_pb2.MetadataRequest(op=QuotaList.op, args=QuotaList().args_json()),
                    timeout=timeout,
                )
        except grpc.RpcError:
            continue
        rows = QuotaList.decode_result(json.loads(reply.result) if reply.result else [])
        return [{**q.to_json(), "free": max(0, q.limit - q.used)} for q in rows]
    return []


def cluster_status(
    addresses: list[str], timeout: float = 3.0, cfg: Config | None = None
) -> dict[str, Any]:
    members: list[dict[str, Any]] = []
    for address in addresses:
        try:
            members = _members(address, timeout, cfg)
            break
        except grpc.RpcError:
            continue
    to_ask = list(dict.fromkeys([*(m["grpc"] for m in members), *addresses]))
    nodes: list[dict[str, Any]] = []
    for address in to_ask:
        try:
            nodes.append(_status(address, timeout, cfg))
        except grpc.RpcError as exc:
            nodes.append({"address": address, "error": exc.code().name})
    leader = next((n for n in nodes if n.get("is_leader")), None)
    return {
        "members": members,
        "nodes": nodes,
        "leader": leader["id"] if leader else None,
        "quotas": _quotas(to_ask, timeout, cfg),
    }


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(n)


def node_state(member_state: str, node: dict[str, Any]) -> str:
    """The state a node is shown in: its member state, or `full` when an active member is
    above its disk watermark (it refuses chunk writes and still serves reads)."""
    if member_state == "active" and node.get("disk", {}).get("full"):
        return "full"
    return member_state


def format_status(status: dict[str, Any]) -> str:
    state_of = {m["id"]: m.get("state", "?") for m in status["members"]}
    lines = [
        f"leader: {status['leader'] or 'NONE (no quorum?)'}",
        f"{'node':<6} {'state':<9} {'grpc':<22} {'raft role':<9} {'applied':>9} "
        f"{'chunks':>8} {'bytes':>11} {'disk free':>11} {'reserve':>11}",
    ]
    for node in status["nodes"]:
        if "error" in node:
            lines.append(f"{'?':<6} {'down':<9} {node['address']:<22} {node['error']}")
            continue
        role = "leader" if node["is_leader"] else "follower"
        disk = node.get("disk", {})
        state = node_state(state_of.get(node["id"], "unjoined"), node)
        lines.append(
            f"{node['id']:<6} {state:<9} "
            f"{node['address']:<22} {role:<9} {node['last_applied']:>9} "
            f"{node['chunks']:>8} {_human(node['chunk_bytes']):>11} "
            f"{_human(disk.get('free_bytes', 0)):>11} {_human(disk.get('reserve_bytes', 0)):>11}"
        )
        if disk.get("capacity_bytes"):
            lines.append(
                f"{'':<6} disk: capacity={disk['capacity_bytes']} used={disk['used_bytes']} "
                f"free={disk['free_bytes']} reserve={disk['reserve_bytes']} "
                f"full={str(disk['full']).lower()}"
            )
        for key, value in sorted(node["extra"].items()):
            if isinstance(value, dict):
                detail = " ".join(f"{k}={v}" for k, v in value.items())
                lines.append(f"{'':<6} {key}: {detail}")
    for quota in status.get("quotas", ()):
        pct = 100 * quota["used"] / quota["limit"] if quota["limit"] else 100.0
        lines.append(
            f"quota {quota['namespace']}: {human(quota['used'])} used of "
            f"{human(quota['limit'])} ({pct:.0f}%), {quota['blobs']} blobs"
        )
    return "\n".join(lines)


# -- membership and background roles (Admin RPCs served by the Raft leader / any node) ------


def _leader_address(addresses: list[str], timeout: float, cfg: Config | None) -> str:
    status = cluster_status(addresses, timeout, cfg)
    for node in status["nodes"]:
        if node.get("is_leader"):
            return str(node["address"])
    raise RuntimeError("no raft leader answers (is a majority of nodes up?)")


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return str(details).split(":", 1)[-1] if details else str(exc)


def member_change(
    addresses: list[str],
    verb: str,
    node_id: str,
    grpc_address: str = "",
    raft_address: str = "",
    state: str = "",
    force: bool = False,
    timeout: float = 30.0,
    attempts: int = 10,
    cfg: Config | None = None,
) -> list[dict[str, Any]]:
    """Run AddMember / SetMemberState / RemoveMember on the leader, retrying while the
    leadership moves (UNAVAILABLE); any other refusal raises RuntimeError with its reason."""
    request = registry_pb2.MemberRequest(
        id=node_id, grpc=grpc_address, raft=raft_address, state=state, force=force
    )
    last = ""
    for attempt in range(attempts):
        try:
            leader = _leader_address(addresses, 3.0, cfg)
            with _channel(leader, cfg) as channel:
                stub = registry_pb2_grpc.AdminStub(channel)
                reply = getattr(stub, verb)(request, timeout=timeout)
            return list(json.loads(reply.members))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise RuntimeError(_details(exc)) from None
            last = _details(exc)
        except RuntimeError as exc:
            last = str(exc)
        time.sleep(min(0.2 * (attempt + 1), 2.0))
    raise RuntimeError(f"membership change did not complete: {last}")


def trigger(
    addresses: list[str],
    role: str = "repair",
    wait: bool = False,
    timeout: float = 3600.0,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Trigger a background role on every listed node at once (passes run in parallel);
    {address: progress or {"error": status}}."""

    def one(address: str) -> dict[str, Any]:
        try:
            with _channel(address, cfg) as channel:
                reply = registry_pb2_grpc.AdminStub(channel).Trigger(
                    registry_pb2.TriggerRequest(role=role, wait=wait), timeout=timeout
                )
            return dict(json.loads(reply.progress))
        except grpc.RpcError as exc:
            return {"error": exc.code().name}

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(addresses))) as pool:
        return dict(zip(addresses, pool.map(one, addresses), strict=True))


def run_gc(
    addresses: list[str], dry_run: bool = False, wait: bool = False, cfg: Config | None = None
) -> dict[str, dict[str, Any]]:
    """A GC pass on every member: the Raft leader's first (it prunes unlinked recipes from
    the state, so the other nodes' marks, taken after, already free those chunks), then
    the others in parallel. {address: progress or {"error": status}}."""
    status = cluster_status(addresses, cfg=cfg)
    members = [m["grpc"] for m in status["members"] if m.get("state") != "removed"]
    targets = members or addresses
    role = "gc-dry-run" if dry_run else "gc"
    leader = next((n["address"] for n in status["nodes"] if n.get("is_leader")), None)
    results: dict[str, dict[str, Any]] = {}
    if leader is not None:
        results.update(trigger([leader], role, wait=True, cfg=cfg))
        targets = [t for t in targets if t != leader]
    if targets:
        results.update(trigger(targets, role, wait=wait, cfg=cfg))
    return results


def run_retention(
    addresses: list[str], dry_run: bool = False, cfg: Config | None = None
) -> dict[str, Any]:
    """One retention pass on the Raft leader (the only node that acts), waited for: its
    progress and `report` (node/retention.py), or {"error": ...}."""
    status = cluster_status(addresses, cfg=cfg)
    leader = next((n["address"] for n in status["nodes"] if n.get("is_leader")), None)
    if leader is None:
        return {"error": "no Raft leader answered"}
    role = "retention-dry-run" if dry_run else "retention"
    return trigger([leader], role, wait=True, cfg=cfg)[leader]


def format_retention(result: dict[str, Any]) -> str:
    """The report of `run_retention` for people: one line per decision that matters."""
    if "error" in result:
        return f"error {result['error']}"
    report = result.get("report") or {}
    if "skipped" in report:
        return f"retention did nothing: {report['skipped']}"
    verb = "would delete" if report.get("dry_run") else "deleted"
    lines = []
    for repo in report.get("repositories", []):
        name = repo["repo"]
        lines.append(f"{name}  (policy {repo['policy']})")
        for t in repo["tags"]:
            action = verb if t["action"] == "delete" else "keep"
            lines.append(f"  {name}:{t['tag']:<24} {action:<12} {'; '.join(t['reasons'])}")
        for m in repo["manifests"]:
            action = verb if m["action"] == "delete" else "keep"
            lines.append(f"  {name}@{m['digest'][:19]}  {action:<12} {'; '.join(m['reasons'])}")
    for skipped in report.get("protected", []):
        lines.append(f"{skipped['repo']}  untouched: {skipped['reason']}")
    for refused in report.get("refused", []):
        lines.append(f"refused {refused['repo']} {refused['reference']}: {refused['error']}")
    lines.append(
        f"{verb}: {result.get('tags_deleted', 0)} tags, {result.get('manifests_deleted', 0)} "
        f"manifests in {result.get('repositories', 0)} repositories"
        + (
            f"; {result.get('skipped_changed')} changed since planned"
            if result.get("skipped_changed")
            else ""
        )
    )
    return "\n".join(lines)
