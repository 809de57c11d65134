"""One node's `Admin.Status` reply as a plain dict: what `cargohold admin status` prints and
the web UI's cluster page shows (one shape for both)."""

from __future__ import annotations

import json
from typing import Any


def status_record(address: str, reply: Any) -> dict[str, Any]:
    """`reply` is a `registry_pb2.StatusReply`; `extra` holds the background roles' progress
    (repair's `below_replicas`, scrub, gc) and store counters."""
    extra = json.loads(reply.extra) if reply.extra else {}
    return {
        "address": address,
        "id": reply.node_id,
        "raft": reply.raft_address,
        "leader_raft": reply.leader_raft_address,
        "is_leader": reply.is_leader,
        "commit_index": reply.raft_commit_index,
        "last_applied": reply.raft_last_applied,
        "chunks": reply.chunk_count,
        "chunk_bytes": reply.chunk_bytes,
        "disk": {
            "capacity_bytes": reply.disk_capacity_bytes,
            "used_bytes": reply.disk_used_bytes,
            "free_bytes": reply.disk_free_bytes,
            "reserve_bytes": reply.disk_reserve_bytes,
            "full": reply.disk_full,
        },
        "extra": extra,
    }
