"""`cargohold admin webhooks`: argument parsing, the endpoint it sends, the listing."""

from __future__ import annotations

import argparse

import pytest

from cargohold.config import ConfigError
from cargohold_cli import admin_webhooks
from cargohold_cli.cli import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["admin", "webhooks", *argv])


def test_add_builds_a_checked_endpoint() -> None:
    args = parse(
        "add", "ci", "https://ci.test/hook", "--namespace", "team/", "--action", "push",
        "--repo", "team/*", "--header", "Authorization: Bearer a:b", "--timeout", "2",
        "--blob-action", "push", "--config", "admin.toml",
    )  # fmt: skip
    assert admin_webhooks.endpoint_from_args(args) == {
        "name": "ci",
        "url": "https://ci.test/hook",
        "namespace": "team",
        "actions": ["push"],
        "repositories": ["team/*"],
        "headers": {"Authorization": "Bearer a:b"},
        "timeout": 2.0,
        "origin": "cluster",
        "blob_actions": ["push"],
    }
    with pytest.raises(ConfigError, match="Name: value"):
        admin_webhooks.endpoint_from_args(parse("add", "ci", "http://x/", "--header", "nope"))
    with pytest.raises(ConfigError, match="url"):
        admin_webhooks.endpoint_from_args(parse("add", "ci", "ftp://x/"))


def test_list_masks_headers_and_shows_lag_and_the_lease() -> None:
    listing = {
        "endpoints": [
            {
                "name": "ci",
                "endpoint": {"url": "https://ci.test/hook", "headers": {"Authorization": "x"}},
                "cursor": 90,
                "dead_letters": 2,
                "retry": [5],
            },
            {"name": "cfg", "endpoint": None, "cursor": 100, "dead_letters": 0, "retry": []},
        ],
        "lease": {"holder": "host/127.0.0.1:5000/abc", "expires": 0.0},
        "head_seq": 100,
    }
    masked = admin_webhooks.masked(listing)
    assert masked["endpoints"][0]["endpoint"]["headers"] == {"Authorization": "***"}
    text = admin_webhooks.format_list(masked)
    assert "ci" in text and " 10 " in text and "(a gateway config)" in text
    assert "host/127.0.0.1:5000/abc (expired)" in text


def test_every_verb_parses() -> None:
    assert parse("list", "--json").webhooks_verb == "list"
    assert parse("remove", "ci").name == "ci"
    assert parse("dead-letters", "ci", "--json").json
    assert parse("retry", "ci", "--seq", "4", "--seq", "9").seq == [4, 9]
