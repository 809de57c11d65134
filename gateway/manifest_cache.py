"""A bounded LRU of manifest bodies by digest, sized in bytes, local to one gateway.

Manifest bodies are content-addressed, hence immutable: a cached body can never be
stale, only no longer wanted. The cache never answers *whether* a manifest exists in a
repository: every GET still asks the cluster (a linearizable `manifest_get`/`tag_get`,
one small query), so deletes and pushes through other gateways are seen at once; the
cache only saves reading the body's chunks from the nodes.
"""

from __future__ import annotations

from collections import OrderedDict


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
