"""`cargohold admin replication`: the retry verb's arguments, the status showing a
rule's dead letters and the event it is still trying, and a rule replicating deletes:
marked in the listing, its deletes sent counted in its status."""

from __future__ import annotations

from typing import Any

from cargohold_cli import admin_replication
from cargohold_cli.cli import build_parser


def test_retry_takes_seqs_or_means_all() -> None:
    args = build_parser().parse_args(["admin", "replication", "retry", "to-dr", "--seq", "7"])
    assert (args.replication_verb, args.name, args.seq) == ("retry", "to-dr", [7])
    args = build_parser().parse_args(["admin", "replication", "retry", "to-dr"])
    assert args.seq is None


def test_status_shows_dead_letters_and_the_failing_event() -> None:
    listing = {
        "head_seq": 20,
        "rules": [
            {
                "name": "to-dr",
                "cursor": 12,
                "status": {"state": "retrying", "event_attempts": {"seq": 13, "attempts": 4}},
                "dead_letters": 3,
                "dead_recent": [[9, 1.0, 10, "UpstreamFailed: answered 400"]],
                "retry": [5],
            },
            {"name": "quiet", "cursor": 20, "status": {"state": "ok"}},
        ],
    }
    text = admin_replication.format_status(admin_replication.rows(listing))
    assert "  failing event seq 13: 4 attempts" in text.splitlines()
    assert "  dead letters  3 (the last 1 below), 1 queued to retry" in text.splitlines()
    assert "    seq 9 1970-01-01 00:00:01 after 10 attempts: UpstreamFailed: answered 400" in (
        text.splitlines()
    )
    quiet = text[text.index("quiet:") :]
    assert "dead letters" not in quiet and "failing event" not in quiet


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
