"""`cargohold admin webhooks ...`: replicated webhook endpoints and their dead letters
(docs/webhooks.md).

    cargohold admin webhooks add NAME URL [--namespace NS] [--action push|pull|delete]..
                                 [--blob-action push|pull|delete]..
                                 [--repo GLOB].. [--header 'Name: value'].. [--timeout S]
    cargohold admin webhooks list [--json]          endpoints, cursors, lag, dead letters
    cargohold admin webhooks remove NAME
    cargohold admin webhooks dead-letters NAME [--json]
    cargohold admin webhooks retry NAME [--seq N]..  send dead letters again (all by default)

Endpoints written here live in the replicated metadata (`webhook_put`, admin role only);
those of a gateway's `[webhooks]` config show up in `list` once delivery gave them a cursor
(origin `config`). Header values are shown masked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from cargohold.errors import ConfigError, RegistryError
from cargohold.webhooks import ACTIONS, Endpoint


def add_parser(admin_sub: Any, nodes_default: str) -> argparse.ArgumentParser:
    hooks = admin_sub.add_parser("webhooks", help="webhook notifications: endpoints, dead letters")
    verbs = hooks.add_subparsers(dest="webhooks_verb", required=True)
    add = verbs.add_parser("add", help="add (or replace) a replicated endpoint")
    add.add_argument("name", help="[a-z0-9][a-z0-9._-]{0,63}")
    add.add_argument("url", help="http:// or https:// URL the events are POSTed to")
    add.add_argument("--namespace", default="", help="only repositories under this prefix")
    add.add_argument(
        "--action", action="append", choices=ACTIONS, help="repeatable; default: all three"
    )
    add.add_argument(
        "--blob-action",
        action="append",
        choices=ACTIONS,
        help="blob (layer) events wanted too (repeatable); default: none",
    )
    add.add_argument("--repo", action="append", help="repository glob (repeatable)")
    add.add_argument(
        "--header", action="append", help="'Name: value' sent with each request (repeatable)"
    )
    add.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    listing = verbs.add_parser("list", help="endpoints with cursor, lag and dead letters")
    remove = verbs.add_parser("remove", help="forget an endpoint (cursor and dead letters too)")
    remove.add_argument("name")
    dead = verbs.add_parser("dead-letters", help="events given up on, oldest first")
    dead.add_argument("name")
    retry = verbs.add_parser("retry", help="queue dead letters for delivery again")
    retry.add_argument("name")
    retry.add_argument("--seq", type=int, action="append", help="only this one (repeatable)")
    for one in (listing, dead):
        one.add_argument("--json", action="store_true", help="machine-readable output")
    for one in (add, listing, remove, dead, retry):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
        one.add_argument("--config", default=argparse.SUPPRESS, help="as `admin --config`")
    return hooks


def endpoint_from_args(args: argparse.Namespace) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for raw in args.header or ():
        key, sep, value = raw.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"--header {raw!r}: want 'Name: value'")
        headers[key.strip()] = value.strip()
    raw_endpoint = {
        "name": args.name,
        "url": args.url,
        "namespace": args.namespace,
        "actions": args.action or list(ACTIONS),
        "blob_actions": args.blob_action or [],
        "repositories": args.repo or [],
        "headers": headers,
        "timeout": args.timeout,
    }
    try:
        return Endpoint.from_json(raw_endpoint).to_json()
    except RegistryError as exc:
        raise ConfigError(exc.message) from None


def format_list(listing: dict[str, Any]) -> str:
    head = int(listing.get("head_seq") or 0)
    lines = [f"{'NAME':<20} {'ORIGIN':<7} {'CURSOR':>8} {'LAG':>7} {'DEAD':>6} {'RETRY':>5}  URL"]
    for row in listing["endpoints"]:
        ep = row.get("endpoint")
        cursor = row.get("cursor")
        lag = "-" if cursor is None else str(max(0, head - int(cursor)))
        lines.append(
            f"{row['name']:<20} {'cluster' if ep else 'config':<7} "
            f"{'-' if cursor is None else cursor:>8} {lag:>7} {row['dead_letters']:>6} "
            f"{len(row.get('retry') or ()):>5}  {ep['url'] if ep else '(a gateway config)'}"
        )
    lease = listing.get("lease")
    if lease:
        left = lease["expires"] - time.time()
        state = f"for {left:.0f} s more" if left > 0 else "expired"
        lines.append(f"delivering: {lease['holder']} ({state})")
    else:
        lines.append("delivering: no gateway holds the delivery lease")
    return "\n".join(lines)


def masked(listing: dict[str, Any]) -> dict[str, Any]:
    for row in listing["endpoints"]:
        ep = row.get("endpoint")
        if ep:
            ep["headers"] = {k: "***" for k in ep.get("headers", {})}
    return listing


def run(args: argparse.Namespace, cfg: Any, nodes: list[str]) -> int:
    from cargohold_cli.admin_access import _meta, cli_actor

    meta = _meta(nodes, cfg)
    verb = args.webhooks_verb
    if verb == "add":
        created = asyncio.run(meta.webhook_put(endpoint_from_args(args), cli_actor()))
        print(f"webhook {args.name} {'added' if created else 'replaced'}")
    elif verb == "remove":
        if not asyncio.run(meta.webhook_remove(args.name, cli_actor())):
            print(f"cargohold: no webhook {args.name}")
            return 1
    elif verb == "retry":
        queued = asyncio.run(meta.webhook_retry(args.name, args.seq, cli_actor()))
        print(f"{queued} dead letters of {args.name} queued for delivery")
    elif verb == "dead-letters":
        letters = asyncio.run(meta.webhook_dead_letters(args.name))
        if args.json:
            keys = ("seq", "time", "attempts", "reason")
            print(json.dumps([dict(zip(keys, d, strict=True)) for d in letters], indent=2))
        else:
            print(f"{'SEQ':>8} {'GIVEN UP (UTC)':<20} {'TRIES':>5}  REASON")
            for seq, when, attempts, reason in letters:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
                print(f"{seq:>8} {stamp:<20} {attempts:>5}  {reason}")
    else:
        listing = masked(asyncio.run(meta.webhook_list()))
        print(json.dumps(listing, indent=2) if args.json else format_list(listing))
    return 0
