"""Webhook endpoints, filters, the Distribution envelope and the back-off schedule
(cargohold/webhooks.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cargohold import audit
from cargohold.config import ConfigError, load_config
from cargohold.errors import RequestInvalid
from cargohold.webhooks import (
    MEDIA_TYPE,
    Endpoint,
    Source,
    backoff,
    envelope,
    event,
    event_id,
    parse_config_endpoints,
    wants,
)

DIGEST = "sha256:" + "ab" * 32


def record(action: str = "push", repo: str = "team/app", ref: str = "v1", **kw: Any) -> dict:
    ev = audit.event(
        action,
        time=1_700_000_000.25,
        actor=kw.get("actor", "alice"),
        actor_kind="user",
        client="10.0.0.9",
        user_agent="docker/27",
        repository=repo,
        reference=ref,
        digest=kw.get("digest", DIGEST),
        result=kw.get("result", "ok"),
    )
    return audit.decode(audit.encode(kw.get("seq", 7), audit.GENESIS, ev))


def endpoint(**kw: Any) -> Endpoint:
    return Endpoint.from_json({"name": "ci", "url": "http://hook.test/events", **kw})


def test_the_envelope_is_distributions() -> None:
    rec = record()
    src = Source("https://registry.example.com", "inst-1")
    ev = event(rec, src, "application/vnd.oci.image.manifest.v1+json", 1234)
    assert envelope([ev]) == {"events": [ev]}
    assert MEDIA_TYPE == "application/vnd.docker.distribution.events.v1+json"
    assert ev["id"] == event_id(rec["hash"]) and len(ev["id"]) == 36
    assert ev["timestamp"] == "2023-11-14T22:13:20.250000Z"
    assert ev["action"] == "push"
    assert ev["target"] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": DIGEST,
        "size": 1234,
        "length": 1234,
        "repository": "team/app",
        "url": f"https://registry.example.com/v2/team/app/manifests/{DIGEST}",
        "tag": "v1",
    }
    assert ev["request"] == {
        "id": "cargohold-7",
        "addr": "10.0.0.9",
        "host": "registry.example.com",
        "method": "PUT",
        "useragent": "docker/27",
    }
    assert ev["actor"] == {"name": "alice"}
    assert ev["source"] == {"addr": "registry.example.com", "instanceID": "inst-1"}
    assert ev["cargohold"] == {"seq": 7}


def test_by_digest_and_anonymous_events_have_no_tag_nor_actor() -> None:
    ev = event(record("pull", ref=DIGEST, actor=""), Source("http://r:5000", "i"))
    assert "tag" not in ev["target"] and ev["actor"] == {}
    assert ev["request"]["method"] == "GET"
    assert "mediaType" not in ev["target"] and ev["target"]["size"] == 0
    assert event(record("delete"), Source("http://r", "i"))["request"]["method"] == "DELETE"


def test_the_id_is_stable_and_differs_per_record() -> None:
    a, b = record(seq=1), record(seq=2)
    assert event_id(a["hash"]) == event_id(record(seq=1)["hash"])
    assert event_id(a["hash"]) != event_id(b["hash"])


def test_filters_by_action_namespace_and_glob() -> None:
    assert wants(endpoint(), record())
    assert not wants(endpoint(), record("login"))
    assert not wants(endpoint(), record(result="denied"))
    assert not wants(endpoint(actions=["push"]), record("pull"))
    assert wants(endpoint(actions=["pull", "delete"]), record("delete"))
    ns = endpoint(namespace="team")
    assert wants(ns, record(repo="team")) and wants(ns, record(repo="team/x/y"))
    assert not wants(ns, record(repo="teamster/app"))
    globbed = endpoint(repositories=["*/app", "base/*"])
    assert wants(globbed, record(repo="team/app")) and wants(globbed, record(repo="base/deb"))
    assert not wants(globbed, record(repo="team/web"))
    assert not wants(endpoint(), record(repo=""))


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "Bad Name"},
        {"url": "ftp://x/y"},
        {"url": "http://"},
        {"actions": ["push", "login"]},
        {"actions": []},
        {"repositories": "team/*"},
        {"headers": {"Bad Header": "x"}},
        {"headers": {"X-A": "one\r\ntwo"}},
        {"timeout": 0},
        {"timeout": True},
    ],
)
def test_bad_endpoints_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(RequestInvalid):
        Endpoint.from_json({"name": "ci", "url": "http://hook.test/e", **bad})


def test_headers_take_distributions_list_form_and_are_masked_in_listings() -> None:
    ep = endpoint(headers={"Authorization": ["Bearer s3cret"]})
    assert ep.headers == (("Authorization", "Bearer s3cret"),)
    assert ep.to_json(reveal_headers=False)["headers"] == {"Authorization": "***"}
    assert Endpoint.from_json(ep.to_json()) == ep


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rand = random.Random(1)
    assert backoff(0, 1.0, 60.0) == 0.0
    for attempt, nominal in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0)):
        delay = backoff(attempt, 1.0, 60.0, rand)
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    assert all(backoff(n, 1.0, 60.0, rand) <= 60.0 for n in (7, 20, 1000))
    assert backoff(1000, 1.0, 60.0, rand) >= 48.0


def test_config_endpoints_parse_from_toml(tmp_path: Any) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[webhooks]\nbackoff_max_seconds = 10\n"
        "[[webhooks.endpoints]]\nname = 'ci'\nurl = 'http://ci.test/hook'\n"
        "actions = ['push']\nheaders = { Authorization = 'Bearer t' }\n"
    )
    cfg = load_config(path, environ={})
    (ep,) = parse_config_endpoints(cfg.webhooks.endpoints)
    assert ep.origin == "config" and ep.actions == ("push",) and cfg.webhooks.max_attempts == 50
    path.write_text("[[webhooks.endpoints]]\nname = 'ci'\nurl = 'gopher://x'\n")
    with pytest.raises(ConfigError, match=r"webhooks\.endpoints"):
        load_config(path, environ={})
    path.write_text("[webhooks]\nbackoff_seconds = 0\n")
    with pytest.raises(ConfigError):
        load_config(path, environ={})
    with pytest.raises(RequestInvalid, match="unique"):
        parse_config_endpoints([{"name": "a", "url": "http://x/"}] * 2)
