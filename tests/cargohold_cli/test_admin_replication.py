"""cargohold_cli/admin_replication.py's text: a rule replicating deletes says so in the
listing, and its status counts the deletes sent beside the copies and lists its dead
letters with their reasons."""

from __future__ import annotations

from typing import Any

from cargohold_cli import admin_replication

RULE = {
    "name": "to-dr",
    "direction": "push",
    "url": "https://dr.example",
    "repositories": ["team/*"],
    "triggers": ["on_push"],
    "replicate_deletes": True,
}


def row(**status: Any) -> dict[str, Any]:
    return {
        "name": "to-dr",
        "cursor": 120,
        "lag_records": 0,
        "runs_requested": 0,
        "lease": {"holder": "gw-1", "expires": 0},
        "status": {"rule": RULE, "state": "ok", **status},
        "dead_letters": 1,
        "dead_recent": [[118, 0, 3, "DeleteRefused: the target allows no deletes (405; ...)"]],
        "retry": [],
    }


def test_the_listing_shows_a_rule_replicating_deletes() -> None:
    text = admin_replication.format_list([row()])
    assert "on_push+deletes" in text.splitlines()[1]
    plain = row()
    plain["status"]["rule"] = {**RULE, "replicate_deletes": False}
    assert "+deletes" not in admin_replication.format_list([plain])


def test_the_status_counts_deletes_and_lists_dead_letters() -> None:
    lines = admin_replication.format_status([row(events_copied=5, deletes_sent=2)]).splitlines()
    assert "  push events   5 copied, 2 deletes sent, cursor 120, lag 0 records" in lines
    assert "  dead letters  1 (the last 1 below), 0 queued to retry" in lines
    assert lines[-1].startswith("    seq 118 ") and "after 3 attempts: DeleteRefused" in lines[-1]
