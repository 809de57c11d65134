"""`cargohold admin replication ...`: replication rules, their progress and failures
(docs/mirroring.md "Replication").

    cargohold admin replication list [--json]             rules the cluster knows
    cargohold admin replication status [NAME] [--json]    progress, lag, last error
    cargohold admin replication run NAME                  one full run, now
    cargohold admin replication retry NAME [--seq N]..    copy dead letters again (all by default)

Rules are configured on the gateways (`[[replication.rules]]`); a rule is known to the
cluster once a gateway took its lease and reported it (its definition without
credentials, in the replicated metadata). `run` is a replicated request (`replication_run`,
admin role only) that the gateway holding the rule's lease starts at its next round;
`retry` (`replication_retry`, admin only) queues push (and delete) events the rule gave
up on (its dead letters, shown by `status`) for its runner to copy again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any


def add_parser(admin_sub: Any, nodes_default: str) -> argparse.ArgumentParser:
    repl = admin_sub.add_parser("replication", help="replication rules: progress, failures, runs")
    verbs = repl.add_subparsers(dest="replication_verb", required=True)
    listing = verbs.add_parser("list", help="rules with direction, remote and triggers")
    status = verbs.add_parser("status", help="progress, lag and last error per rule")
    status.add_argument("name", nargs="?", help="only this rule")
    run = verbs.add_parser("run", help="ask the rule's gateway for one full run now")
    run.add_argument("name")
    retry = verbs.add_parser("retry", help="queue the rule's dead letters to be copied again")
    retry.add_argument("name")
    retry.add_argument("--seq", type=int, action="append", help="only this one (repeatable)")
    for one in (listing, status):
        one.add_argument("--json", action="store_true", help="machine-readable output")
    for one in (listing, status, run, retry):
        one.add_argument("--nodes", default=nodes_default, help="node gRPC addresses")
        one.add_argument("--config", default=argparse.SUPPRESS, help="as `admin --config`")
    return repl


def _stamp(when: Any) -> str:
    if not when:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(when)))


def rows(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The listing's rules with their lag (push records after the cursor) added."""
    head = int(listing.get("head_seq") or 0)
    out = []
    for row in listing.get("rules") or []:
        row = dict(row)
        cursor = row.get("cursor")
        row["lag_records"] = None if cursor is None else max(0, head - int(cursor))
        out.append(row)
    return out


def format_list(rules: list[dict[str, Any]]) -> str:
    lines = [f"{'NAME':<20} {'DIR':<5} {'TRIGGERS':<18} {'REPOSITORIES':<24} URL"]
    for row in rules:
        rule = (row.get("status") or {}).get("rule") or {}
        triggers = ",".join(rule.get("triggers") or []) or "manual"
        if rule.get("replicate_deletes"):
            triggers += "+deletes"
        repos = ",".join(rule.get("repositories") or [])
        lines.append(
            f"{row['name']:<20} {rule.get('direction', '?'):<5} {triggers:<18} "
            f"{repos:<24} {rule.get('url', '?')}"
        )
    return "\n".join(lines)


def format_status(rules: list[dict[str, Any]]) -> str:
    lines = []
    for row in rules:
        st = row.get("status") or {}
        last = st.get("last_run") or {}
        error = st.get("last_error") or {}
        lease = row.get("lease") or {}
        lines += [
            f"{row['name']}: {st.get('state', 'unknown')}"
            f" (failures in a row: {st.get('failures', 0)})",
            f"  runner        {lease.get('holder', '-')}"
            f" (lease until {_stamp(lease.get('expires'))})",
            f"  runs          {st.get('runs_done', 0)} done, {row.get('runs_requested', 0)} asked",
            f"  last run      {_stamp(last.get('started'))} .. {_stamp(last.get('finished'))}:"
            f" {last.get('tags', 0)} tags, {last.get('manifests_copied', 0)} manifests and"
            f" {last.get('blobs_copied', 0)} blobs copied ({last.get('bytes_copied', 0)} bytes),"
            f" {last.get('blobs_present', 0)} blobs already there",
            f"  push events   {st.get('events_copied', 0)} copied,"
            f" {st.get('deletes_sent', 0)} deletes sent, cursor {row.get('cursor')},"
            f" lag {row.get('lag_records')} records",
            f"  last error    {_stamp(error.get('time'))} {error.get('message', '-')}",
        ]
        attempts = st.get("event_attempts")
        if attempts:
            lines.append(
                f"  failing event seq {attempts.get('seq')}: {attempts.get('attempts')} attempts"
            )
        if row.get("dead_letters") or row.get("retry"):
            lines.append(
                f"  dead letters  {row.get('dead_letters', 0)} (the last"
                f" {len(row.get('dead_recent') or ())} below),"
                f" {len(row.get('retry') or ())} queued to retry"
            )
            for seq, when, tries, reason in row.get("dead_recent") or ():
                lines.append(f"    seq {seq} {_stamp(when)} after {tries} attempts: {reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: Any, nodes: list[str]) -> int:
    from cargohold_cli.admin_access import _meta, cli_actor

    meta = _meta(nodes, cfg)
    verb = args.replication_verb
    if verb == "run":
        asked = asyncio.run(meta.replication_run(args.name, cli_actor()))
        print(f"run {asked} of {args.name} asked for")
        return 0
    if verb == "retry":
        queued = asyncio.run(meta.replication_retry(args.name, args.seq, cli_actor()))
        print(f"{queued} dead letters of {args.name} queued to be copied again")
        return 0
    rules = rows(asyncio.run(meta.replication_list()))
    if verb == "status" and args.name:
        rules = [r for r in rules if r["name"] == args.name]
        if not rules:
            print(f"cargohold: no replication rule {args.name} known to the cluster")
            return 1
    if args.json:
        print(json.dumps(rules, indent=2))
    else:
        print(format_list(rules) if verb == "list" else format_status(rules))
    return 0
