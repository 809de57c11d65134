"""RecentFailures: which nodes the cluster client tries last, and for how long."""

from __future__ import annotations

from gateway.cluster.failures import RecentFailures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_limited_node_is_tried_last_until_its_time_is_up() -> None:
    clock = Clock()
    failures = RecentFailures(2.0, clock=clock)
    failures.limit("b")
    assert failures.is_limited("b") and not failures.is_limited("a")
    assert failures.healthy_first(["a", "b", "c"], str) == ["a", "c", "b"]
    clock.now += 2.5
    assert not failures.is_limited("b")
    assert failures.healthy_first(["a", "b", "c"], str) == ["a", "b", "c"]


def test_limited_nodes_keep_their_order_and_are_never_dropped() -> None:
    failures = RecentFailures(2.0, clock=Clock())
    for address in ("d", "b"):
        failures.limit(address)
    assert failures.healthy_first(["a", "b", "c", "d"], str) == ["a", "c", "b", "d"]
    assert failures.healthy_first(["b", "d"], str) == ["b", "d"]


def test_record_failure_limits_and_tells_the_view_while_limit_does_not() -> None:
    told: list[str] = []
    failures = RecentFailures(2.0, on_failure=told.append, clock=Clock())
    failures.limit("slow")
    failures.record_failure("dead")
    assert failures.is_limited("slow") and failures.is_limited("dead")
    assert told == ["dead"]


def test_clear_lifts_a_limit_at_once() -> None:
    failures = RecentFailures(2.0, clock=Clock())
    failures.limit("a")
    failures.clear("a")
    assert not failures.is_limited("a")
    failures.clear("never-seen")  # no error for an address it does not know
