"""The gateway's lease on the Raft leader's access revision (docs/security.md "Revocation at
once"; the leader's side is node/metadata/access_leases.py).

`AccessLease` keeps one `Metadata.WatchAccess` stream open to the leader (the first node
of the cluster client's probe order that accepts it; followers refuse). Every
`auth.revocation_lease_renew_seconds` it sends a ping; the leader answers a ping only once
its leadership is confirmed after the ping arrived, with its revision and a lease length,
and `revision()` then returns that revision until that long after the ping was *sent*
(this gateway's clock: the ping left before the leader confirmed anything). A revision the
leader pushes (an access change about to be acknowledged) replaces the trusted one at once
and is acknowledged by the next ping, sent immediately; the leader acknowledges the change
only after that (or after this lease ran out).

`revision()` is None, and the caller falls back to a leader read per window
(gateway/auth/revision.py), whenever the lease is not fresh: no stream yet, the stream
ended (the leader stepped down or went away: the session ends and the lease with it),
or no answer came within the lease (a slow or partitioned leader).

`unlinks()` is the leader's unlink revision under the same lease and the same rules (it
moves when a blob link or a manifest is removed, and the leader acknowledges a removal only
once every leaseholder has it): the caches of confirmed links and manifests
(gateway/manifest_cache.py `RecordCache`) trust an entry while it stays the revision the
entry was confirmed at. None also when the leader sends none (a node from before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from cargohold.log import log_event
from cargohold.periodic import cancel_and_wait, raise_if_cancelling
from protos import registry_pb2

logger = logging.getLogger("cargohold.gateway")

# Pings kept waiting for an answer (their send times) per stream.
_UNANSWERED_MAX = 64


class AccessLease:
    def __init__(
        self,
        targets: Callable[[], list[str]],
        open_stream: Callable[[str], Any],
        renew_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = targets
        self._open = open_stream
        self._renew = renew_seconds
        self._clock = clock
        self._revision = ""
        self._unlinks = ""
        self._expires = float("-inf")
        self._task: asyncio.Task[None] | None = None
        # Streams opened and ended so far (tests and the log look at them).
        self.sessions = 0
        self.leader = ""

    def revision(self) -> str | None:
        """The leader's access revision while the lease is fresh, else None."""
        if self._clock() < self._expires:
            return self._revision
        return None

    def unlinks(self) -> str | None:
        """The leader's unlink revision while the lease is fresh, else None."""
        if self._unlinks and self._clock() < self._expires:
            return self._unlinks
        return None

    # -- lifetime ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._expires = float("-inf")
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            for address in self._targets():
                try:
                    await self.session(self._open(address))
                except (grpc.RpcError, OSError, ValueError) as exc:
                    raise_if_cancelling()  # a stop() that landed in the call
                    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                    log_event(
                        logger, "auth.lease_stream_ended", logging.DEBUG, node=address, error=code
                    )
            await asyncio.sleep(self._renew)

    # -- one stream ---------------------------------------------------------------------------
    async def session(self, call: Any) -> None:
        """Ping and read on `call` until it ends; the lease ends with it."""
        self.sessions += 1
        sent: dict[int, float] = {}
        answer = asyncio.Event()  # a pushed revision: acknowledge it now
        writer = asyncio.ensure_future(self._ping(call, sent, answer))
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                self._receive(message, sent, answer)
        finally:
            self._expires = float("-inf")
            writer.cancel()
            call.cancel()
            # The writer's end (its cancellation, a broken stream) is collected, not raised;
            # a cancellation of *this* task while waiting here still propagates (a
            # suppress(CancelledError) would swallow it, and `stop` would wait forever).
            await asyncio.gather(writer, return_exceptions=True)

    def _receive(
        self, message: registry_pb2.AccessLease, sent: dict[int, float], answer: asyncio.Event
    ) -> None:
        if message.revision != self._revision or message.unlinks != self._unlinks:
            self._revision, self._unlinks = message.revision, message.unlinks
            answer.set()  # the leader waits for our acknowledgement before its own
        self.leader = message.leader
        if message.seq:
            started = sent.pop(message.seq, None)
            for older in [s for s in sent if s < message.seq]:
                del sent[older]  # answered out of order or never: no longer useful
            if started is not None:
                self._expires = max(self._expires, started + message.lease_seconds)

    async def _ping(self, call: Any, sent: dict[int, float], answer: asyncio.Event) -> None:
        seq = 0
        while True:
            seq += 1
            sent[seq] = self._clock()
            if len(sent) > _UNANSWERED_MAX:  # the session ends soon anyway (no answers)
                del sent[min(sent)]
            await call.write(
                registry_pb2.AccessPing(seq=seq, seen=self._revision, seen_unlinks=self._unlinks)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answer.wait(), self._renew)
            answer.clear()
