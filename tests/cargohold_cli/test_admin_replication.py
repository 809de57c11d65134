"""`cargohold admin replication`: the retry verb's arguments, and the status showing a
rule's dead letters and the event it is still trying."""

from __future__ import annotations

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
