"""Replication rules in the replicated state (node/metadata/webhooks.py): a lease per rule,
the fenced cursor and status report, run requests, dead letters and their retry queue,
snapshots; and the lease of a gateway job (search's backfill), kept in the same book."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.errors import Conflict, NotFound, RequestInvalid
from node.metadata.state import MetadataState


def lease(st: MetadataState, rule: str, holder: str, now: float, **kw: Any) -> Any:
    return st.apply(
        "replication_lease", {"rule": rule, "holder": holder, "now": now, "ttl": 15.0, **kw}
    )


def report(
    st: MetadataState,
    holder: str,
    after: int | None,
    to: int | None,
    extra: dict[str, Any] | None = None,
    **status: Any,
) -> Any:
    args = {"rule": "r1", "holder": holder, "after": after, "to": to, "status": status}
    return st.apply("replication_report", {**args, **(extra or {})})


def test_each_rule_has_its_own_lease() -> None:
    st = MetadataState()
    assert lease(st, "r1", "gw1", 100.0)["holder"] == "gw1"
    assert lease(st, "r2", "gw2", 100.0)["holder"] == "gw2"  # another rule: free
    assert lease(st, "r1", "gw2", 110.0)["holder"] == "gw1"  # held until 115
    assert lease(st, "r1", "gw2", 116.0)["holder"] == "gw2"  # expired
    lease(st, "r1", "gw2", 117.0, release=True)
    assert lease(st, "r1", "gw1", 118.0)["holder"] == "gw1"
    # The webhook delivery lease is another one.
    assert st.apply("webhook_lease", {"holder": "gw3", "now": 118.0, "ttl": 15.0})["holder"] == (
        "gw3"
    )


def test_the_report_is_fenced_by_the_lease_and_the_cursor() -> None:
    st = MetadataState()
    lease(st, "r1", "gw1", 0.0)
    assert report(st, "gw1", None, 5, state="ok") == {"cursor": 5}
    with pytest.raises(Conflict):
        report(st, "gw2", 5, 6)  # not the holder
    with pytest.raises(Conflict):
        report(st, "gw1", 4, 6)  # a stale cursor
    with pytest.raises(RequestInvalid):
        report(st, "gw1", 5, 4)  # never back
    assert report(st, "gw1", None, None, state="retrying") == {"cursor": 5}  # status only
    (row,) = st.query("replication_list", {})["rules"]
    assert row["cursor"] == 5 and row["status"] == {"state": "retrying"}
    with pytest.raises(RequestInvalid):
        report(st, "gw1", None, None, blob="x" * 20_000)


def test_runs_asked_are_counted_audited_and_survive_a_snapshot() -> None:
    st = MetadataState()
    actor = {"time": 1.0, "actor": "admin", "actor_kind": "user"}
    assert st.apply("replication_run", {"rule": "r1", "audit": actor}) == {"runs_requested": 1}
    assert st.apply("replication_run", {"rule": "r1"}) == {"runs_requested": 2}
    lease(st, "r1", "gw1", 0.0)
    report(st, "gw1", None, 3, state="ok", runs_done=1)
    listing = st.query("replication_list", {})
    assert listing["rules"][0]["runs_requested"] == 2
    assert listing["rules"][0]["lease"]["holder"] == "gw1"
    again = MetadataState()
    again.load(st.dump())
    assert again.webhooks == st.webhooks
    assert again.query("replication_list", {}) == listing
    assert st.audit.head_seq == 1  # only the run that carried an actor


def test_dead_letters_are_kept_bounded_queued_again_and_survive_a_snapshot() -> None:
    st = MetadataState()
    lease(st, "r1", "gw1", 0.0)
    report(st, "gw1", None, 2)
    # Given up on with the cursor's move past it, in one fenced report.
    letter = [3, 50.0, 10, "DigestInvalid: ..."]
    assert report(st, "gw1", 2, 3, {"dead": [letter], "keep": 2}) == {"cursor": 3}
    with pytest.raises(Conflict):  # another gateway's report adds nothing
        report(st, "gw2", 3, 4, {"dead": [[4, 51.0, 10, "x"]]})
    report(st, "gw1", 3, 5, {"dead": [[4, 51.0, 10, "x"], [5, 52.0, 10, "y"]], "keep": 2})
    (row,) = st.query("replication_list", {})["rules"]
    assert row["dead_letters"] == 2  # the oldest dropped beyond `keep`
    assert [d[0] for d in row["dead_recent"]] == [4, 5] and row["retry"] == []
    actor = {"time": 60.0, "actor": "admin", "actor_kind": "user"}
    assert st.apply("replication_retry", {"rule": "r1", "seqs": [5], "audit": actor}) == {
        "queued": 1
    }
    assert st.apply("replication_retry", {"rule": "r1", "seqs": [5]}) == {"queued": 0}
    with pytest.raises(NotFound):
        st.apply("replication_retry", {"rule": "nope", "seqs": None})
    (row,) = st.query("replication_list", {})["rules"]
    assert (row["dead_letters"], row["retry"]) == (1, [5])
    again = MetadataState()
    again.load(st.dump())
    assert again.webhooks == st.webhooks
    assert again.query("replication_list", {}) == st.query("replication_list", {})
    # Copied again: dropped from the queue (the cursor does not move back).
    report(st, "gw1", None, None, {"retried": [5]})
    (row,) = st.query("replication_list", {})["rules"]
    assert (row["cursor"], row["dead_letters"], row["retry"]) == (5, 1, [])
    assert st.apply("replication_retry", {"rule": "r1", "seqs": None}) == {"queued": 1}
    # Given up on again: a dead letter again, off the queue.
    report(st, "gw1", None, None, {"retried": [4], "dead": [[4, 70.0, 10, "x"]]})
    (row,) = st.query("replication_list", {})["rules"]
    assert (row["dead_letters"], row["retry"]) == (1, [])
    assert st.audit.head_seq == 1  # only the retry that carried an actor


def test_a_gateway_job_has_its_own_lease_which_survives_a_snapshot() -> None:
    st = MetadataState()

    def job(holder: str, now: float, **kw: Any) -> Any:
        args = {"job": "search_backfill", "holder": holder, "now": now, "ttl": 30.0, **kw}
        return st.apply("job_lease", args)

    assert job("gw1", 100.0) == {"holder": "gw1", "expires": 130.0}
    assert lease(st, "search_backfill", "gw2", 100.0)["holder"] == "gw2"  # a rule's: another
    assert job("gw2", 129.0)["holder"] == "gw1"  # held until 130
    assert job("gw1", 129.0)["expires"] == 159.0  # renewed
    again = MetadataState()
    again.load(st.dump())
    assert again.webhooks == st.webhooks
    assert again.webhooks.job_leases == {"search_backfill": ("gw1", 159.0)}
    assert job("gw2", 159.0)["holder"] == "gw2"  # expired
    job("gw1", 160.0, release=True)  # not its own: nothing happens
    assert job("gw1", 160.0)["holder"] == "gw2"
    assert job("gw2", 161.0, release=True) == {"holder": "", "expires": 0.0}
    assert job("gw1", 162.0)["holder"] == "gw1"
    with pytest.raises(RequestInvalid):
        st.apply("job_lease", {"job": "", "holder": "gw1", "now": 1.0, "ttl": 30.0})
