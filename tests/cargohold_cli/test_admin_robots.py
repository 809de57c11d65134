"""`cargohold admin robots|groups` argument parsing: expiries, permissions, robot names."""

from __future__ import annotations

import pytest

from cargohold.errors import ConfigError
from cargohold_cli.admin_robots import parse_expiry, parse_permission, short_name
from cargohold_cli.cli import build_parser


def test_expiries() -> None:
    assert parse_expiry("30d", 1000.5) == 1000 + 30 * 86400
    assert parse_expiry("12h", 0) == 12 * 3600
    assert parse_expiry("90m", 0) == 5400
    assert parse_expiry("3600s", 0) == parse_expiry("3600", 0) == 3600
    assert parse_expiry("never", 0) is None
    for bad in ("0d", "-1h", "soon", "1w", ""):
        with pytest.raises(ConfigError):
            parse_expiry(bad, 0)


def test_permissions_and_names() -> None:
    assert parse_permission("team:pull,push") == ("team", ["pull", "push"])
    assert parse_permission("team/sub:delete") == ("team/sub", ["delete"])
    for bad in ("team", "team:", ":pull", "team:pull,admin", "team:*"):
        with pytest.raises(ConfigError):
            parse_permission(bad)
    assert short_name("robot$ci") == short_name("ci") == "ci"


def test_the_verbs_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["admin", "robots", "add", "ci", "--namespace", "team:pull", "--namespace", "lib:pull"]
    )
    assert args.namespace == ["team:pull", "lib:pull"] and args.expires == "30d"
    args = parser.parse_args(["admin", "groups", "add-member", "ops", "ann"])
    assert (args.groups_verb, args.group, args.user) == ("add-member", "ops", "ann")
    args = parser.parse_args(["admin", "namespaces", "grant", "team", "ops", "reader", "--group"])
    assert args.group is True and args.role == "reader"
