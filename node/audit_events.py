"""The nodes' own decisions in the activity log: what a GC or retention pass deleted.

A pass that deleted something sends ONE `audit_append` command with its events (never one
per chunk, blob or manifest), as the system actor named after the role (`gc`,
`retention`), the node's id as the client address:

- GC (every node, a real pass that changed something): one `gc` event, detail
  "pruned N blob recipes (B bytes), expired U uploads, swept C chunks (S bytes)". The
  trash entries the leader purged are recorded by the state itself, one `purge` record
  per repository (the `trash_purge` command carries this actor).
- Retention (the leader, a real pass): one `retention` event per repository it deleted
  from, detail "deleted M manifests, T tags (policy P)"; each manifest and tag deleted is
  also its own `delete` record (its command carries the actor, node/retention.py).

Recording is best effort: a cluster that cannot take the command loses the summary (the
deletions' own records are unaffected), logged as `audit.system_append_failed`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from cargohold import metadata_api as api
from cargohold.audit import event
from cargohold.errors import RegistryError
from cargohold.log import log_event

logger = logging.getLogger("cargohold.node.audit_events")


class _Commands(Protocol):
    async def command(self, op: str, args: dict[str, Any]) -> Any: ...


def system_actor(role: str, node_id: str, what: str = "") -> api.Actor:
    """The actor context of a node role's own changes (`actor_kind` system)."""
    return {
        "time": round(time.time(), 6),
        "actor": role,
        "actor_kind": "system",
        "client": node_id,
        "user_agent": f"cargohold {role}" + (f" ({what})" if what else ""),
    }


def system_event(
    actor: api.Actor, action: str, *, repository: str = "", reference: str = "", detail: str
) -> list[Any]:
    return event(
        action,
        time=actor["time"],
        actor=actor.get("actor", ""),
        actor_kind=actor.get("actor_kind", "system"),
        client=actor.get("client", ""),
        user_agent=actor.get("user_agent", ""),
        repository=repository,
        reference=reference,
        detail=detail,
    )


async def append(raft: _Commands, events: list[list[Any]]) -> bool:
    """Send `events` as one `audit_append` (nothing to send: nothing sent); False when the
    cluster refused it."""
    if not events:
        return True
    try:
        await raft.command(api.AuditAppend.op, {"events": events})
    except (RegistryError, OSError, TimeoutError) as exc:
        log_event(
            logger,
            "audit.system_append_failed",
            logging.WARNING,
            events=len(events),
            error=type(exc).__name__,
        )
        return False
    return True
