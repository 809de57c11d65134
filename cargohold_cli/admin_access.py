"""`cargohold admin users|namespaces ...`: registry users, namespaces and roles, written to
the replicated metadata through the typed facade (cargohold/metadata_api.py) over the
nodes' Metadata gRPC service, signed as the `admin` role (only it may send these commands).

Passwords are bcrypt-hashed here; only the hash travels and is stored. A password comes
from `--password-stdin` or is generated and printed once.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import time
from typing import Any

import grpc

from cargohold.config import Config
from cargohold.credentials import hash_password
from cargohold.errors import RegistryError, Unavailable, from_grpc_details
from cargohold.grpc_channels import open_sync_channel
from cargohold.metadata_api import (
    AccessData,
    Actor,
    GrantSet,
    GroupGrantSet,
    Metadata,
    NamespacePut,
    UserPut,
)
from protos import registry_pb2, registry_pb2_grpc


class AdminTransport:
    """The facade's transport for a CLI: each call tries the nodes in turn (a follower
    forwards commands to the Raft leader), retrying while no node can answer."""

    def __init__(self, addresses: list[str], cfg: Config, attempts: int = 10) -> None:
        self.addresses = addresses
        self.cfg = cfg
        self.attempts = attempts

    def _call(self, method: str, request: Any) -> Any:
        last: RegistryError = Unavailable("no node answered")
        for attempt in range(self.attempts):
            for address in self.addresses:
                with open_sync_channel(address, self.cfg, "admin") as channel:
                    stub = registry_pb2_grpc.MetadataStub(channel)
                    try:
                        reply = getattr(stub, method)(request, timeout=15.0)
                    except grpc.RpcError as exc:
                        err = from_grpc_details(exc.details(), exc.trailing_metadata())
                        if exc.code() == grpc.StatusCode.UNAVAILABLE or err is None:
                            last = err or Unavailable(f"{address}: {exc.details()}")
                            continue
                        raise err from None
                return json.loads(reply.result) if reply.result else None
            time.sleep(min(0.2 * (attempt + 1), 2.0))
        raise last

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        request = registry_pb2.MetadataRequest(op=op, args=json.dumps(args).encode())
        return await asyncio.to_thread(self._call, "Command", request)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        request = registry_pb2.MetadataRequest(
            op=op, args=json.dumps(args).encode(), linearizable=linearizable
        )
        return await asyncio.to_thread(self._call, "Query", request)


def cli_actor() -> Actor:
    """The actor context of an admin change made with this CLI (the activity log names the
    operating-system user who ran it, kind `admin`)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "?"
    return {
        "time": round(time.time(), 6),
        "actor": f"cli:{who}",
        "actor_kind": "admin",
        "client": socket.gethostname(),
        "user_agent": "cargohold-admin",
    }


def metadata(addresses: list[str], cfg: Config) -> Metadata:
    """The typed metadata calls over the nodes at `addresses`, signed as `admin`."""
    return Metadata(AdminTransport(addresses, cfg))


_meta = metadata


def add_user(addresses: list[str], cfg: Config, name: str, password: str, admin: bool) -> None:
    meta = _meta(addresses, cfg)
    asyncio.run(meta.user_put(UserPut(name, hash_password(password), False, admin, cli_actor())))


def set_password(addresses: list[str], cfg: Config, name: str, password: str) -> None:
    request = UserPut(name, hash_password(password), audit=cli_actor())
    asyncio.run(_meta(addresses, cfg).user_put(request))


def set_user(
    addresses: list[str], cfg: Config, name: str, disabled: bool | None, admin: bool | None
) -> None:
    asyncio.run(_meta(addresses, cfg).user_put(UserPut(name, None, disabled, admin, cli_actor())))


def put_namespace(addresses: list[str], cfg: Config, name: str, visibility: str) -> None:
    asyncio.run(_meta(addresses, cfg).call(NamespacePut(name, visibility, cli_actor())))


def grant(addresses: list[str], cfg: Config, namespace: str, user: str, role: str | None) -> None:
    asyncio.run(_meta(addresses, cfg).call(GrantSet(namespace, user, role, cli_actor())))


def grant_group(
    addresses: list[str], cfg: Config, namespace: str, group: str, role: str | None
) -> None:
    request = GroupGrantSet(namespace, group, role, cli_actor())
    asyncio.run(_meta(addresses, cfg).call(request))


def access_list(addresses: list[str], cfg: Config) -> AccessData:
    return asyncio.run(metadata(addresses, cfg).access_list())


def format_users(data: AccessData) -> str:
    lines = [f"{'USER':<24} {'ADMIN':<6} {'DISABLED':<8} NAMESPACES"]
    for user in data.users:
        roles = [
            f"{ns.name}:{ns.grants[user.name]}" for ns in data.namespaces if user.name in ns.grants
        ]
        lines.append(
            f"{user.name:<24} {'yes' if user.admin else '-':<6} "
            f"{'yes' if user.disabled else '-':<8} {' '.join(roles) or '-'}"
        )
    return "\n".join(lines)


def format_namespaces(data: AccessData) -> str:
    lines = [f"{'NAMESPACE':<32} {'VISIBILITY':<10} GRANTS"]
    for ns in data.namespaces:
        grants = " ".join(
            [f"{u}:{r}" for u, r in sorted(ns.grants.items())]
            + [f"group:{g}:{r}" for g, r in sorted(ns.group_grants.items())]
        )
        grants = grants or "-"
        lines.append(f"{ns.name:<32} {ns.visibility:<10} {grants}")
    return "\n".join(lines)
