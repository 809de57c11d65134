"""The gateway's view of the namespace quotas, for refusing an upload early
(docs/operations.md "Quotas").

The metadata state refuses, atomically, every link that would take a namespace past its
quota (node/metadata/quotas.py): that check is exact. This view lets a gateway refuse
earlier, before it reads and stores a body that cannot fit: it caches the `quota_list`
query for `lifecycle.quota_refresh_seconds` (so a cluster without quotas costs one query
per interval, not one per request) and keeps its last answer when the cluster cannot
answer. Before it refuses, or lets a body of unknown length start with little room left,
it reads the quotas again (`room(..., fresh=True)`): a raised limit or a delete takes
effect at once, and an early refusal is never based on an old figure. An old view may
only let a body through that the state then refuses at its `upload_append` or commit.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cargohold.errors import QuotaExceeded, RegistryError
from cargohold.log import log_event
from cargohold.metadata_api import Metadata, QuotaInfo
from cargohold.quotas import exceeded, in_namespace

logger = logging.getLogger("cargohold.gateway.quotas")


class Room:
    """The tightest quota over a repository: bytes left in `namespace`."""

    __slots__ = ("limit", "namespace", "used")

    def __init__(self, info: QuotaInfo) -> None:
        self.namespace, self.used, self.limit = info.namespace, info.used, info.limit

    @property
    def left(self) -> int:
        return self.limit - self.used

    def refuse(self, adding: int) -> QuotaExceeded:
        return exceeded(self.namespace, self.used, self.limit, adding)


class QuotaView:
    def __init__(self, meta: Metadata, refresh_seconds: float) -> None:
        self._meta = meta
        self._refresh_seconds = refresh_seconds
        self._quotas: list[QuotaInfo] = []
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return (
            self._loaded_at is not None
            and time.monotonic() - self._loaded_at < self._refresh_seconds
        )

    async def _refresh(self, force: bool = False) -> None:
        if not force and self._fresh():
            return
        async with self._lock:
            if not force and self._fresh():
                return
            try:
                self._quotas = await self._meta.quota_list()
            except RegistryError as exc:
                # The commit checks anyway: keep the last answer rather than fail a push.
                log_event(logger, "quota.refresh_failed", logging.DEBUG, error=exc.message)
            self._loaded_at = time.monotonic()

    async def room(self, repo: str, fresh: bool = False) -> Room | None:
        """The quota with the fewest bytes left among those holding `repo` (None: none);
        `fresh` reads the quotas again first."""
        await self._refresh(force=fresh)
        tightest: Room | None = None
        for info in self._quotas:
            if in_namespace(repo, info.namespace):
                room = Room(info)
                if tightest is None or room.left < tightest.left:
                    tightest = room
        return tightest
