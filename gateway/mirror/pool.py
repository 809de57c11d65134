"""The gateway's budget of memory for whole downloads (`mirror.memory_pool_bytes`).

A download whose size the upstream announced, no larger than `mirror.memory_blob_bytes`,
reserves that many bytes here before its first byte arrives; if the reservation fits, the
download is kept whole in memory (its pieces, as the upstream sent them) instead of being
appended to a spool file, and every reader (the clients, the cluster write) is sent those
pieces. Writing a spool file fills fresh page-cache pages, which on this kind of host costs
more CPU than the download's own sha256 (bench/README.md, the mirror section). A download
that does not fit, or whose size is unknown, is spooled as before: the pool bounds memory,
it never refuses a pull. A reservation is returned when the download's last reader is gone.
"""

from __future__ import annotations

from cargohold.config import MirrorConfig
from gateway.mirror.metrics import MEMORY_HELD


class MemoryPool:
    """Bytes reserved by in-memory downloads, never more than `limit` in all."""

    def __init__(self, limit: int, blob_limit: int) -> None:
        self.limit = limit
        self.blob_limit = blob_limit
        self.held = 0

    @classmethod
    def from_config(cls, cfg: MirrorConfig) -> MemoryPool:
        return cls(cfg.memory_pool_bytes, cfg.memory_blob_bytes)

    def reserve(self, size: int | None) -> bool:
        """Reserve `size` bytes for one download; False (nothing reserved) when its size is
        unknown, above the per-blob limit, or beyond what is left."""
        if size is None or size > self.blob_limit or self.held + size > self.limit:
            return False
        self.held += size
        MEMORY_HELD.set(self.held)
        return True

    def free(self, size: int) -> None:
        self.held -= size
        MEMORY_HELD.set(self.held)
