"""cargohold/replication.py: rules as config declares them, and their filters."""

from __future__ import annotations

import pytest

from cargohold.config import load_config
from cargohold.errors import ConfigError, RequestInvalid
from cargohold.replication import (
    Rule,
    literal_repositories,
    parse_rules,
    referrer_tag,
    target_name,
    wants_repo,
    wants_tag,
    wants_tag_delete,
)

HEX = "ab" * 32


def test_defaults_filters_and_names() -> None:
    rule = Rule.from_json(
        {
            "name": "to-dr",
            "url": "https://dr.example/",
            "username": "u",
            "password": "p",
            "repositories": ["team/*", "base"],
            "tags": ["v*"],
            "target_prefix": "/copies/",
        }
    )
    assert rule.direction == "push" and rule.triggers == ("on_push",)
    assert rule.url == "https://dr.example"
    assert wants_repo(rule, "team/a/b") and wants_repo(rule, "base")
    assert not wants_repo(rule, "other")
    assert wants_tag(rule, "v1.2") and not wants_tag(rule, "latest")
    assert not wants_tag(rule, f"sha256-{HEX}")  # referrer tags follow their subject
    assert referrer_tag(f"sha256-{HEX}.sig") and not referrer_tag("sha256-abc")
    assert target_name(rule, "team/a") == "copies/team/a"
    assert literal_repositories(rule) == ["base"]
    described = rule.describe()
    assert "password" not in described and described["authenticated"] is True
    pull = Rule.from_json({"name": "in", "direction": "pull", "url": "http://x"})
    assert pull.triggers == ("schedule",) and pull.interval_seconds == 3600.0


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "Bad", "url": "http://x"},
        {"name": "a", "url": "ftp://x"},
        {"name": "a", "url": "http://x", "direction": "sideways"},
        {"name": "a", "url": "http://x", "direction": "pull", "triggers": ["on_push"]},
        {"name": "a", "url": "http://x", "triggers": ["hourly"]},
        {"name": "a", "url": "http://x", "interval_seconds": 0},
        {"name": "a", "url": "http://x", "repositories": []},
        {"name": "a", "url": "http://x", "colour": "red"},
        {"name": "a", "url": "http://x", "replicate_deletes": "yes"},
        # Deletes are read from the activity log: an on_push rule's.
        {"name": "a", "url": "http://x", "replicate_deletes": True, "triggers": ["schedule"]},
        {"name": "a", "url": "http://x", "direction": "pull", "replicate_deletes": True},
    ],
)
def test_bad_rules_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(RequestInvalid):
        Rule.from_json(raw)


def test_config_section_and_unique_names(tmp_path: object) -> None:
    rule = {"name": "a", "url": "http://x", "triggers": []}
    cfg = load_config(overrides={"replication.rules": [rule], "replication.max_tags": 5})
    assert parse_rules(cfg.replication.rules)[0].triggers == ()
    assert cfg.replication.max_tags == 5
    with pytest.raises(ConfigError, match="unique"):
        load_config(overrides={"replication.rules": [rule, rule]})
    with pytest.raises(ConfigError):
        load_config(overrides={"replication.backoff_seconds": 0})


def test_replicate_deletes_is_opt_in_and_filters_tags_like_copies() -> None:
    plain = Rule.from_json({"name": "a", "url": "http://x"})
    assert plain.replicate_deletes is False and plain.describe()["replicate_deletes"] is False
    rule = Rule.from_json(
        {"name": "a", "url": "http://x", "tags": ["v*"], "replicate_deletes": True}
    )
    assert rule.replicate_deletes and rule.describe()["replicate_deletes"] is True
    assert wants_tag_delete(rule, "v1") and not wants_tag_delete(rule, "latest")
    # cosign's tags were copied with their subject; the referrers tag schema's index at
    # the target lists what was copied there: left to the copies.
    assert wants_tag_delete(rule, f"sha256-{HEX}.sig")
    assert not wants_tag_delete(rule, f"sha256-{HEX}")
