"""Retention policy evaluation (cargohold/retention.py) on the prepared repository of
docs/operations.md "Retention": the documented survivors, and each rule on its own."""

from __future__ import annotations

import hashlib

import pytest

from cargohold.errors import ConfigError
from cargohold.retention import (
    ManifestFacts,
    RepoFacts,
    parse_duration,
    parse_policy,
    plan_repo,
    policy_for,
)

DAY = 86400.0
NOW = 1000 * DAY
POLICY = "demo/*: keep_tags=v* most_recently_pushed=2 pulled_within=7d untagged_after=1d"
IMMUTABLE = ("demo/*:release-*",)


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def ago(days: float) -> float:
    return NOW - days * DAY


def prepared() -> RepoFacts:
    """The example repository of docs/operations.md, "Retention"."""
    m = {
        "m_v1": ManifestFacts(pushed=ago(30)),
        "m_rel": ManifestFacts(pushed=ago(20)),
        "m_a": ManifestFacts(pushed=ago(10)),
        "m_b": ManifestFacts(pushed=ago(9), pulled=ago(2)),
        "sig_b": ManifestFacts(subject=dg("m_b"), pushed=ago(6)),
        "m_c": ManifestFacts(pushed=ago(8), pulled=ago(8)),
        "sig_c": ManifestFacts(subject=dg("m_c"), pushed=ago(8)),
        "m_c1": ManifestFacts(pushed=ago(3)),
        "m_c2": ManifestFacts(pushed=ago(3)),
        "m_idx": ManifestFacts(children=(dg("m_c1"), dg("m_c2")), pushed=ago(3)),
        "m_old": ManifestFacts(pushed=ago(5)),
        "m_new": ManifestFacts(pushed=ago(1 / 24)),
        "m_fresh": ManifestFacts(pushed=ago(2 / 24)),
    }
    tags = {
        "v1": "m_v1",
        "old-e": "m_v1",
        "release-1": "m_rel",
        "old-a": "m_a",
        "old-b": "m_b",
        "old-c": "m_c",
        "multi": "m_idx",
        "moving": "m_new",
    }
    tag_pushed = {t: m[d].pushed for t, d in tags.items()}
    tag_pushed["old-e"] = ago(12)  # tagged later than v1's push
    assert all(v is not None for v in tag_pushed.values())
    return RepoFacts(
        "demo/app",
        {dg(k): v for k, v in m.items()},
        {t: dg(d) for t, d in tags.items()},
        {t: float(v) for t, v in tag_pushed.items() if v is not None},
    )


NAMES = {
    dg(n): n
    for n in ("m_v1 m_rel m_a m_b sig_b m_c sig_c m_c1 m_c2 m_idx m_old m_new m_fresh".split())
}


def test_the_documented_example_keeps_the_documented_survivors() -> None:
    plan = plan_repo(parse_policy(POLICY), prepared(), NOW, IMMUTABLE)
    kept = {t.tag: t.reasons for t in plan.tags if not t.delete}
    assert kept == {
        "v1": ["keep_tags v*"],
        "release-1": ["immutable rule demo/*:release-*"],
        "old-b": ["pulled_within 7d"],
        "multi": ["most_recently_pushed 2"],
        "moving": ["most_recently_pushed 2"],
    }
    assert sorted(t.tag for t in plan.tags_to_delete) == ["old-a", "old-c", "old-e"]
    manifests = {NAMES[m.digest]: (m.delete, m.reasons) for m in plan.manifests}
    assert manifests == {
        "m_a": (True, ["its tags were removed"]),
        "m_c": (True, ["its tags were removed"]),
        "sig_c": (True, ["untagged, not pushed or pulled for 1d"]),
        "m_old": (True, ["untagged, not pushed or pulled for 1d"]),
        "sig_b": (False, [f"referrer of {dg('m_b')}"]),
        "m_c1": (False, [f"child of index {dg('m_idx')}"]),
        "m_c2": (False, [f"child of index {dg('m_idx')}"]),
        "m_fresh": (False, ["untagged for less than 1d"]),
    }
    # m_v1 keeps its v1 (old-e goes alone: a tag delete, not a manifest delete).
    assert dg("m_v1") not in {m.digest for m in plan.manifests}


def test_a_policy_without_tag_rules_keeps_every_tag() -> None:
    plan = plan_repo(parse_policy("demo/*: untagged_after=1d"), prepared(), NOW)
    assert not plan.tags_to_delete
    assert {NAMES[m.digest] for m in plan.manifests_to_delete} == {"m_old"}


def test_without_untagged_after_untagged_manifests_stay() -> None:
    plan = plan_repo(parse_policy("demo/*: keep_tags=v*"), prepared(), NOW)
    assert "m_old" not in {NAMES[m.digest] for m in plan.manifests_to_delete}
    # Tags removed take their manifests, unless needed: the untagged signatures sig_b and
    # sig_c stay (no untagged_after), and a referrer needs its subject, so m_b and m_c stay.
    deleted = {NAMES[m.digest] for m in plan.manifests_to_delete}
    assert deleted == {"m_rel", "m_a", "m_idx", "m_new"}
    assert {NAMES[m.digest]: m.reasons for m in plan.manifests if not m.delete}["m_c"] == [
        f"subject of referrer {dg('sig_c')}"
    ]


@pytest.mark.parametrize(
    ("rules", "kept"),
    [
        ("most_recently_pushed=1", {"moving"}),
        ("most_recently_pulled=1", {"old-b"}),
        ("most_recently_pulled=5", {"old-b", "old-c"}),  # never-pulled tags are not ranked
        ("pushed_within=4d", {"multi", "moving"}),
        ("pulled_within=9d", {"old-b", "old-c"}),
        ("keep_tags=old-?|mov*", {"old-a", "old-b", "old-c", "old-e", "moving"}),
    ],
)
def test_each_rule_alone(rules: str, kept: set[str]) -> None:
    plan = plan_repo(parse_policy(f"demo/*: {rules}"), prepared(), NOW)
    assert {t.tag for t in plan.tags if not t.delete} == kept


def test_unknown_push_time_is_kept() -> None:
    facts = RepoFacts(
        "demo/app", {dg("x"): ManifestFacts(), dg("y"): ManifestFacts()}, {"t": dg("x")}
    )
    plan = plan_repo(parse_policy("demo/*: keep_tags=v* untagged_after=1s"), facts, NOW)
    assert [(t.tag, t.delete, t.reasons) for t in plan.tags] == [
        ("t", False, ["push time unknown"])
    ]
    assert [(m.delete, m.reasons) for m in plan.manifests] == [(False, ["push time unknown"])]


def test_policy_parsing_and_choice() -> None:
    policy = parse_policy(POLICY)
    assert policy.keep_tags == ("v*",) and policy.most_recently_pushed == 2
    assert policy.pulled_within == 7 * DAY and policy.untagged_after == DAY
    assert parse_duration("90m") == 5400 and parse_duration("1.5h") == 5400
    other = parse_policy("*: untagged_after=2d")
    assert policy_for([policy, other], "demo/app") is policy
    assert policy_for([policy, other], "else/app") is other
    assert policy_for([policy], "else/app") is None
    for bad in (
        "demo/*",
        "demo/*:",
        "demo/*: keep=v*",
        "*: most_recently_pushed=x",
        "*: pushed_within=3w",
        "*: keep_tags=a keep_tags=b",
    ):
        with pytest.raises(ConfigError):
            parse_policy(bad)
