"""The pull-through cache's Prometheus series (`proxy` = the namespace: bounded by the
configuration, never a repository name or a digest)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TAG_CHECKS = Counter(
    "cargohold_mirror_tag_checks_total",
    "Tags asked upstream (at most one per tag per mirror.tag_ttl_seconds), by outcome: "
    "fresh (answered), stale (unavailable, last known digest served), unavailable "
    "(nothing known: 503), not_found",
    ["proxy", "outcome"],
)
BLOB_FETCHES = Counter(
    "cargohold_mirror_blob_fetches_total",
    "Upstream blob downloads, by outcome: stored, failed (upstream or cluster error), "
    "mismatch (the bytes did not hash to the digest: nothing stored)",
    ["proxy", "outcome"],
)
FETCHED_BYTES = Counter(
    "cargohold_mirror_fetched_bytes_total", "Blob bytes downloaded from upstreams", ["proxy"]
)
FETCHES_IN_FLIGHT = Gauge(
    "cargohold_mirror_fetches_in_flight", "Upstream blob downloads running or waiting now"
)
MEMORY_HELD = Gauge(
    "cargohold_mirror_memory_held_bytes",
    "Bytes reserved by downloads kept whole in memory (at most mirror.memory_pool_bytes)",
)
STORES_DEFERRED = Gauge(
    "cargohold_mirror_store_deferred_bytes",
    "Bytes of verified downloads (clients served) whose cluster write waits for the gateway "
    "to be idle (at most mirror.store_defer_bytes)",
)
