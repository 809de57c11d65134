"""Webhooks in the replicated state (node/metadata/webhooks.py): endpoints, fenced cursors,
the delivery lease, dead letters and retries, snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.audit import event
from cargohold.errors import Conflict, NotFound, RequestInvalid
from node.metadata.state import MetadataState

EP = {"name": "ci", "url": "http://hook.test/e", "headers": {"Authorization": "Bearer x"}}


def adv(st: MetadataState, after: int | None, to: int, holder: str = "gw1", **kw: Any) -> Any:
    args = {"name": "ci", "holder": holder, "after": after, "to": to, "keep": kw.pop("keep", 10)}
    return st.apply("webhook_advance", {**args, **kw})


def state_with_log(records: int = 5) -> MetadataState:
    st = MetadataState()
    st.apply(
        "audit_append",
        {
            "events": [
                event("push", time=float(i), repository="r", digest="") for i in range(records)
            ]
        },
    )
    return st


def test_a_new_endpoint_starts_at_the_head_and_is_listed() -> None:
    st = state_with_log(5)
    assert st.apply("webhook_put", {"endpoint": EP}) == {"created": True}
    assert st.apply("webhook_put", {"endpoint": {**EP, "timeout": 2}}) == {"created": False}
    listing = st.query("webhook_list", {})
    (row,) = listing["endpoints"]
    assert row["cursor"] == 5 and row["dead_letters"] == 0 and listing["head_seq"] == 5
    assert row["endpoint"]["timeout"] == 2.0 and row["endpoint"]["actions"] == [
        "push",
        "pull",
        "delete",
    ]
    with pytest.raises(RequestInvalid):
        st.apply("webhook_put", {"endpoint": {**EP, "url": "file:///etc/passwd"}})


def test_the_lease_goes_to_one_holder_until_it_expires() -> None:
    st = MetadataState()
    lease = {"now": 100.0, "ttl": 15.0}
    assert st.apply("webhook_lease", {"holder": "gw1", **lease})["holder"] == "gw1"
    assert st.apply("webhook_lease", {"holder": "gw2", **lease, "now": 110.0})["holder"] == "gw1"
    assert st.apply("webhook_lease", {"holder": "gw1", **lease, "now": 110.0}) == {
        "holder": "gw1",
        "expires": 125.0,
    }
    assert (
        st.apply("webhook_lease", {"holder": "gw2", "now": 125.0, "ttl": 15.0})["holder"] == "gw2"
    )
    st.apply("webhook_lease", {"holder": "gw2", "now": 126.0, "ttl": 15.0, "release": True})
    assert st.apply("webhook_lease", {"holder": "gw1", **lease, "now": 127.0})["holder"] == "gw1"


def test_the_cursor_is_fenced_by_the_lease_and_never_skips() -> None:
    st = state_with_log(5)
    st.apply("webhook_put", {"endpoint": EP})
    with pytest.raises(Conflict):  # nobody holds the lease
        adv(st, 5, 6)
    st.apply("webhook_lease", {"holder": "gw1", "now": 0.0, "ttl": 15.0})
    with pytest.raises(Conflict):  # not the holder
        adv(st, 5, 6, holder="gw2")
    with pytest.raises(Conflict):  # a stale cursor: someone advanced since it was read
        adv(st, 4, 6)
    assert adv(st, 5, 7) == {"cursor": 7}
    with pytest.raises(RequestInvalid):
        adv(st, 7, 6)
    # A configured endpoint gets its first cursor from an advance with after=None.
    cfg = {"name": "cfg", "holder": "gw1", "after": None, "to": 5, "keep": 10}
    assert st.apply("webhook_advance", cfg) == {"cursor": 5}
    with pytest.raises(Conflict):
        st.apply("webhook_advance", cfg)


def test_dead_letters_are_bounded_and_retried() -> None:
    st = state_with_log(5)
    st.apply("webhook_put", {"endpoint": EP})
    st.apply("webhook_lease", {"holder": "gw1", "now": 0.0, "ttl": 15.0})
    dead = [[seq, 9.0, 3, "HTTP 500"] for seq in (6, 7, 8)]
    adv(st, 5, 8, dead=dead, keep=2)
    assert st.query("webhook_dead_letters", {"name": "ci"}) == [
        [7, 9.0, 3, "HTTP 500"],
        [8, 9.0, 3, "HTTP 500"],
    ]
    assert st.apply("webhook_retry", {"name": "ci", "seqs": [8]}) == {"queued": 1}
    (row,) = st.query("webhook_list", {})["endpoints"]
    assert row["retry"] == [8] and row["dead_letters"] == 1
    adv(st, 8, 8, retried=[8])
    assert st.query("webhook_list", {})["endpoints"][0]["retry"] == []
    assert st.apply("webhook_retry", {"name": "ci", "seqs": None}) == {"queued": 1}
    with pytest.raises(NotFound):
        st.apply("webhook_retry", {"name": "nope", "seqs": None})


def test_webhooks_survive_a_snapshot_and_remove_forgets_everything() -> None:
    st = state_with_log(3)
    st.apply("webhook_put", {"endpoint": EP})
    st.apply("webhook_lease", {"holder": "gw1", "now": 0.0, "ttl": 15.0})
    adv(st, 3, 3, dead=[[2, 1.0, 1, "age"]])
    st.apply("webhook_retry", {"name": "ci", "seqs": None})
    again = MetadataState()
    again.load(st.dump())
    assert again.webhooks == st.webhooks
    assert again.query("webhook_list", {}) == st.query("webhook_list", {})
    assert st.apply("webhook_remove", {"name": "ci"}) == {"removed": True}
    assert st.apply("webhook_remove", {"name": "ci"}) == {"removed": False}
    assert st.query("webhook_list", {})["endpoints"] == []


def test_admin_changes_are_in_the_activity_log() -> None:
    st = MetadataState()
    actor = {"time": 1.0, "actor": "cli:root", "actor_kind": "admin"}
    st.apply("webhook_put", {"endpoint": EP, "audit": actor})
    st.apply("webhook_remove", {"name": "ci", "audit": actor})
    details = [line for line in st.audit.tail]
    assert len(details) == 2 and b"webhook:ci" in details[0] and b"webhook removed" in details[1]
