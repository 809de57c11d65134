"""The gateway's two manifest caches, both local to one gateway and bounded.

`ManifestCache`: an LRU of manifest bodies by digest, sized in bytes. Bodies are
content-addressed, hence immutable: a cached body can never be stale, only no longer
wanted. It never answers *whether* a manifest exists in a repository; it only saves
reading the body's chunks from the nodes.

`RecordCache`: (repo, digest) -> a record the cluster confirmed (the `manifest_get`
record for manifests, the `blob_get` recipe for blobs), each valid for `ttl` seconds
from the moment the query that confirmed it was *sent* (so the bound holds whatever the
query's latency). This one does answer existence, for GET/HEAD by digest only, and only
positively (a 404 is never cached, so a push through any gateway is seen at once); what
it can serve stale is a manifest or blob link deleted through another gateway, for at
most `ttl` seconds after that delete was acknowledged (gateway/manifests.py,
gateway/blobs.py). `ttl` 0 disables it. Time comes from `RecordCache.clock`, a monotonic
clock tests may replace.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

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


class RecordCache(Generic[V]):
    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = max(0.0, ttl)
        self.max_entries = max(0, max_entries)
        self.clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, V]] = OrderedDict()
        # A query sent before the latest delete through this gateway may predate it: its
        # answer is not cached (deletes are rare, one timestamp covers every key).
        self._last_discard = float("-inf")

    def __len__(self) -> int:
        return len(self._items)

    def now(self) -> float:
        """The cache's clock: take it just before sending the confirming query."""
        return self.clock()

    def get(self, repo: str, digest: str) -> V | None:
        """The record if confirmed less than `ttl` seconds ago, else None."""
        key = (repo, digest)
        item = self._items.get(key)
        if item is None:
            return None
        if self.clock() >= item[0]:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, repo: str, digest: str, record: V, sent_at: float) -> None:
        """Remember `record`, confirmed by a query sent at `sent_at` (from `now()`)."""
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        expires = sent_at + self.ttl
        if sent_at <= self._last_discard or expires <= self.clock():
            return
        key = (repo, digest)
        self._items[key] = (expires, record)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def discard(self, repo: str, digest: str) -> None:
        """Forget (repo, digest) now, and any answer to a query sent before now."""
        self._last_discard = self.clock()
        self._items.pop((repo, digest), None)
