"""Access leases: the Raft leader's side of "revocation at once" without a round trip per
request (docs/security.md "Revocation at once"; the gateway's side is gateway/auth/lease.py).

A gateway opens `Metadata.WatchAccess` to the leader and pings it every few tens of
milliseconds. The leader answers a ping only once its leadership is confirmed *after the
ping arrived* (`RaftMember.confirm_leadership`: a majority accepted a message it sent
later, and it applied everything committed before), with its access revision and
`node.access_lease_seconds`; the gateway trusts that revision, with no round trip, until
that long after it *sent* the ping. Each message carries two revisions: the access
revision (users, grants, robots...: the gateway's directory cache) and the unlink revision
(blob links and manifests removed: the gateway's caches of confirmed links and manifests,
gateway/manifest_cache.py). Two things keep a trusted revision from hiding an acknowledged
access change or unlink:

- **This leader's changes.** Every access change and unlink is acknowledged only after an
  `access_fence` query answered by the leader (cargohold/metadata_api.py runs it after each
  such command, `FENCED_OPS`): a barrier (the change is applied here), then `fence` pushes
  the current revisions to every watcher and waits until each has acknowledged them (its
  next ping says it `seen` them) or its lease has run out (the leader's bound: the time the
  ping was received plus lease plus `node.access_lease_guard_seconds`). A watcher whose
  stream ended is waited out the same way.
- **Another leader's changes.** A leader answers a ping only with a majority's
  confirmation after the ping arrived, so any later-term leader was elected after every
  ping it answered was sent (node/metadata/pysyncobj_seam.py, leadership stamps). A
  leader's `fence` waits until lease plus guard after it took office (`leader_since`,
  noted on the tick after it did, so never early), so by then every lease its predecessors
  granted has run out on the gateways.

Followers refuse the stream (UNAVAILABLE); a leader that loses office, or cannot confirm
it within a lease, ends it. The gateway then falls back to per-window leader reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cargohold import metadata_api as api
from cargohold.errors import Unavailable
from cargohold.log import log_event
from protos import registry_pb2

logger = logging.getLogger("cargohold.node.metadata")

# How often `fence` looks at its watchers again while waiting.
_FENCE_POLL_SECONDS = 0.002
# A ping not answered within this many leases ends the stream (a leader that cannot
# confirm its office that long has most likely lost it).
_CONFIRM_LEASES = 4


def at_least(seen: str, revision: str) -> bool:
    """`seen` is `revision` or a later one of the same node process (revisions are
    "<epoch>.<count>", node/metadata/state.py; another epoch is never "at least")."""
    if seen == revision:
        return True
    epoch, _, count = seen.rpartition(".")
    want_epoch, _, want_count = revision.rpartition(".")
    return (
        bool(epoch)
        and epoch == want_epoch
        and count.isdigit()
        and want_count.isdigit()
        and (int(count) >= int(want_count))
    )


class Leader(Protocol):
    """What the leases need of the Raft member (node/metadata/raft.py)."""

    leader_since: float | None

    def is_leader(self) -> bool: ...

    def leader_address(self) -> str | None: ...

    @property
    def raftCurrentTerm(self) -> int: ...

    async def confirm_leadership(self, within: float) -> None: ...

    def local_query(self, op: str, args: dict[str, Any]) -> Any: ...


@dataclass
class _Watcher:
    """One gateway's stream: the revisions it last said it saw, and until when (leader
    clock, guard included) it may be trusting one of ours."""

    seen: str = ""
    seen_unlinks: str = ""
    trusted_until: float = float("-inf")
    open: bool = True


class AccessLeases:
    def __init__(self, raft: Leader, lease_seconds: float, guard_seconds: float) -> None:
        self._raft = raft
        self.lease_seconds = lease_seconds
        self.guard_seconds = guard_seconds
        self._watchers: dict[int, _Watcher] = {}
        self._ids = itertools.count(1)
        self._pushes: dict[int, Callable[[registry_pb2.AccessLease], None]] = {}

    def revision(self) -> str:
        return api.AccessRevision.decode_result(self._raft.local_query("access_revision", {}))

    def unlinks(self) -> str:
        return api.UnlinkRevision.decode_result(self._raft.local_query("unlink_revision", {}))

    def _message(self, seq: int) -> registry_pb2.AccessLease:
        return registry_pb2.AccessLease(
            seq=seq,
            revision=self.revision(),
            unlinks=self.unlinks(),
            lease_seconds=self.lease_seconds,
            leader=self._raft.leader_address() or "",
            term=int(self._raft.raftCurrentTerm),
        )

    # -- the stream (one per gateway) -------------------------------------------------------
    async def watch(self, pings: AsyncIterator[registry_pb2.AccessPing]) -> AsyncIterator[Any]:
        """Answer each ping with a confirmed lease, push revisions `fence` asks for; see the
        module docstring. Raises Unavailable when this node is not (or stops being) the
        leader."""
        if not self._raft.is_leader():
            raise Unavailable("raft: access leases are granted by the leader; retry there")
        wid = next(self._ids)
        watcher = self._watchers[wid] = _Watcher()
        out: asyncio.Queue[registry_pb2.AccessLease | BaseException] = asyncio.Queue()
        self._pushes[wid] = out.put_nowait
        reader = asyncio.ensure_future(self._read_pings(pings, watcher, out))
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            watcher.open = False
            self._pushes.pop(wid, None)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_pings(
        self,
        pings: AsyncIterator[registry_pb2.AccessPing],
        watcher: _Watcher,
        out: asyncio.Queue[registry_pb2.AccessLease | BaseException],
    ) -> None:
        grants: set[asyncio.Task[None]] = set()
        try:
            async for ping in pings:
                # An acknowledgement counts at once, before the grant.
                watcher.seen, watcher.seen_unlinks = ping.seen, ping.seen_unlinks
                task = asyncio.ensure_future(self._grant(ping.seq, watcher, out))
                grants.add(task)
                task.add_done_callback(grants.discard)
            out.put_nowait(Unavailable("access watch: the gateway closed its side"))
        except Exception as exc:  # the stream broke
            out.put_nowait(exc)
        finally:
            for task in grants:
                task.cancel()

    async def _grant(
        self,
        seq: int,
        watcher: _Watcher,
        out: asyncio.Queue[registry_pb2.AccessLease | BaseException],
    ) -> None:
        received = time.monotonic()
        try:
            await self._raft.confirm_leadership(_CONFIRM_LEASES * self.lease_seconds)
        except Unavailable as exc:
            log_event(logger, "access_lease.not_confirmed", logging.DEBUG, error=exc.message)
            out.put_nowait(exc)  # ends the stream: the gateway falls back and reconnects
            return
        if not watcher.open:
            return
        # The gateway sent the ping before we received it: its lease ends before ours.
        watcher.trusted_until = max(
            watcher.trusted_until, received + self.lease_seconds + self.guard_seconds
        )
        out.put_nowait(self._message(seq))

    # -- the fence (before an access change is acknowledged) ---------------------------------
    async def fence(self, within: float) -> None:
        """On the leader, after a barrier: wait until lease plus guard after this node took
        office, then push the current revisions to every watcher and wait until each has
        acknowledged them or can no longer be trusting older ones."""
        since = self._raft.leader_since
        if not self._raft.is_leader() or since is None:
            raise Unavailable("raft: access fence runs on the leader; retry there")
        deadline = time.monotonic() + within
        office = since + self.lease_seconds + self.guard_seconds - time.monotonic()
        if office > 0:
            await asyncio.sleep(office)
        revision, unlinks = self.revision(), self.unlinks()

        def told(watcher: _Watcher) -> bool:
            return at_least(watcher.seen, revision) and at_least(watcher.seen_unlinks, unlinks)

        for wid, push in list(self._pushes.items()):
            watcher = self._watchers.get(wid)
            if watcher is not None and not told(watcher):
                push(
                    registry_pb2.AccessLease(
                        seq=0,
                        revision=revision,
                        unlinks=unlinks,
                        leader=self._raft.leader_address() or "",
                        term=int(self._raft.raftCurrentTerm),
                    )
                )
        while True:
            now = time.monotonic()
            waiting = False
            for wid, watcher in list(self._watchers.items()):
                if watcher.trusted_until <= now:
                    if not watcher.open:
                        del self._watchers[wid]  # closed and run out: forget it
                    continue
                if not watcher.open or not told(watcher):
                    waiting = True
            if not waiting:
                return
            if now > deadline:
                raise Unavailable("raft: access fence: watchers did not acknowledge in time")
            if not self._raft.is_leader():
                raise Unavailable("raft: leadership lost during an access fence; retry")
            await asyncio.sleep(_FENCE_POLL_SECONDS)

    def watchers(self) -> int:
        """Open watch streams (Admin.Status extra)."""
        return sum(1 for w in self._watchers.values() if w.open)
