"""The gateway re-learns its member list quickly right after start while a configured node
has not joined yet (gateway/cluster/membership.py, `gateway.members_settle_seconds`)."""

from __future__ import annotations

from typing import Any

from cargohold.config import Config
from gateway.cluster.membership import Member, MembershipView

SEEDS = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def view_knowing(*addresses: str, state: str = "active") -> MembershipView:
    cfg = Config()
    cfg.gateway.nodes = list(SEEDS)
    pool: Any = None  # never used: no refresh runs here
    view = MembershipView(cfg, pool, background=None)  # type: ignore[arg-type]
    view._set_members([Member(f"n{i}", a, f"raft{i}", state) for i, a in enumerate(addresses)])
    return view


def test_a_missing_seed_shortens_the_interval_only_within_the_settle_period() -> None:
    view = view_knowing(*SEEDS[:2])
    assert view._next_refresh_in(1.0) == 0.5
    assert view._next_refresh_in(59.0) == 0.5
    assert view._next_refresh_in(61.0) == 5.0


def test_every_seed_known_keeps_the_normal_interval() -> None:
    assert view_knowing(*SEEDS)._next_refresh_in(1.0) == 5.0


def test_a_removed_seed_counts_as_missing_and_zero_turns_the_settle_period_off() -> None:
    view = view_knowing(*SEEDS, state="removed")
    assert view._next_refresh_in(1.0) == 0.5
    view._cfg.gateway.members_settle_seconds = 0.0
    assert view._next_refresh_in(1.0) == 5.0
