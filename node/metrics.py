"""The node's Prometheus metrics: state read when scraped, latencies observed as they happen.

`NodeCollector` reads, at scrape time and in the metrics thread (node/metrics_http.py),
what the node already keeps: Raft role, term, commit and applied index (and the apply lag
between them), the chunk store's counters and LMDB map use, the data filesystem's
capacity, use, free space and reserve (node/disk.py), the repair, scrub and garbage
collection roles' progress, among it `cargohold_node_repair_chunks_below_replicas`
(node/repair.py) and `cargohold_node_gc_reclaimed_bytes` (node/gc.py), and the LMDB file
size against the pages its data holds. Nothing
is counted on the hot paths for these. Two histograms are observed as things happen:
`cargohold_node_raft_command_seconds` (per command op, a fixed set) and
`cargohold_node_chunk_commit_seconds` (one per LMDB write transaction, fsync included:
one observe per group commit, not per chunk). Packed calls (`Chunks/PutMany`,
`Metadata/Commands`: a gateway's small requests to this node carried in one call) are
counted by method as plain integers the servicers bump (`PackCounts`), read at scrape
time: `cargohold_node_packed_calls` and `cargohold_node_packed_requests` (their items;
requests / calls is the mean pack size). Each packed command is still observed in the
command histogram under its own op, and packed puts share the commit histogram's
transactions like single puts. Bulk puts (node/bulk_puts.py) are counted the same way
(`BulkCounters`): `cargohold_node_bulk_puts`, `_bulk_put_bytes`, `_bulk_refused`, and
the port's open connections. Every series carries `node` (the node id); no label takes
a repository name, digest or chunk id.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cargohold.errors import RegistryError
from node.chunkstore import StoreUsage
from node.disk import DiskSpace

RAFT_COMMAND_SECONDS = Histogram(
    "cargohold_node_raft_command_seconds",
    "Metadata commands from submission to their commit and apply on this node, by op",
    ["node", "op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHUNK_COMMIT_SECONDS = Histogram(
    "cargohold_node_chunk_commit_seconds",
    "Chunk store write transactions (a group of puts/deletes), fsync included",
    ["node"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RAFT_ROLES = ("follower", "candidate", "leader")


# The packed calls a node serves (protos/README.md, "Packed calls").
PACKED_METHODS = ("Chunks/PutMany", "Metadata/Commands")


class PackCounts:
    """Packed calls served and the requests they carried, by method: plain counters bumped
    on the event loop and read at scrape time by the metrics thread (every key exists from
    the start, so the dicts never change size under its iteration)."""

    def __init__(self) -> None:
        self.calls = collections.Counter(dict.fromkeys(PACKED_METHODS, 0))
        self.requests = collections.Counter(dict.fromkeys(PACKED_METHODS, 0))

    def record(self, method: str, requests: int) -> None:
        self.calls[method] += 1
        self.requests[method] += requests


class _Raft(Protocol):
    def status(self) -> Any: ...


class _Store(Protocol):
    def usage(self) -> StoreUsage: ...


class _Role(Protocol):
    stats: Any


class _Bulk(Protocol):
    """The bulk put port (node/bulk_puts.py `BulkPutServer`)."""

    counters: Any

    @property
    def open_connections(self) -> int: ...


class NodeCollector(Collector):
    """Everything a node reports at scrape time; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        raft: _Raft,
        store: _Store,
        space: DiskSpace,
        repair: _Role,
        scrub: _Role,
        gc: _Role | None = None,
        retention: _Role | None = None,
        packs: PackCounts | None = None,
        bulk: _Bulk | None = None,
    ) -> None:
        self._node = node_id
        self._packs = packs
        self._bulk = bulk
        self._raft = raft
        self._store = store
        self._space = space
        self._repair = repair
        self._scrub = scrub
        self._gc = gc
        self._retention = retention

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["node"])
        family.add_metric([self._node], value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["node"])
        family.add_metric([self._node], value)
        return family

    def collect(self) -> Iterator[Any]:
        yield from self._raft_metrics()
        yield from self._store_metrics()
        yield from self._disk_metrics()
        yield from self._repair_metrics()
        yield from self._scrub_metrics()
        yield from self._gc_metrics()
        yield from self._retention_metrics()
        yield from self._pack_metrics()
        yield from self._bulk_metrics()

    def _bulk_metrics(self) -> Iterator[Any]:
        b = self._bulk
        if b is None:
            return
        c, n = self._counter, b.counters
        yield c("cargohold_node_bulk_puts", "Chunk puts stored from the bulk port", n.puts)
        yield c("cargohold_node_bulk_put_bytes", "Chunk bytes stored from the bulk port", n.bytes)
        yield c(
            "cargohold_node_bulk_refused",
            "Bulk connections or frames refused (authentication, role, framing, limits)",
            n.refused,
        )
        yield self._gauge(
            "cargohold_node_bulk_connections", "Open bulk port connections", b.open_connections
        )

    def _pack_metrics(self) -> Iterator[Any]:
        if self._packs is None:
            return
        for name, doc, counts in (
            ("cargohold_node_packed_calls", "Packed calls served, by method", self._packs.calls),
            (
                "cargohold_node_packed_requests",
                "Requests carried by packed calls, by method",
                self._packs.requests,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["node", "method"])
            for method in PACKED_METHODS:
                family.add_metric([self._node, method], counts[method])
            yield family

    def _raft_metrics(self) -> Iterator[Any]:
        try:
            st = self._raft.status()
        except (RegistryError, RuntimeError):
            return
        role = GaugeMetricFamily(
            "cargohold_node_raft_role",
            "1 for this node's current Raft role",
            labels=["node", "role"],
        )
        for name in RAFT_ROLES:
            role.add_metric([self._node, name], 1.0 if st.role == name else 0.0)
        yield role
        g = self._gauge
        yield g("cargohold_node_raft_term", "Current Raft term", st.term)
        yield g("cargohold_node_raft_commit_index", "Highest committed log index", st.commit_index)
        yield g("cargohold_node_raft_applied_index", "Highest applied log index", st.last_applied)
        yield g(
            "cargohold_node_raft_apply_lag",
            "Committed log entries not yet applied here",
            max(0, st.commit_index - st.last_applied),
        )
        yield g(
            "cargohold_node_raft_leader_known", "1 when this node knows a leader", bool(st.leader)
        )
        yield g(
            "cargohold_node_raft_has_quorum",
            "1 when this node reaches a majority of the members",
            st.has_quorum,
        )
        yield g("cargohold_node_raft_members", "Raft members this node knows", len(st.members))
        rejected = getattr(self._raft, "snapshots_rejected", None)
        if isinstance(rejected, int):
            yield self._counter(
                "cargohold_node_raft_snapshots_rejected",
                "Snapshots received from the leader and discarded as damaged (sent again)",
                rejected,
            )
        damaged = getattr(self._raft, "own_snapshots_damaged", None)
        if isinstance(damaged, int):
            yield self._counter(
                "cargohold_node_raft_own_snapshots_damaged",
                "Times this node's own snapshot failed its check before being sent to a "
                "follower (not sent; a new snapshot is written)",
                damaged,
            )

    def _store_metrics(self) -> Iterator[Any]:
        try:
            u = self._store.usage()
        except RegistryError:  # closed (the node is stopping)
            return
        g = self._gauge
        yield g("cargohold_node_chunks", "Chunks this node stores", u.count)
        yield g("cargohold_node_chunk_bytes", "Bytes of chunk data this node stores", u.bytes)
        yield g(
            "cargohold_node_chunks_quarantined",
            "Copies that failed their checksum, kept aside",
            u.quarantined,
        )
        yield g("cargohold_node_lmdb_map_size_bytes", "The LMDB map size", u.map_size)
        yield g("cargohold_node_lmdb_map_used_bytes", "LMDB pages in use, in bytes", u.map_used)

    def _disk_metrics(self) -> Iterator[Any]:
        try:
            d = self._space.usage()
        except OSError:
            return
        g = self._gauge
        yield g(
            "cargohold_node_disk_capacity_bytes",
            "Size of the filesystem holding the data directory",
            d.capacity,
        )
        yield g("cargohold_node_disk_used_bytes", "Bytes used on it (by anything)", d.used)
        yield g("cargohold_node_disk_free_bytes", "Bytes this node may still allocate", d.free)
        yield g(
            "cargohold_node_disk_reserve_bytes",
            "Free space chunk writes leave for metadata",
            d.reserve,
        )
        yield g("cargohold_node_disk_full", "1 while chunk writes are refused", d.full)

    def _repair_metrics(self) -> Iterator[Any]:
        s = self._repair.stats
        g, c = self._gauge, self._counter
        yield c("cargohold_node_repair_passes", "Repair passes finished", s.passes)
        yield g("cargohold_node_repair_running", "1 while a repair pass runs", s.running)
        yield g(
            "cargohold_node_repair_last_pass_end_timestamp_seconds",
            "When the last repair pass ended (Unix time; 0: none yet)",
            s.last_pass_end,
        )
        yield g(
            "cargohold_node_repair_scanned_chunks",
            "Local chunks the running (or last) pass has looked at",
            s.scanned,
        )
        yield c(
            "cargohold_node_repair_copied_bytes",
            "Bytes repair copied to nodes lacking a chunk",
            s.total_repaired_bytes,
        )
        yield c(
            "cargohold_node_repair_moved_away_bytes",
            "Bytes repair deleted here once their owners held them",
            s.total_moved_away_bytes,
        )
        if s.last_below_replicas >= 0:
            yield g(
                "cargohold_node_repair_chunks_below_replicas",
                "Local chunks with fewer than R copies on answering nodes after the last "
                "finished repair pass",
                s.last_below_replicas,
            )

    def _scrub_metrics(self) -> Iterator[Any]:
        s = self._scrub.stats
        g, c = self._gauge, self._counter
        yield c("cargohold_node_scrub_passes", "Scrub passes finished", s.passes)
        yield g("cargohold_node_scrub_running", "1 while a scrub pass runs", s.running)
        yield c("cargohold_node_scrub_chunks", "Chunks scrub has verified", s.chunks_scrubbed)
        yield c("cargohold_node_scrub_bytes", "Bytes scrub has verified", s.bytes_scrubbed)
        yield c("cargohold_node_scrub_corrupt", "Corrupt copies scrub found", s.corrupt_found)
        yield c("cargohold_node_scrub_refetched", "Corrupt copies replaced from a peer", s.repaired)
        yield c(
            "cargohold_node_scrub_refetch_failed",
            "Re-fetches that found no good copy",
            s.refetch_failed,
        )

    def _gc_metrics(self) -> Iterator[Any]:
        if self._gc is None:
            return
        s = self._gc.stats
        g, c = self._gauge, self._counter
        yield c("cargohold_node_gc_passes", "Garbage collection passes finished", s.passes)
        yield g("cargohold_node_gc_running", "1 while a garbage collection pass runs", s.running)
        yield c(
            "cargohold_node_gc_reclaimed_chunks",
            "Chunks garbage collection deleted from this node",
            s.reclaimed_chunks_total,
        )
        yield c(
            "cargohold_node_gc_reclaimed_bytes",
            "Chunk bytes garbage collection deleted from this node",
            s.reclaimed_bytes_total,
        )
        yield c(
            "cargohold_node_gc_pruned_blobs",
            "Unlinked blob recipes this node, as leader, pruned from the state",
            s.pruned_blobs_total,
        )
        yield c(
            "cargohold_node_gc_purged_trash",
            "Trash entries (manifests, tags) this node, as leader, purged after the retention",
            s.purged_trash_total,
        )
        yield c("cargohold_node_gc_failed_passes", "GC passes that failed", s.failed_passes)
        yield g(
            "cargohold_node_gc_spared_young_chunks",
            "Unreferenced chunks the last GC pass spared as younger than the grace",
            s.spared_young,
        )
        file_usage = getattr(self._store, "file_usage", None)
        if file_usage is not None:
            try:
                usage = file_usage()
            except (RegistryError, OSError):
                return
            yield g(
                "cargohold_node_lmdb_file_bytes",
                "Size of the chunk store's data.mdb (LMDB never shrinks it)",
                usage["file_bytes"],
            )
            yield g(
                "cargohold_node_lmdb_data_bytes",
                "Bytes of the LMDB pages the chunk store's data holds now",
                usage["data_bytes"],
            )

    def _retention_metrics(self) -> Iterator[Any]:
        if self._retention is None:
            return
        s = self._retention.stats
        g, c = self._gauge, self._counter
        yield c("cargohold_node_retention_passes", "Retention passes finished", s.passes)
        yield c(
            "cargohold_node_retention_tags_deleted",
            "Tags retention deleted (this node as leader)",
            s.tags_deleted_total,
        )
        yield c(
            "cargohold_node_retention_manifests_deleted",
            "Manifests retention deleted (this node as leader)",
            s.manifests_deleted_total,
        )
        yield c(
            "cargohold_node_retention_failed_passes",
            "Retention passes that failed",
            s.failed_passes,
        )
        yield g(
            "cargohold_node_retention_skipped_changed",
            "Deletions the last retention pass left because a push or pull raced them",
            s.skipped_changed,
        )


@contextlib.contextmanager
def node_metrics(
    node_id: str,
    raft: Any,
    store: Any,
    space: DiskSpace,
    repair: _Role,
    scrub: _Role,
    gc: _Role | None = None,
    retention: _Role | None = None,
    packs: PackCounts | None = None,
    bulk: _Bulk | None = None,
) -> Iterator[NodeCollector]:
    """Register the collector and the latency observers for the node's lifetime."""
    commands: dict[str, Any] = {}

    def observe_command(op: str, seconds: float) -> None:
        child = commands.get(op)
        if child is None:
            child = commands[op] = RAFT_COMMAND_SECONDS.labels(node_id, op)
        child.observe(seconds)

    collector = NodeCollector(
        node_id, raft, store, space, repair, scrub, gc, retention, packs, bulk
    )
    raft.command_observer = observe_command
    store.commit_observer = CHUNK_COMMIT_SECONDS.labels(node_id).observe
    REGISTRY.register(collector)
    try:
        yield collector
    finally:
        REGISTRY.unregister(collector)
        raft.command_observer = None
        store.commit_observer = None
