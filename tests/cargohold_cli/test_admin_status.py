"""`admin status` rendering: a node above its disk watermark shows as `full`, with its
capacity, used, free and reserve figures."""

from __future__ import annotations

from typing import Any

from cargohold_cli.admin import format_status, node_state

MiB = 1024 * 1024


def _node(node_id: str, full: bool, free: int) -> dict[str, Any]:
    return {
        "address": f"127.0.0.1:700{node_id[-1]}",
        "id": node_id,
        "is_leader": node_id == "n1",
        "last_applied": 42,
        "chunks": 3,
        "chunk_bytes": 3 * MiB,
        "disk": {
            "capacity_bytes": 100 * MiB,
            "used_bytes": 100 * MiB - free,
            "free_bytes": free,
            "reserve_bytes": 5 * MiB,
            "full": full,
        },
        "extra": {},
    }


def test_full_only_replaces_the_active_state() -> None:
    assert node_state("active", _node("n1", True, MiB)) == "full"
    assert node_state("active", _node("n1", False, 50 * MiB)) == "active"
    assert node_state("draining", _node("n1", True, MiB)) == "draining"
    assert node_state("active", {"id": "n1"}) == "active"  # an older node: no disk figures


def test_table_shows_full_and_the_disk_figures() -> None:
    status = {
        "leader": "n1",
        "members": [{"id": "n1", "state": "active"}, {"id": "n2", "state": "active"}],
        "nodes": [_node("n1", False, 50 * MiB), _node("n2", True, 2 * MiB)],
    }
    lines = format_status(status).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.startswith("n")}
    assert rows["n1"][1] == "active" and rows["n2"][1] == "full"
    assert "2.0 MiB" in " ".join(rows["n2"]) and "5.0 MiB" in " ".join(rows["n2"])
    disk = [line.split() for line in lines if "disk:" in line]
    assert disk[1][1:] == [
        f"capacity={100 * MiB}",
        f"used={98 * MiB}",
        f"free={2 * MiB}",
        f"reserve={5 * MiB}",
        "full=true",
    ]


def test_status_shows_each_quota_with_its_usage() -> None:
    status = {
        "leader": "n1",
        "members": [{"id": "n1", "state": "active"}],
        "nodes": [_node("n1", False, 50 * MiB)],
        "quotas": [
            {"namespace": "team", "limit": 10 * MiB, "used": 5 * MiB, "blobs": 3, "free": 5 * MiB}
        ],
    }
    lines = format_status(status).splitlines()
    assert "quota team: 5.0 MiB used of 10.0 MiB (50%), 3 blobs" in lines
