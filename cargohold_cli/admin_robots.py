"""`cargohold admin groups ...` and `cargohold admin robots ...`: groups of registry users
and robot accounts for CI, written to the replicated metadata like `admin users` (signed
as the `admin` role, cargohold_cli/admin_access.py).

    groups add|delete NAME
    groups add-member|remove-member GROUP USER
    groups list [--json]
    robots add NAME --namespace NS:ACTIONS [--namespace ...] [--expires 30d|12h|never]
                    [--description TEXT]       prints the login and its secret, once
    robots list [--json]
    robots revoke NAME                          at once: every gateway refuses it within
                                                auth.directory_refresh_seconds

Granting a role to a group is `admin namespaces grant NS GROUP ROLE --group`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from cargohold.config import Config
from cargohold.credentials import ROBOT_BCRYPT_ROUNDS, hash_password, new_robot_secret
from cargohold.errors import ConfigError, NotFound
from cargohold.metadata_api import (
    ROBOT_ACTIONS,
    ROBOT_PREFIX,
    AccessData,
    GroupDelete,
    GroupMemberSet,
    GroupPut,
    RobotDelete,
    RobotPut,
)
from cargohold_cli.admin_access import access_list, cli_actor, metadata

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_expiry(text: str, now: float) -> float | None:
    """`30d`, `12h`, `90m`, `3600s` or `3600` from now; `never` -> None."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(f"--expires {text!r}: use e.g. 30d, 12h, 90m, 3600s or never")
    return float(int(now) + int(match.group(1)) * _UNITS[match.group(2)])


def parse_permission(text: str) -> tuple[str, list[str]]:
    """`team:pull,push` -> ("team", ["pull", "push"])."""
    namespace, sep, actions = text.rpartition(":")
    wanted = [a for a in actions.split(",") if a]
    if not sep or not namespace or not wanted or any(a not in ROBOT_ACTIONS for a in wanted):
        raise ConfigError(
            f"--namespace {text!r}: use NAMESPACE:ACTIONS, actions among " + ",".join(ROBOT_ACTIONS)
        )
    return namespace, wanted


def short_name(name: str) -> str:
    return name[len(ROBOT_PREFIX) :] if name.startswith(ROBOT_PREFIX) else name


def add_parsers(admin_sub: Any, nodes_default: str) -> list[argparse.ArgumentParser]:
    """The `groups` and `robots` verbs; returns every leaf parser (for common options)."""
    groups = admin_sub.add_parser("groups", help="groups of registry users (token mode)")
    g_sub = groups.add_subparsers(dest="groups_verb", required=True)
    g_add = g_sub.add_parser("add", help="create an empty group")
    g_del = g_sub.add_parser("delete", help="delete a group and its grants")
    for one in (g_add, g_del):
        one.add_argument("name")
    g_addm = g_sub.add_parser("add-member", help="add a user to a group")
    g_rmm = g_sub.add_parser("remove-member", help="remove a user from a group")
    for one in (g_addm, g_rmm):
        one.add_argument("group")
        one.add_argument("user")
    g_list = g_sub.add_parser("list", help="groups, members and their roles")
    robots = admin_sub.add_parser("robots", help="robot accounts for CI")
    r_sub = robots.add_subparsers(dest="robots_verb", required=True)
    r_add = r_sub.add_parser("add", help="create a robot; prints its secret once")
    r_add.add_argument("name", help=f"the robot's name; it logs in as {ROBOT_PREFIX}NAME")
    r_add.add_argument(
        "--namespace",
        action="append",
        required=True,
        metavar="NS:ACTIONS",
        help="a namespace and the actions allowed there, e.g. team:pull,push (repeat)",
    )
    r_add.add_argument("--expires", default="30d", help="30d (default), 12h, 90m, 3600s, or never")
    r_add.add_argument("--description", default="", help="free text shown by `list`")
    r_list = r_sub.add_parser("list", help="robots, their permissions and expiry")
    r_revoke = r_sub.add_parser("revoke", help="delete a robot: its logins and tokens end")
    r_revoke.add_argument("name")
    leaves = [g_add, g_del, g_addm, g_rmm, g_list, r_add, r_list, r_revoke]
    for one in leaves:
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
        one.add_argument("--json", action="store_true", help="machine-readable output")
    return [groups, robots]


def format_groups(data: AccessData) -> str:
    lines = [f"{'GROUP':<24} {'MEMBERS':<40} NAMESPACES"]
    for group in data.groups:
        roles = [
            f"{ns.name}:{ns.group_grants[group.name]}"
            for ns in data.namespaces
            if group.name in ns.group_grants
        ]
        members = ",".join(group.members) or "-"
        lines.append(f"{group.name:<24} {members:<40} {' '.join(roles) or '-'}")
    return "\n".join(lines)


def _when(t: float | None) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def format_robots(data: AccessData, now: float) -> str:
    lines = [f"{'ROBOT':<32} {'EXPIRES':<22} PERMISSIONS"]
    for robot in data.robots:
        perms = " ".join(f"{n}:{','.join(a)}" for n, a in sorted(robot.permissions.items()))
        expired = robot.expires_at is not None and robot.expires_at <= now
        expires = _when(robot.expires_at) + (" (expired)" if expired else "")
        lines.append(f"{robot.login:<32} {expires:<22} {perms}")
    return "\n".join(lines)


def _robot_rows(data: AccessData, now: float) -> list[dict[str, Any]]:
    out = []
    for robot in data.robots:
        row = {k: v for k, v in robot.to_json().items() if k != "secret_hash"}
        row["login"] = robot.login
        row["expired"] = robot.expires_at is not None and robot.expires_at <= now
        out.append(row)
    return out


def run(args: argparse.Namespace, cfg: Config, nodes: list[str]) -> int:
    meta = metadata(nodes, cfg)
    if args.admin_verb == "groups":
        verb = args.groups_verb
        if verb == "add":
            asyncio.run(meta.call(GroupPut(args.name, cli_actor())))
        elif verb == "delete":
            if not asyncio.run(meta.call(GroupDelete(args.name, cli_actor()))):
                raise NotFound(f"no group {args.name!r}")
        elif verb in ("add-member", "remove-member"):
            member = GroupMemberSet(args.group, args.user, verb == "add-member", cli_actor())
            asyncio.run(meta.call(member))
        else:
            data = access_list(nodes, cfg)
            if args.json:
                print(json.dumps([g.to_json() for g in data.groups], indent=2))
            else:
                print(format_groups(data))
        return 0
    verb, now = args.robots_verb, time.time()
    if verb == "add":
        permissions = [
            {"namespace": ns, "actions": actions}
            for ns, actions in map(parse_permission, args.namespace)
        ]
        expires_at = parse_expiry(args.expires, now)
        secret = new_robot_secret()
        name = short_name(args.name)
        request = RobotPut.from_args(
            {
                "name": name,
                "secret_hash": hash_password(secret, ROBOT_BCRYPT_ROUNDS),
                "expires_at": expires_at,
                "permissions": permissions,
                "description": args.description,
                "created_at": now,
                "audit": cli_actor(),
            }
        )
        asyncio.run(meta.robot_put(request))
        login = ROBOT_PREFIX + name
        if args.json:
            print(json.dumps({"login": login, "secret": secret, "expires_at": expires_at}))
        else:
            print(f"robot {login} expires {_when(expires_at)}")
            print(f"secret for {login} (shown once): {secret}")
    elif verb == "revoke":
        name = short_name(args.name)
        if not asyncio.run(meta.call(RobotDelete(name, cli_actor()))):
            raise NotFound(f"no robot {ROBOT_PREFIX}{name}")
        print(f"revoked {ROBOT_PREFIX}{name}")
    else:
        data = access_list(nodes, cfg)
        if args.json:
            print(json.dumps(_robot_rows(data, now), indent=2))
        else:
            print(format_robots(data, now))
    return 0
