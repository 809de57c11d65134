"""Where a chunk lives: its owners, the order to write it in, the order to read it in.

Rendezvous hashing of the chunk id over the members (`cargohold.placement.rank_nodes`):
the first `cluster.replicas` ACTIVE members own a chunk. Writes go to the active members
in rank order (a failed owner's copy spills to the next one; repair moves it home later),
skipping full ones (`FullNodes`) while at least W others remain; with fewer, the full
ones come last, so the write asks them again rather than trusting an old answer.
Reads try the owners first, then every other non-removed member in rank order, which
finds spilled or not-yet-moved copies. Nodes that failed recently come after the healthy
ones in both orders.
"""

from __future__ import annotations

from cargohold.config import Config
from cargohold.placement import rank_nodes
from gateway.cluster.membership import Member, MembershipView


class Placement:
    """Placement over the current membership view."""

    def __init__(self, cfg: Config, view: MembershipView) -> None:
        self._cfg = cfg
        self._view = view

    def owners(self, chunk_id: bytes) -> list[Member]:
        """The R members that own this chunk (fewer when the cluster is smaller)."""
        ranked = rank_nodes(chunk_id, self._view.active_ids())
        return [self._view.member(i) for i in ranked[: self._cfg.cluster.replicas]]

    def write_order(self, chunk_id: bytes) -> list[Member]:
        """The active members with space in rank order, those that failed recently last
        (then the full ones, when fewer than W have space)."""
        ranked = [self._view.member(i) for i in rank_nodes(chunk_id, self._view.active_ids())]
        ordered = self._view.failures.healthy_first(ranked, _address)
        with_space, full = self._view.full.split(ordered, _address)
        if len(with_space) >= self._cfg.cluster.write_quorum:
            return with_space
        return with_space + full

    def read_order(self, chunk_id: bytes) -> list[Member]:
        """Owners first (healthy ones first), then every other member in rank order."""
        owners = self.owners(chunk_id)
        owner_ids = {m.id for m in owners}
        rest = [
            self._view.member(i)
            for i in rank_nodes(chunk_id, self._view.present_ids())
            if i not in owner_ids
        ]
        return self._view.failures.healthy_first(owners, _address) + rest


def _address(member: Member) -> str:
    return member.grpc
