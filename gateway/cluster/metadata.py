"""Metadata commands and queries: JSON to the leader, retried across nodes.

A call goes to the leader when it is known (a linearizable read or a commit is cheapest
there), else to the other members in turn. UNAVAILABLE, DEADLINE_EXCEEDED and connection
errors move on to the next node after a doubling backoff: at least
`gateway.metadata_attempts` attempts, and more until `gateway.metadata_retry_seconds` have
passed (long enough to outlast a Raft election), never past `gateway.rpc_timeout_seconds`
in total; that is safe because every command is idempotent (protos/README.md). Any other
failure is the `RegistryError` the node sent (`from_grpc_details`); exhausted retries are
`Unavailable`.

A removal is idempotent in effect but not in answer: when an attempt's outcome is unknown
(the node went away or timed out after the command was sent, as when the leader is
SIGKILLed between its commit and its reply) and a later attempt answers "unknown"
(404), the earlier attempt removed it, or another client did meanwhile: either way it is
gone, and the removal succeeded (`_REMOVALS`).

Commands to a node that already has calls in flight are packed into one
`Metadata.Commands` (gateway/cluster/packing.py). Each command still answers, fails and is
retried on its own: a pack that fails as a whole (UNAVAILABLE, a timeout) fails every
command in it with that error, so each takes the retry path above, outcome unknown
included (some of the pack may have been committed: safe, commands are idempotent, and a
removal is settled by `_REMOVALS` as after a single call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import grpc.aio

from cargohold.config import Config
from cargohold.errors import (
    BlobUnknown,
    ManifestUnknown,
    RegistryError,
    Unavailable,
    from_grpc_details,
)
from cargohold.grpc_channels import RETRYABLE, ChannelPool
from cargohold.log import log_event
from cargohold.request_ids import call_metadata
from gateway.cluster.membership import MembershipView
from gateway.cluster.packing import CallPacker, MetadataCommands
from protos import registry_pb2

logger = logging.getLogger("cargohold.gateway.cluster")

# The longest pause between two attempts.
_MAX_BACKOFF_SECONDS = 1.0
# Commands whose retry after an unknown outcome may find their target already gone.
_REMOVALS = frozenset({"blob_unlink", "manifest_delete", "tag_delete"})
_GONE = (BlobUnknown, ManifestUnknown)


class MetadataClient:
    """`Metadata.Command` / `Metadata.Query` with retries; see the module docstring."""

    def __init__(self, cfg: Config, pool: ChannelPool, view: MembershipView) -> None:
        self._cfg = cfg
        self._pool = pool
        self._view = view
        # Commands to a node with calls in flight ride one Metadata.Commands (packing.py).
        self._commands = CallPacker(
            MetadataCommands(), cfg.gateway, item_max_bytes=cfg.gateway.pack_max_bytes
        )

    async def command(self, op: str, args: dict[str, Any]) -> Any:
        """A replicated Metadata.Command; retried across nodes (commands are idempotent)."""
        return await self._call(True, op, args, linearizable=False)

    async def query(self, op: str, args: dict[str, Any], linearizable: bool = True) -> Any:
        """A Metadata.Query; linearizable ones wait for a Raft barrier on the node."""
        return await self._call(False, op, args, linearizable=linearizable)

    def _targets(self) -> list[str]:
        return self._view.probe_addresses() or list(self._cfg.gateway.nodes)

    async def _call(
        self, is_command: bool, op: str, args: dict[str, Any], linearizable: bool
    ) -> Any:
        gw = self._cfg.gateway
        request = registry_pb2.MetadataRequest(
            op=op, args=json.dumps(args, separators=(",", ":")).encode(), linearizable=linearizable
        )
        size = len(request.args) + len(op)
        started = time.monotonic()
        deadline = started + gw.rpc_timeout_seconds
        retry_until = started + gw.metadata_retry_seconds
        backoff = gw.retry_backoff_seconds
        last = "no node"
        outcome_unknown = False
        attempt = -1
        while True:
            attempt += 1
            if attempt >= gw.metadata_attempts and time.monotonic() >= retry_until:
                break
            targets = self._targets()
            address = targets[attempt % len(targets)]
            node = self._pool.node(address)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                if is_command:
                    reply = await self._commands.call(
                        node, request, size, remaining, call_metadata()
                    )
                else:
                    reply = await node.metadata.Query(
                        request, timeout=remaining, metadata=call_metadata()
                    )
            except grpc.aio.AioRpcError as exc:
                err = from_grpc_details(exc.details(), exc.trailing_metadata())
                if exc.code() in RETRYABLE or isinstance(err, Unavailable):
                    outcome_unknown = outcome_unknown or is_command
                    last = f"{address}: {exc.code().name} {exc.details()}"
                    if err is None:  # the node itself is unreachable
                        self._view.failures.record_failure(address)
                    else:  # it answers, but Raft could not (no leader, timeout)
                        self._view.suspect(address)
                    log_event(
                        logger,
                        "cluster.metadata_retry",
                        logging.DEBUG,
                        op=op,
                        node=address,
                        code=exc.code().name,
                    )
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                    backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
                    continue
                if outcome_unknown and op in _REMOVALS and isinstance(err, _GONE):
                    log_event(logger, "cluster.removal_already_done", logging.INFO, op=op)
                    return None
                raise _error(exc, err) from None
            return json.loads(reply.result) if reply.result else None
        raise Unavailable(detail={"op": op, "last": last})


def _error(exc: grpc.aio.AioRpcError, decoded: RegistryError | None) -> RegistryError:
    if decoded is not None:
        return decoded
    return RegistryError(
        f"storage node error: {exc.code().name}", detail={"details": exc.details()}
    )
