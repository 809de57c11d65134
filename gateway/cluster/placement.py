"""Where a chunk lives: its owners, the order to write it in, the order to read it in.

Rendezvous hashing of the chunk id over the members (`cargohold.placement.rank_nodes`):
the first `cluster.replicas` ACTIVE members own a chunk. Writes go to the active members
in rank order (a failed owner's copy spills to the next one; repair moves it home later).
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
        """Every active member in rank order, those that failed recently last."""
        ranked = [self._view.member(i) for i in rank_nodes(chunk_id, self._view.active_ids())]
        return self._view.failures.healthy_first(ranked, _address)

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
