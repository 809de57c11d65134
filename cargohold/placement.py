"""Chunk placement: rendezvous (highest-random-weight) hashing over the live members.

Placement is computed, never stored: every gateway and node that knows the same member
list picks the same replicas for a chunk. xxhash is fine here because the weights only
spread load; chunk identity is the sha256 id itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import xxhash


def rank_nodes(chunk_id: bytes, node_ids: Iterable[str]) -> list[str]:
    """All node ids ordered by their rendezvous weight for this chunk, best first."""
    return sorted(
        node_ids,
        key=lambda node: (xxhash.xxh3_64_intdigest(chunk_id + node.encode()), node),
        reverse=True,
    )


def replicas_for(chunk_id: bytes, node_ids: Sequence[str], replicas: int) -> list[str]:
    """The `replicas` nodes that own a chunk (fewer when the cluster is smaller)."""
    return rank_nodes(chunk_id, node_ids)[:replicas]
