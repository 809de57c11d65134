"""What earlier scans found in a layer, by layer digest, so a layer shared by many images
(a base image under every application image) is read once per gateway, not once per image.

A layer's digest names its bytes, so its `LayerFiles` (the package database files it holds
and its whiteouts) never change: entries are only ever evicted, least recently used first,
to keep the kept files within `scanner.layer_cache_bytes` (0 = no cache).
"""

from __future__ import annotations

from collections import OrderedDict

from cargohold.sbom.layers import LayerFiles


def _cost(layer: LayerFiles) -> int:
    paths = layer.whiteouts | layer.opaque | layer.replaced
    return 256 + sum(len(p) + len(d) + 64 for p, d in layer.files.items()) + 64 * len(paths)


class LayerCache:
    """An LRU of `LayerFiles` by layer digest, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, tuple[LayerFiles, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> LayerFiles | None:
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry[0]

    def put(self, digest: str, layer: LayerFiles) -> None:
        cost = _cost(layer)
        if cost > self.max_bytes or digest in self._entries:
            return
        self._entries[digest] = (layer, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old
