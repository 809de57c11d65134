"""A gateway's LRU of what search reads from image config blobs: config digest -> `info`.

At manifest PUT the gateway reads the image's config blob for its platform and labels
(gateway/image_info.py). What it derives depends on the config's bytes only, and a config
is addressed by the sha256 of its bytes, so an entry can never be stale: this cache only
saves the lookup and the chunk read when the same config is pushed again (a manifest
pushed under another tag, an image rebuilt with the same config, a multi-tag push), or
when the config's own upload went through this gateway (parsed as it arrived,
`image_info.note_pushed_config`, keyed by the sha256 of the bytes it parsed). It
never answers whether a repository may use the config: the `manifest_put` command checks
that, atomically, whatever this cache holds. `None` (the blob is not an image config we
can read) is cached like any other answer; a failed read is not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ConfigInfos:
    """At most `max_entries` config digests and their `info` (an LRU)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, max_entries)
        self._items: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, digest: str) -> tuple[bool, dict[str, Any] | None]:
        """(True, info) when `digest` is cached, else (False, None)."""
        if digest not in self._items:
            return False, None
        self._items.move_to_end(digest)
        return True, self._items[digest]

    def put(self, digest: str, info: dict[str, Any] | None) -> None:
        if self.max_entries <= 0:
            return
        self._items[digest] = info
        self._items.move_to_end(digest)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
