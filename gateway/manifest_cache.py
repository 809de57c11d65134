"""The gateway's two manifest caches, both local to one gateway and bounded.

`ManifestCache`: an LRU of manifest bodies by digest, sized in bytes. Bodies are
content-addressed, hence immutable: a cached body can never be stale, only no longer
wanted. It never answers *whether* a manifest exists in a repository; it only saves
reading the body's chunks from the nodes.

`RecordCache`: (repo, digest) -> a record the cluster confirmed (the `manifest_get`
record for manifests, the `blob_get` recipe for blobs). This one does answer existence, for
GET/HEAD by digest only, and only positively (a 404 is never cached, so a push through any
gateway is seen at once). What it could serve stale is a manifest or blob link removed
through another gateway; two rules keep that bounded:

- **Under the lease** (gateway/auth/lease.py, while `unlinks()` is fresh): an entry is
  trusted while the leader's unlink revision is the one it was confirmed at (read just
  before the confirming query was sent). Every removal moves it, and is acknowledged only
  once every gateway holding a lease has the new one (node/metadata/access_leases.py): a
  removal acknowledged to anyone is never served from here after, however old the entry.
- **Without a fresh lease** (none held, a leader change, a node from before it): an entry
  is trusted for `ttl` seconds from the moment its confirming query was *sent* (so the
  bound holds whatever the query's latency); a removal through another gateway may be
  served for at most that long after its acknowledgement. `ttl` 0: never without a lease.

The lookups are counted by how they were answered (`cargohold_gateway_record_lookups_total`,
source lease, ttl or query). Time comes from `RecordCache.clock`, a monotonic clock tests
may replace.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from gateway.metrics import RECORD_LOOKUPS

V = TypeVar("V")


class ManifestCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, digest: str) -> bytes | None:
        body = self._items.get(digest)
        if body is not None:
            self._items.move_to_end(digest)
        return body

    def put(self, digest: str, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        old = self._items.pop(digest, None)
        if old is not None:
            self._bytes -= len(old)
        self._items[digest] = body
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted)

    def discard(self, digest: str) -> None:
        old = self._items.pop(digest, None)
        if old is not None:
            self._bytes -= len(old)


class Stamp(NamedTuple):
    """When a confirming query was sent, and the leased unlink revision then (or None)."""

    time: float
    unlinks: str | None


class RecordCache(Generic[V]):
    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        unlinks: Callable[[], str | None] | None = None,
        record: str = "record",
    ) -> None:
        self.ttl = max(0.0, ttl)
        self.max_entries = max(0, max_entries)
        self.clock = clock
        # The leased unlink revision (gateway/auth/lease.py `AccessLease.unlinks`), if any.
        self._unlinks = unlinks or (lambda: None)
        # (expires, unlink revision at confirmation or None, record)
        self._items: OrderedDict[tuple[str, str], tuple[float, str | None, V]] = OrderedDict()
        # A query sent before the latest delete through this gateway may predate it: its
        # answer is not cached (deletes are rare, one timestamp covers every key).
        self._last_discard = float("-inf")
        self._by_lease = RECORD_LOOKUPS.labels(record=record, source="lease")
        self._by_ttl = RECORD_LOOKUPS.labels(record=record, source="ttl")
        self._by_query = RECORD_LOOKUPS.labels(record=record, source="query")

    def __len__(self) -> int:
        return len(self._items)

    def stamp(self) -> Stamp:
        """Take it just before sending the confirming query; `put` the answer with it."""
        return Stamp(self.clock(), self._unlinks())

    def get(self, repo: str, digest: str) -> V | None:
        """The record while trusted (see the module docstring), else None: the caller asks
        the cluster (and the lookup counts as a query)."""
        key = (repo, digest)
        item = self._items.get(key)
        if item is not None:
            expires, confirmed_at, record = item
            leased = self._unlinks()
            if leased is not None:
                trusted, source = confirmed_at == leased, self._by_lease
            else:
                trusted, source = self.clock() < expires, self._by_ttl
            if trusted:
                self._items.move_to_end(key)
                source.inc()
                return record
            # Not trusted now, nor later: a revision that moved never comes back, time only
            # runs on (and an entry confirmed without a lease is not trusted under one).
            del self._items[key]
        self._by_query.inc()
        return None

    def put(self, repo: str, digest: str, record: V, stamp: Stamp) -> None:
        """Remember `record`, confirmed by a query sent at `stamp` (from `stamp()`)."""
        if self.max_entries <= 0 or stamp.time <= self._last_discard:
            return
        expires = stamp.time + self.ttl
        if stamp.unlinks is None and expires <= self.clock():
            return
        key = (repo, digest)
        self._items[key] = (expires, stamp.unlinks, record)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def discard(self, repo: str, digest: str) -> None:
        """Forget (repo, digest) now, and any answer to a query sent before now."""
        self._last_discard = self.clock()
        self._items.pop((repo, digest), None)
